"""A loopback stand-in for the Hugging Face Hub's file API, as huggingface_hub (file_download.py, hf_api.py) and
image/host/sdxl_cloud.py call it: the repo's listing with blob ids and LFS hashes, and `resolve` URLs that answer
HEAD with the headers huggingface_hub reads (X-Repo-Commit, ETag / X-Linked-Etag, X-Linked-Size) and GET with the
bytes, ranges included. Large (LFS) files redirect to another host name, as the Hub's CDN does."""

from __future__ import annotations

import hashlib
import json
import re
import urllib.parse
from contextlib import ExitStack
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

from tests.fakes import loopback_server, reply_json

COMMIT = "3f2e1d0c9b8a7f6e5d4c3b2a1f0e9d8c7b6a5f4e"
REPO = "stabilityai/stable-diffusion-xl-base-1.0"
LFS_SUFFIXES = (".safetensors", ".bin", ".onnx", ".msgpack", ".pb")


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # noqa: S324 - git's object id


def sdxl_like_repo() -> dict[str, bytes]:
    """The layout of stabilityai/stable-diffusion-xl-base-1.0 (its model_index.json components, each folder's
    weights in fp16 and full precision, .bin and ONNX/OpenVINO copies, a top-level single-file checkpoint),
    with small contents."""
    index = {"_class_name": "StableDiffusionXLPipeline", "_diffusers_version": "0.19.0.dev0",
             "force_zeros_for_empty_prompt": True, "add_watermarker": None,
             "scheduler": ["diffusers", "EulerDiscreteScheduler"],
             "text_encoder": ["transformers", "CLIPTextModel"],
             "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}
    files = {"model_index.json": json.dumps(index).encode(), "README.md": b"# SDXL\n",
             "sd_xl_base_1.0.safetensors": b"single-file checkpoint" * 50,
             "scheduler/scheduler_config.json": b'{"_class_name": "EulerDiscreteScheduler"}'}
    for tokenizer in ("tokenizer", "tokenizer_2"):
        for name in ("merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json"):
            files[f"{tokenizer}/{name}"] = f"{tokenizer} {name}".encode()
    for folder, weights in (("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"),
                            ("text_encoder", "model"), ("text_encoder_2", "model")):
        files[f"{folder}/config.json"] = json.dumps({"folder": folder}).encode()
        for suffix in (".safetensors", ".fp16.safetensors", ".bin", ".fp16.bin"):
            files[f"{folder}/{weights}{suffix}"] = f"{folder} {suffix} weights".encode() * 4000
        if folder.startswith("text_encoder"):
            files[f"{folder}/model.onnx"] = b"onnx" * 100
            files[f"{folder}/openvino_model.xml"] = b"<xml/>"
    return files


@dataclass
class FakeHub:
    files: dict[str, bytes] = field(default_factory=sdxl_like_repo)
    token: str | None = None  # when set, a gated repo: every Hub call needs it
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, Authorization)
    cut_after: int | None = None  # cut the next LFS body after this many bytes (a dropped connection)
    corrupt: set[str] = field(default_factory=set)  # large files the CDN serves with other bytes of the same size
    url: str = ""
    cdn: str = ""

    def __enter__(self) -> FakeHub:
        self._stack = ExitStack()
        self.url = self._stack.enter_context(loopback_server(self._handle))
        # The same server under another host name: the Hub's CDN, where the token must not go.
        self.cdn = self.url.replace("127.0.0.1", "localhost")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def gets(self, prefix: str = "") -> list[str]:
        return [path for method, path, _ in self.requests if method == "GET" and path.startswith(prefix)]

    def blob(self, name: str) -> str:
        data = self.files[name]
        return hashlib.sha256(data).hexdigest() if name.endswith(LFS_SUFFIXES) else git_blob_id(data)

    def _sibling(self, name: str) -> dict:
        data = self.files[name]
        sibling = {"rfilename": name, "blobId": git_blob_id(data), "size": len(data)}
        if name.endswith(LFS_SUFFIXES):
            sibling["lfs"] = {"sha256": self.blob(name), "size": len(data), "pointerSize": 134}
        return sibling

    def _handle(self, request: BaseHTTPRequestHandler, method: str) -> None:
        path = urllib.parse.urlsplit(request.path).path
        self.requests.append((method, path, request.headers.get("Authorization")))
        if path.startswith("/cdn/"):
            name = urllib.parse.unquote(path[len("/cdn/"):])
            data = self.files[name]
            return self._send(request, method, bytes(255 - b for b in data) if name in self.corrupt else data)
        if self.token and request.headers.get("Authorization") != f"Bearer {self.token}":
            return reply_json(request, 401, {"error": "Access to this gated repo is restricted."})
        if re.fullmatch(rf"/api/models/{REPO}(/revision/[^/]+)?", path):
            return reply_json(request, 200, {"id": REPO, "modelId": REPO, "sha": COMMIT, "private": False,
                                             "siblings": [self._sibling(n) for n in sorted(self.files)]})
        match = re.fullmatch(rf"/{REPO}/resolve/([^/]+)/(.+)", path)
        if not match or urllib.parse.unquote(match[2]) not in self.files:
            return reply_json(request, 404, {"error": "Entry not found"})
        name = urllib.parse.unquote(match[2])
        data = self.files[name]
        if name.endswith(LFS_SUFFIXES):
            request.send_response(302)
            request.send_header("Location", f"{self.cdn}/cdn/{urllib.parse.quote(name)}")
            request.send_header("X-Linked-Etag", f'"{self.blob(name)}"')
            request.send_header("X-Linked-Size", str(len(data)))
            request.send_header("ETag", f'"{git_blob_id(data)}"')
        else:
            request.send_response(200)
            request.send_header("ETag", f'"{self.blob(name)}"')
        request.send_header("X-Repo-Commit", COMMIT)
        request.send_header("Content-Length", "0" if name.endswith(LFS_SUFFIXES) else str(len(data)))
        request.end_headers()
        if method == "GET" and not name.endswith(LFS_SUFFIXES):
            request.wfile.write(data)

    def _send(self, request: BaseHTTPRequestHandler, method: str, data: bytes) -> None:
        start = int(re.fullmatch(r"bytes=(\d+)-", request.headers.get("Range", "bytes=0-"))[1])
        body = data[start:]
        if self.cut_after is not None and method == "GET":
            body, self.cut_after = body[:self.cut_after], None
            request.send_response(206 if start else 200)
            request.send_header("Content-Length", str(len(data) - start))  # promised, not delivered
            request.end_headers()
            request.wfile.write(body)
            request.close_connection = True
            return
        request.send_response(206 if start else 200)
        if start:
            request.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        if method == "GET":
            request.wfile.write(body)
