"""Shared fixtures: one `tiny` SDXL (with the test-only fault marker) per session; in-process apps around
it; one live `python -m server --model tiny` for the real clients. `tiny_dir` holds the same weights saved
to disk, for the `from_pretrained` path."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from server import synthetic
from server.app import create_app
from server.loader import Pipelines, load_pipelines
from server.settings import Settings
from tests.server.helpers import FAULT, TOKEN, LiveServer, settings_for, wait_ready

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def pytest_configure(config: pytest.Config) -> None:
    # diffusers' schedulers hand torch tensors to numpy 2 in a deprecated way, thousands of times a run.
    for message in ("__array__ implementation doesn't accept a copy keyword",
                    "__array_wrap__ must accept context and return_scalar"):
        config.addinivalue_line("filterwarnings", f"ignore:{message}:DeprecationWarning")


@pytest.fixture(autouse=True)


def _no_sdxl_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read SDXL_* variables; the developer's shell must not change test outcomes."""
    for name in list(os.environ):
        if name.startswith("SDXL_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")


def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tiny-sdxl")
    synthetic.tiny_sdxl().save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")


def pipelines() -> Pipelines:
    return load_pipelines(Settings(model="tiny", fault_marker=FAULT))


@pytest.fixture


def make_client(pipelines: Pipelines) -> Iterator[Callable[..., TestClient]]:
    """In-process apps with any settings, all sharing the session's loaded pipelines."""
    opened: list[TestClient] = []

    def make(loader: Callable[[], Pipelines] | None = None, ready: bool = True, **overrides: object) -> TestClient:
        app = create_app(settings_for(**overrides), loader=loader or (lambda: pipelines))
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        opened.append(client)
        if ready:
            token = overrides.get("api_token")
            wait_ready(client, {"Authorization": f"Bearer {token}"} if token else None)
        return client

    yield make
    for client in opened:
        client.__exit__(None, None, None)


@pytest.fixture


def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


@pytest.fixture(scope="session")


def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = LiveServer(
        ["--model", "tiny", "--api-token", TOKEN, "--fault-marker", FAULT, "--log-level", "warning",
         "--default-steps", "2"],
        tmp_path_factory.mktemp("live") / "server.log",
    )
    try:
        server.wait_ready({"Authorization": f"Bearer {TOKEN}"})
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")


def browser(tmp_path_factory: pytest.TempPathFactory):
    """A real headless Chromium (one per test module)."""
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        if os.environ.get("CI"):
            pytest.fail("CI must install chromium and chromium-driver (apt-get install chromium chromium-driver)")
        pytest.skip("chromium not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", f"--user-data-dir={tmp_path_factory.mktemp('chrome-profile')}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # console: CSP violations, errors
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(60)
    yield driver
    driver.quit()
