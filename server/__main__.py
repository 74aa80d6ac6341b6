"""`python -m server [--flags]`: load settings, start uvicorn, drain gracefully on SIGTERM."""

from __future__ import annotations

import logging
import sys
import time
from types import FrameType

from server.settings import Settings, parse_cli

# After the drain, how long uvicorn waits for the answers already decided to be written.
_FLUSH_SECONDS = 5


def serve(settings: Settings) -> int:
    # Imported here so that `--help` and flag errors answer without loading torch.
    import uvicorn

    from server.app import create_app

    log = logging.getLogger("server")

    class DrainingServer(uvicorn.Server):
        """SIGTERM/SIGINT start a drain instead of closing the listening socket at once.

        During the drain the server keeps accepting: new work gets 503 + Retry-After (with CORS, from the
        app) rather than "connection refused", which a proxy turns into a 502 without CORS; /ready is 503
        at once. Admitted, queued and running work finishes. When none is left (and --drain-min-seconds
        have passed), or --shutdown-grace has passed (what is left is then answered 503), uvicorn shuts down.
        A second signal stops at once.
        """

        drain_deadline: float | None = None
        # --drain-min-seconds: until then the drain goes on even when idle, so that a load balancer's health
        # checks (a few seconds apart) see /ready fail while new work is still answered 503, not refused.
        drain_earliest_end: float = 0.0

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if self.drain_deadline is None and not self.should_exit:
                # A signal handler: only flags here (the worker's begin_drain takes no lock).
                now = time.monotonic()
                self.drain_deadline = now + settings.shutdown_grace
                self.drain_earliest_end = now + settings.drain_min_seconds
                app.state.worker.begin_drain()
                return
            super().handle_exit(sig, frame)

        async def on_tick(self, counter: int) -> bool:
            worker = app.state.worker
            if self.drain_deadline is not None and not self.should_exit:
                if worker.idle and time.monotonic() >= self.drain_earliest_end:
                    log.info("drained: every admitted request has its answer")
                    self.should_exit = True
                elif time.monotonic() >= self.drain_deadline:
                    log.warning("shutdown grace (%g s) over: answering the remaining work 503",
                                settings.shutdown_grace)
                    worker.abandon()
                    self.should_exit = True
            return await super().on_tick(counter)

    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    failed = False

    def fatal() -> None:
        # The model cannot load: exit non-zero so the container's restart policy (and the operator) see it.
        nonlocal failed
        failed = True
        server.should_exit = True

    app = create_app(settings, on_fatal=fatal)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=_FLUSH_SECONDS,
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        server_header=False,
    )
    server = DrainingServer(config)
    if settings.metrics_port is not None:
        # prometheus_client's own HTTP server, in a daemon thread: the same registry the app's /metrics reads.
        from prometheus_client import start_http_server

        start_http_server(settings.metrics_port, addr=settings.host, registry=app.state.metrics.registry)
        log.info("metrics without the token on %s:%d/metrics", settings.host, settings.metrics_port)
    server.run()
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    return serve(parse_cli(argv))


if __name__ == "__main__":
    sys.exit(main())
