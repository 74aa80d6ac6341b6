"""`python -m server [--flags]`: load settings, start uvicorn, drain gracefully on SIGTERM."""

from __future__ import annotations

import logging
import sys
from types import FrameType

from server.settings import Settings, parse_cli


def serve(settings: Settings) -> int:
    # Imported here so that `--help` and flag errors answer without loading torch.
    import uvicorn

    from server.app import create_app

    class DrainingServer(uvicorn.Server):
        """On SIGTERM/SIGINT, refuse new work with 503 at once; uvicorn then waits for in-flight
        requests (up to --shutdown-grace) before the worker stops."""

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            app.state.worker.begin_drain()
            super().handle_exit(sig, frame)

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
        timeout_graceful_shutdown=max(1, int(settings.shutdown_grace)),
        proxy_headers=True,
        server_header=False,
    )
    server = DrainingServer(config)
    server.run()
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    return serve(parse_cli(argv))


if __name__ == "__main__":
    sys.exit(main())
