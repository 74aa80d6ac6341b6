"""The GPU worker: one bounded queue, one thread that owns the pipelines, micro-batching in between.

Request handlers never touch torch. They submit validated `Job`s and await futures; a single
consumer task takes jobs in arrival order and runs each pipeline call on one dedicated thread, so the
event loop keeps answering (health, 429s, preflights) while the GPU is busy.

Batching: text-to-image jobs that agree on everything except prompt and seed share one pipeline
call. Each gets its own `torch.Generator`, so its latents - and its image - are what it would get alone.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from server.errors import ApiError, unavailable
from server.loader import Kind, Pipelines
from server.metrics import Metrics
from server.settings import Settings

log = logging.getLogger(__name__)

# Rough first-start times, only to fill `estimated_time` while loading; the real time replaces nothing.
_EXPECTED_LOAD_SECONDS = {"tiny": 5.0, "random-sdxl": 60.0}
_EXPECTED_HUB_LOAD_SECONDS = 120.0
_EXPECTED_COMPILE_SECONDS = 180.0
# Retry-After on work refused during a drain (see draining_error).
DRAIN_RETRY_AFTER_SECONDS = 5.0


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def batch_waves(keys: list[Hashable], max_batch: int) -> int:
    """Pipeline calls needed for queued jobs with these batch keys, grouped as the consumer takes them: the
    first job's key, with every later job of the same key, up to max_batch."""
    waves = 0
    while keys:
        first, taken, rest = keys[0], 0, []
        for key in keys:
            if key == first and taken < max_batch:
                taken += 1
            else:
                rest.append(key)
        keys, waves = rest, waves + 1
    return waves


def estimate_wait(waves_ahead: int, own_waves: int, seconds_per_batch: float, running_for: float | None) -> float:
    """Seconds until a new request is answered: what is left of the running call (if any), the calls queued
    ahead, and its own."""
    left = 0.0 if running_for is None else max(0.0, seconds_per_batch - running_for)
    return left + (waves_ahead + own_waves) * seconds_per_batch


class _Aborted(Exception):
    """Every job in the running batch has timed out: stop spending GPU time on it."""


@dataclass(eq=False)
class Job:
    kind: Kind
    prompt: str
    seed: int
    width: int
    height: int
    steps: int
    guidance: float
    negative_prompt: str | None = None
    scheduler: str | None = None
    strength: float | None = None
    image: Image.Image | None = None
    mask: Image.Image | None = None
    # Async probe of the client's connection; a job whose client left is dropped before it runs.
    is_disconnected: Callable[[], Awaitable[bool]] | None = None
    future: asyncio.Future[Result] | None = field(default=None, repr=False)
    cancelled: bool = False
    enqueued_at: float = 0.0  # perf_counter()

    def batch_key(self) -> tuple[Any, ...]:
        if self.kind != "text2img":
            return ("solo", id(self))
        # negative_prompt None vs "" differ: SDXL zeroes the negative embedding only for None.
        return (self.width, self.height, self.steps, self.guidance, self.scheduler,
                self.negative_prompt is None)


@dataclass
class Result:
    image: Image.Image
    seed: int
    compute_seconds: float
    queue_seconds: float  # from arrival to the start of its pipeline call
    batch_size: int


class GenerationWorker:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.pipelines: Pipelines | None = None
        self.load_error: str | None = None
        self.draining = False
        self.loading_since = time.monotonic()
        self._queue: deque[Job] = deque()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sdxl-gpu")
        self._wakeup: asyncio.Event | None = None
        self._ready: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        # Moving average of pipeline-call seconds, for the wait estimate and Retry-After; a guess until
        # the warm-up or the first call measures it.
        self._seconds_per_batch = 1.0
        self._measured = False
        self._running_since = 0.0
        self.in_flight = 0
        self._running: list[Job] = []
        self._admitted = 0  # requests between admission and answer: what a drain waits for
        self._expected = 1  # jobs likely to be queued soon: see _linger
        # CUDA only: highest memory allocated during a pipeline call, by batch size (shown in /info).
        self.peak_memory: dict[int, int] = {}

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._ready = asyncio.Event()
        self._task = asyncio.create_task(self._consume(), name="sdxl-worker")

    async def load(self, loader: Callable[[], Pipelines]) -> None:
        """Load on the GPU thread (the only thread that ever touches the pipelines), then warm up."""
        loop = asyncio.get_running_loop()
        self.loading_since = time.monotonic()
        try:
            pipelines = await loop.run_in_executor(self._executor, loader)
            if self.settings.warmup:
                await loop.run_in_executor(self._executor, self._warm_up, pipelines)
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("model failed to load")
            raise
        self.pipelines = pipelines
        assert self._ready is not None
        self._ready.set()
        log.info("ready: %s on %s (%.1f s)", self.settings.model, pipelines.device,
                 time.monotonic() - self.loading_since)

    @property
    def ready(self) -> bool:
        return self._ready is not None and self._ready.is_set()

    def begin_drain(self) -> None:
        """New work is refused with 503 from now on; admitted, queued and running work still finishes.

        Only sets a flag, so that a signal handler may call it (sdxl_ready reads it when scraped).
        """
        self.draining = True

    @property
    def idle(self) -> bool:
        """No admitted request is waiting for an answer: a drain may end."""
        return self._admitted == 0 and not self._queue and not self._running

    def abandon(self) -> None:
        """The drain's grace is over: answer every queued and running job 503 now, stop the running call."""
        for job in [*self._queue, *self._running]:
            job.cancelled = True
            self._fail(job, self.draining_error())
        self._queue.clear()
        self._update_gauges()

    async def stop(self) -> None:
        self.begin_drain()
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        while self._queue:
            self._fail(self._queue.popleft(), self.draining_error())
        self._executor.shutdown(wait=False, cancel_futures=True)

    # --- admission -----------------------------------------------------------------------------

    def draining_error(self) -> ApiError:
        # A short hint, not the grace: behind a load balancer another replica answers the retry, and a
        # restarted process (systemd, Kubernetes) is back long before a 120 s grace would have said.
        return unavailable("The server is shutting down; retry shortly", "draining", DRAIN_RETRY_AFTER_SECONDS)

    def loading_error(self) -> ApiError:
        if self.load_error:
            return unavailable(f"Model {self.settings.model} failed to load: {self.load_error}",
                               "load_failed", 60)
        expected = _EXPECTED_LOAD_SECONDS.get(self.settings.model, _EXPECTED_HUB_LOAD_SECONDS)
        if self.settings.compile:
            expected += _EXPECTED_COMPILE_SECONDS
        remaining = max(1.0, expected - (time.monotonic() - self.loading_since))
        return unavailable(f"Model {self.settings.model} is currently loading", "loading", remaining,
                           estimated_time=round(remaining, 1))

    def deadline(self) -> float:
        """The default deadline (time.monotonic()) for work arriving now."""
        return time.monotonic() + self.settings.request_timeout

    async def require_ready(self, wait: bool = False, deadline: float | None = None) -> Pipelines:
        """The loaded pipelines, or a 503; with `wait` (HF's wait_for_model) block until loaded, at most
        until `deadline`."""
        if self.draining:
            raise self.draining_error()
        if not self.ready and wait and not self.load_error:
            assert self._ready is not None
            try:
                await asyncio.wait_for(self._ready.wait(), _left(self.deadline() if deadline is None else deadline))
            except TimeoutError:
                raise self.loading_error() from None
        if not self.ready or self.pipelines is None:
            raise self.loading_error()
        return self.pipelines

    @asynccontextmanager
    async def admit(self, wait: bool = False, deadline: float | None = None) -> AsyncIterator[Pipelines]:
        """Hold one request's place from admission to its answer. Refused (503) while draining or loading;
        once admitted, a drain waits for it. A model wait counts against the request's `deadline`."""
        pipelines = await self.require_ready(wait, deadline)
        self._admitted += 1
        try:
            yield pipelines
        finally:
            self._admitted -= 1

    def estimated_wait(self, images: int = 1) -> float:
        """Seconds until a new request for `images` compatible images would be answered (see estimate_wait)."""
        max_batch = self.settings.max_batch
        ahead = batch_waves([job.batch_key() for job in self._queue if not job.cancelled], max_batch)
        running_for = time.perf_counter() - self._running_since if self._running else None
        return estimate_wait(ahead, math.ceil(images / max_batch), self._seconds_per_batch, running_for)

    def _refuse_if_over(self, images: int) -> None:
        """429 at once when the queue is full, or when the wait budget would be exceeded. Never applies to
        work already queued. With nothing running or queued a request is always admitted: the budget is
        about waiting for others."""
        settings = self.settings
        if len(self._queue) + images > settings.max_queue:
            retry = estimate_wait(batch_waves([job.batch_key() for job in self._queue], settings.max_batch), 0,
                                  self._seconds_per_batch, None)
            raise ApiError(429, f"Queue is full ({settings.max_queue} images waiting); retry later",
                           kind="queue_full", headers={"Retry-After": str(max(1, math.ceil(retry)))})
        budget = settings.max_wait_seconds
        if budget is None or not (self._queue or self._running):
            return
        wait = self.estimated_wait(images)
        if wait > budget:
            retry = max(1, math.ceil(wait - budget))  # by then the backlog ahead has shrunk by that much
            raise ApiError(429, f"The server is busy: this request would be answered in about {wait:.0f} s, "
                           f"over its {budget:g} s wait budget; retry in {retry} s", kind="wait_budget",
                           headers={"Retry-After": str(retry)})

    async def generate(self, jobs: list[Job], deadline: float | None = None) -> list[Result]:
        """Queue `jobs` together and wait for all of them until `deadline` (time.monotonic(); default:
        --request-timeout from now), then 504; raises ApiError on refusal or failure."""
        deadline = self.deadline() if deadline is None else deadline
        self._refuse_if_over(len(jobs))
        self.metrics.last_request.set(time.time())
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        for job in jobs:
            job.future = loop.create_future()
            job.enqueued_at = now
            self._queue.append(job)
        self._update_gauges()
        assert self._wakeup is not None
        self._wakeup.set()
        futures = [job.future for job in jobs if job.future is not None]
        try:
            return list(await asyncio.wait_for(asyncio.gather(*futures), _left(deadline)))
        except TimeoutError:
            raise ApiError(504, f"Generation did not finish within {self.settings.request_timeout:g} s of the "
                           "request's arrival", kind="timeout") from None
        finally:
            # On timeout or a sibling's failure, the rest of this request's work is no longer wanted.
            for job in jobs:
                job.cancelled = True
            self._purge_cancelled()

    # --- the consumer --------------------------------------------------------------------------

    async def _consume(self) -> None:
        assert self._wakeup is not None
        while True:
            await self._wakeup.wait()
            if not self._queue:
                self._wakeup.clear()
                continue
            await self._linger()
            batch = await self._take_batch()
            if batch:
                await self._run(batch)
                # Its clients now have their answers; those that send another request will join the
                # ones already waiting.
                self._expected = min(self.settings.max_batch, len(self._queue) + len(batch))

    async def _linger(self) -> None:
        """Under concurrent load, give the clients of the last batch a moment to send their next request.

        When a batch finishes, its clients all get their answers at once and come back a few ms later.
        Starting right away would run whoever is queued without them, and the two groups would keep
        alternating at half the batch size. A lone sequential client is already here when the worker
        wakes (expected 1, queued 1), so it never waits.
        """
        if len(self._queue) >= self._expected or not self.settings.batch_wait_ms:
            return
        assert self._wakeup is not None
        deadline = time.monotonic() + self.settings.batch_wait_ms / 1000
        while len(self._queue) < self._expected and (remaining := deadline - time.monotonic()) > 0:
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                break
        self._wakeup.set()  # the queue is not empty: keep the consumer going

    async def _take_batch(self) -> list[Job]:
        batch: list[Job] = []
        key = None
        for job in list(self._queue):
            if len(batch) >= self.settings.max_batch:
                break
            if key is not None and job.batch_key() != key:
                continue
            try:
                self._queue.remove(job)
            except ValueError:  # purged (timed out) while we awaited a disconnect probe
                continue
            if not await self._still_wanted(job):
                continue
            key = job.batch_key()
            batch.append(job)
        self._update_gauges()
        return batch

    async def _still_wanted(self, job: Job) -> bool:
        if job.cancelled or (job.future is not None and job.future.done()):
            return False
        if job.is_disconnected is not None and await job.is_disconnected():
            log.info("dropping a %s job: the client disconnected before it started", job.kind)
            # Counted in errors_total when the (unsendable) answer is rendered.
            self._fail(job, ApiError(499, "client disconnected", kind="client_disconnected"))
            return False
        return True

    async def _run(self, batch: list[Job]) -> None:
        loop = asyncio.get_running_loop()
        self.in_flight = len(batch)
        self._running = batch
        self._running_since = time.perf_counter()
        self.metrics.in_flight.set(len(batch))
        started = time.perf_counter()
        for job in batch:
            self.metrics.queue_wait.observe(started - job.enqueued_at)
        try:
            outputs = await loop.run_in_executor(self._executor, self._call_pipeline, batch)
        except _Aborted:
            log.info("abandoned a batch of %d: all its requests timed out", len(batch))
            return
        except Exception as exc:  # a failure must only cost its own request(s)
            self._recover(exc)
            if len(batch) > 1:
                # Retry alone, so that one bad request (or a batch too big for memory) fails only itself.
                for job in batch:
                    if not job.cancelled:
                        await self._run([job])
                return
            self._fail(batch[0], self._classify(exc))
            return
        finally:
            self.in_flight = 0
            self._running = []
            self.metrics.in_flight.set(0)
        elapsed = time.perf_counter() - started
        self._observe_batch_seconds(elapsed)
        kind = batch[0].kind
        self.metrics.generation.labels(kind=kind).observe(elapsed)
        self.metrics.batch_size.observe(len(batch))
        for job, output in zip(batch, outputs, strict=True):
            if isinstance(output, ApiError):
                self._fail(job, output)
                continue
            self.metrics.images.labels(kind=kind).inc()
            if job.future is not None and not job.future.done():
                job.future.set_result(Result(output, job.seed, elapsed, started - job.enqueued_at, len(batch)))

    def _observe_batch_seconds(self, seconds: float) -> None:
        if self._measured:
            self._seconds_per_batch = 0.8 * self._seconds_per_batch + 0.2 * seconds
        else:
            self._seconds_per_batch, self._measured = seconds, True

    # --- on the GPU thread ---------------------------------------------------------------------

    def _call_pipeline(self, batch: list[Job]) -> list[Image.Image | ApiError]:
        assert self.pipelines is not None
        cuda = self.pipelines.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        outputs = _call(self.pipelines, batch, self._abort_hook(batch))
        if cuda:
            peak = torch.cuda.max_memory_allocated()
            self.peak_memory[len(batch)] = max(peak, self.peak_memory.get(len(batch), 0))
        return outputs

    def _abort_hook(self, batch: list[Job]) -> Callable[..., dict[str, Any]]:
        def on_step_end(pipe: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
            if all(job.cancelled for job in batch):
                raise _Aborted
            return callback_kwargs

        return on_step_end

    def _warm_up(self, pipelines: Pipelines) -> None:
        """One short call per task, and under --compile one per batch size, so that no user waits for
        kernel selection, allocator growth or a compilation (torch recompiles for batch-size ranges that
        depend on the device's kernel choices, so every size is visited)."""
        size = pipelines.default_size
        image = Image.new("RGB", (size, size), (128, 128, 128))
        mask = Image.new("L", (size, size), 255)
        common = {"seed": 0, "width": size, "height": size, "steps": 2, "guidance": self.settings.default_guidance}
        runs = [[Job("text2img", "warm up", **common)],
                [Job("img2img", "warm up", strength=1.0, image=image, **common)],
                [Job("inpaint", "warm up", strength=1.0, image=image, mask=mask, **common)]]
        if self.settings.compile:
            runs += [[Job("text2img", "warm up", **common) for _ in range(n)]
                     for n in range(2, self.settings.max_batch + 1)]
        seconds = []
        for batch in runs:
            started = time.perf_counter()
            outputs = _call(pipelines, batch, None)
            failed = [out for out in outputs if isinstance(out, ApiError)]
            if failed:
                raise RuntimeError(f"warm-up {batch[0].kind} failed: {failed[0].message}")
            seconds.append(time.perf_counter() - started)
            log.info("warm-up %s x%d: %.2f s", batch[0].kind, len(batch), seconds[-1])
        # A first guess for the wait estimate, until real calls measure it: the fastest 2-step call, scaled
        # to the default steps (the first calls also pay one-off costs).
        self._seconds_per_batch = min(seconds) / 2 * self.settings.default_steps

    # --- helpers -------------------------------------------------------------------------------

    def _fail(self, job: Job, error: ApiError) -> None:
        if job.future is not None and not job.future.done():
            job.future.set_exception(error)

    def _purge_cancelled(self) -> None:
        if any(job.cancelled for job in self._queue):
            self._queue = deque(job for job in self._queue if not job.cancelled)
            self._update_gauges()

    def _update_gauges(self) -> None:
        self.metrics.queue_depth.set(len(self._queue))

    def _recover(self, exc: BaseException) -> None:
        log.error("pipeline call failed: %s: %s", type(exc).__name__, exc,
                  exc_info=not isinstance(exc, torch.OutOfMemoryError))
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _classify(self, exc: BaseException) -> ApiError:
        if isinstance(exc, torch.OutOfMemoryError):
            return unavailable("Out of GPU memory for this request; retry, or ask for a smaller image",
                               "oom", 5)
        return ApiError(500, f"Generation failed: {type(exc).__name__}: {str(exc)[:200]}", kind="pipeline")

    @property
    def queue_depth(self) -> int:
        return len(self._queue)


def _call(pipelines: Pipelines, batch: list[Job], hook: Callable[..., dict[str, Any]] | None
          ) -> list[Image.Image | ApiError]:
    """One pipeline call for a batch of compatible jobs; per-image NaN checks."""
    first = batch[0]
    pipe = pipelines.for_kind(first.kind)
    pipelines.use_scheduler(pipe, first.scheduler)
    kwargs: dict[str, Any] = {
        "prompt": [job.prompt for job in batch],
        "negative_prompt": None if first.negative_prompt is None else [job.negative_prompt for job in batch],
        "num_inference_steps": first.steps,
        "guidance_scale": first.guidance,
        # CPU generators: the same seed gives the same image on any GPU, and in any batch.
        "generator": [torch.Generator("cpu").manual_seed(job.seed) for job in batch],
        "output_type": "np",
    }
    if hook is not None:
        kwargs["callback_on_step_end"] = hook
    if first.kind == "text2img":
        kwargs.update(width=first.width, height=first.height)
    else:
        kwargs.update(image=first.image, strength=first.strength)
    if first.kind == "inpaint":
        kwargs.update(mask_image=first.mask, width=first.width, height=first.height)
    with torch.inference_mode():
        images = pipe(**kwargs).images
    return [_to_pil(image) for image in images]


def _to_pil(array: np.ndarray) -> Image.Image | ApiError:
    # fp16 VAE overflow shows up as NaN, which would otherwise be written out as a black image.
    if not np.isfinite(array).all():
        return ApiError(500, "The model produced an invalid (NaN) image; this is a server precision "
                        "problem, not your input. Try again, or run the server with --dtype bfloat16.",
                        kind="nan")
    return Image.fromarray((np.clip(array, 0, 1) * 255).round().astype(np.uint8))
