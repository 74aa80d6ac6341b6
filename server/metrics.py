"""Prometheus metrics, in a registry per app so that several apps (tests) never collide."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST

# From a 64x64 CPU image (~10 ms) to a 2048x2048 SDXL image on a T4 (minutes).
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("sdxl_requests", "HTTP requests by route, method and status.",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("sdxl_request_duration_seconds", "HTTP request latency by route.",
                                 ["route"], buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("sdxl_queue_depth", "Images waiting for the GPU.", registry=r)
        self.in_flight = Gauge("sdxl_in_flight_images", "Images being generated right now.", registry=r)
        self.images = Counter("sdxl_images_generated", "Images generated, by task.", ["kind"], registry=r)
        self.errors = Counter("sdxl_errors", "Errors answered or dropped work, by kind.", ["kind"], registry=r)
        self.generation = Histogram("sdxl_generation_seconds", "Pipeline call duration, by task.",
                                    ["kind"], buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram("sdxl_queue_wait_seconds", "Time from arrival to the start of its pipeline call.",
                                    buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("sdxl_batch_size", "Images per pipeline call.",
                                    buckets=(1, 2, 3, 4, 6, 8, 12, 16), registry=r)
        self.ready = Gauge("sdxl_ready", "1 once the model is loaded and warmed up.", registry=r)
        self.estimated_wait = Gauge("sdxl_estimated_wait_seconds",
                                    "Estimated seconds until a new one-image request would be answered: the call "
                                    "running, the calls queued ahead and its own, from recent call durations.",
                                    registry=r)
        # For the idle auto-stop watcher: starts at boot so a server nobody calls still counts as idle.
        self.last_request = Gauge("sdxl_last_request_timestamp_seconds",
                                  "Unix time of the last generation request (boot time if none).", registry=r)
        self.last_request.set(time.time())

    def render(self) -> bytes:
        return generate_latest(self.registry)
