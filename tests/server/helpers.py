"""Helpers shared by the server tests (fixtures are in conftest.py)."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from server.settings import Settings

FAULT = "FAULT"
TOKEN = "test-token-123"
REPO = Path(__file__).resolve().parents[2]
FAST = {"num_inference_steps": 2}


def settings_for(**overrides: object) -> Settings:
    values: dict[str, object] = {"model": "tiny", "warmup": False, "fault_marker": FAULT}
    values.update(overrides)
    return Settings(**values)


def wait_ready(client: TestClient | httpx.Client, headers: dict[str, str] | None = None,
               timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if client.get("/ready", headers=headers).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise TimeoutError("server never became ready")


def wait_until(predicate, timeout: float = 20, why: object = "condition never became true") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, why() if callable(why) else why
        time.sleep(0.01)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """`python -m server` in a subprocess, exactly as the container runs it."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", str(self.port), *args],
            cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
        )

    def wait_ready(self, headers: dict[str, str] | None = None, timeout: float = 120) -> None:
        with httpx.Client(base_url=self.url, timeout=5) as http:
            try:
                wait_ready(http, headers, timeout)
            except TimeoutError:
                raise TimeoutError(f"server not ready; log:\n{self.log()}") from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@contextlib.contextmanager
def serving(args: list[str], log_path: Path) -> Iterator[LiveServer]:
    """A LiveServer, ready, stopped on the way out."""
    server = LiveServer(args, log_path)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def sample_image(size: tuple[int, int] = (256, 256), color: tuple[int, ...] = (200, 80, 40),
                 mode: str = "RGB") -> Image.Image:
    """A flat colour with a grey ramp on its left half, so that edits visibly depend on the input."""
    image = Image.new(mode, size, color)
    ramp = Image.linear_gradient("L").resize((size[0] // 2, size[1])).convert(mode)
    image.paste(ramp, (0, 0))
    return image


def assert_batch_equivalent(batched: bytes, alone: bytes) -> None:
    """Equal up to float rounding: measured on CPU, a batched call differs from the same request alone
    by ~1e-5 in float (matmul blocking differs with batch size), so a few pixels round to the
    neighbouring 8-bit level. Byte-identical PNGs therefore do not hold; anything more would be a bug."""
    a, b = pixels(batched), pixels(alone)
    assert a.shape == b.shape
    diff = np.abs(a - b)
    assert diff.max() <= 1, f"max pixel difference {diff.max()}"
    assert diff.mean() < 0.01, f"mean pixel difference {diff.mean()}"
