"""The model prefetch (image/host/sdxl_cloud.py `model`, run by sdxl-model.service through sdxl-boot): against a
loopback Hub (tests/image/fake_hub.py), it leaves a cache that huggingface_hub reads offline and that diffusers'
own download finds complete, fetching only the files the server loads."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub import snapshot_download

from image.host import sdxl_cloud
from tests.image.conftest import IMAGE
from tests.image.fake_cloud import FakeCloud
from tests.image.fake_hub import COMMIT, REPO, FakeHub

HELPER = IMAGE / "host" / "sdxl_cloud.py"
SERVER_LOADS = {  # what diffusers' from_pretrained(variant="fp16", use_safetensors=True) reads of SDXL base
    "model_index.json", "scheduler/scheduler_config.json",
    *(f"{t}/{n}" for t in ("tokenizer", "tokenizer_2")
      for n in ("merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json")),
    *(f"{f}/config.json" for f in ("unet", "vae", "text_encoder", "text_encoder_2")),
    "unet/diffusion_pytorch_model.fp16.safetensors", "vae/diffusion_pytorch_model.fp16.safetensors",
    "text_encoder/model.fp16.safetensors", "text_encoder_2/model.fp16.safetensors",
}


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    with FakeHub() as fake:
        yield fake


@pytest.fixture
def cloud() -> Iterator[FakeCloud]:
    fake = FakeCloud()
    yield fake
    fake.close()


def prefetch(hub: FakeHub, cloud: FakeCloud, cache: Path, *refs: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_ENDPOINT": hub.url, "SDXL_FAKE_CLOUD_URL": cloud.url}
    return subprocess.run([sys.executable, str(HELPER), "model", "aws", "us-east-1", REPO, "main", "fp16",
                           str(cache), str(os.getuid()), *refs], env=env, capture_output=True, text=True, timeout=60)


def test_the_selection_is_what_diffusers_loads(hub: FakeHub) -> None:
    import json
    chosen = sdxl_cloud.files_the_server_loads(list(hub.files), json.loads(hub.files["model_index.json"]), "fp16")
    assert chosen == SERVER_LOADS
    # A component without fp16 weights falls back to its plain safetensors, never to .bin.
    names = [n for n in hub.files if n != "vae/diffusion_pytorch_model.fp16.safetensors"]
    chosen = sdxl_cloud.files_the_server_loads(names, json.loads(hub.files["model_index.json"]), "fp16")
    assert "vae/diffusion_pytorch_model.safetensors" in chosen
    assert not [n for n in chosen if n.endswith((".bin", ".onnx", ".xml")) or "/" not in n and n != "model_index.json"]


def test_the_cache_is_huggingface_hubs_own_and_reads_offline(hub: FakeHub, cloud: FakeCloud, tmp_path: Path) -> None:
    result = prefetch(hub, cloud, tmp_path)
    assert result.returncode == 0, result.stderr
    # huggingface_hub itself, offline, finds the snapshot for the revision the server asks for.
    folder = Path(snapshot_download(REPO, revision="main", cache_dir=tmp_path / "hub", local_files_only=True))
    assert folder == tmp_path / "hub" / f"models--{REPO.replace('/', '--')}" / "snapshots" / COMMIT
    got = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
    assert got == SERVER_LOADS
    assert all((folder / name).read_bytes() == hub.files[name] for name in got)
    assert all((folder / name).is_symlink() and not Path(os.readlink(folder / name)).is_absolute() for name in got)
    blobs = folder.parents[1] / "blobs"
    assert sorted(p.name for p in blobs.iterdir()) == sorted({hub.blob(n) for n in SERVER_LOADS})
    assert (folder.parents[1] / "refs" / "main").read_text() == COMMIT
    # Each blob was written under the very lock file huggingface_hub takes for it (file_download: <cache>/.locks/
    # <repo folder>/<etag>.lock), so the server's own download never writes the same blob at the same time.
    locks = tmp_path / "hub" / ".locks" / folder.parents[1].name
    assert sorted(p.name for p in locks.iterdir()) == sorted(f"{hub.blob(n)}.lock" for n in SERVER_LOADS)
    # Each large file came once, from the CDN; nothing the server does not load was downloaded.
    assert sorted(hub.gets("/cdn/")) == sorted(f"/cdn/{n}" for n in SERVER_LOADS if n.endswith(".safetensors"))


def test_diffusers_own_download_then_finds_everything_and_fetches_nothing(hub: FakeHub, cloud: FakeCloud,
                                                                          tmp_path: Path) -> None:
    """The server's loader (diffusers, online, against the same Hub) sees the pipeline as cached: the prefetch
    chose exactly the files it would have fetched itself."""
    assert prefetch(hub, cloud, tmp_path).returncode == 0
    before = len(hub.requests)
    script = ("import sys; from diffusers import DiffusionPipeline; "
              "print(DiffusionPipeline.download(sys.argv[1], variant='fp16', use_safetensors=True, "
              "cache_dir=sys.argv[2]))")
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1"}
    result = subprocess.run([sys.executable, "-c", script, REPO, str(tmp_path / "hub")], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(f"snapshots/{COMMIT}")
    asked = hub.requests[before:]
    assert asked, "diffusers did not ask the Hub at all: the check proves nothing"
    assert not [path for method, path, _ in asked if method == "GET" and "/resolve/" in path or "/cdn/" in path]


def test_a_gated_model_uses_the_hub_token_from_ssm_and_never_sends_it_to_the_cdn(
        hub: FakeHub, cloud: FakeCloud, tmp_path: Path) -> None:
    hub.token = "hf_gated_model_token_123"
    cloud.parameters["/sdxl-endpoint/dev/hf-token"] = hub.token
    assert prefetch(hub, cloud, tmp_path).returncode != 0  # no token: the Hub refuses
    result = prefetch(hub, cloud, tmp_path, "HF_TOKEN=/sdxl-endpoint/dev/hf-token")
    assert result.returncode == 0, result.stderr
    hub_calls = [auth for _, path, auth in hub.requests if not path.startswith("/cdn/")]
    assert hub_calls[-1] == f"Bearer {hub.token}"
    assert {auth for _, path, auth in hub.requests if path.startswith("/cdn/")} == {None}
    assert hub.token not in result.stdout + result.stderr


def test_a_dropped_download_resumes_and_a_corrupt_one_is_refused(hub: FakeHub, cloud: FakeCloud,
                                                                 tmp_path: Path) -> None:
    hub.cut_after = 1000  # the first large file stops after 1000 bytes
    first = prefetch(hub, cloud, tmp_path)
    assert first.returncode != 0
    (part,) = (tmp_path / "hub").rglob("*.sdxl-prefetch.incomplete")  # sdxl-boot's "still downloading" sign
    assert part.stat().st_size == 1000
    assert prefetch(hub, cloud, tmp_path).returncode == 0
    assert not list((tmp_path / "hub").rglob("*.incomplete"))
    name = next(n for n in sorted(SERVER_LOADS) if n.endswith(".safetensors"))
    ranges = [r for r in hub.requests if r[1] == f"/cdn/{name}"]
    assert len(ranges) == 2  # asked again, from byte 1000 on (the fake serves the rest as 206)
    # A file whose bytes do not match the Hub's hash never enters the cache.
    hub.corrupt = {name}
    other = tmp_path / "other"
    result = prefetch(hub, cloud, other)
    assert result.returncode != 0 and "does not match" in result.stderr
    root = other / "hub" / f"models--{REPO.replace('/', '--')}"
    assert not (root / "blobs" / hub.blob(name)).exists() and not (root / "snapshots" / COMMIT / name).exists()
    assert not (root / "snapshots" / COMMIT / "model_index.json").exists()  # so sdxl-boot does not call it done
