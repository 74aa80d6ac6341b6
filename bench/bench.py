"""Side-by-side benchmark: stock diffusers vs the same work through the server.

    python -m bench.bench                     # CPU, tiny model, 256x256, 30 steps
    python -m bench.bench --preset gpu        # GPU, random-sdxl, 1024x1024, 30 steps, compiled UNet

One run measures:
  a. the stock diffusers pipeline call, in this process (fp16 eager on GPU, fp32 on CPU);
  b. the same generation through HTTP, against `python -m server` started as a subprocess (as deployed),
     sequentially; the HTTP + queue overhead is the client's wall time minus the server's x-compute-time;
  c. throughput with 1, 4 and 8 concurrent clients.
It prints medians and ratios, checks them against the targets of issue 3, and can write JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["an astronaut riding a horse on the moon", "a lighthouse at dusk, oil painting", "a red fox in snow",
           "a bowl of ramen, studio photo", "a city skyline at night", "a sailing boat in a storm",
           "a cat wearing a hat", "a watercolor of mountains"]

PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {"model": "tiny", "size": 256, "steps": 30, "repeats": 7, "requests_per_client": 3, "server_args": []},
    "gpu": {"model": "random-sdxl", "size": 1024, "steps": 30, "repeats": 5, "requests_per_client": 2,
            "server_args": ["--compile"]},
}
# Issue 3's targets.
CPU_MAX_OVERHEAD = (0.02, 0.005)  # fraction of the pipeline call, or seconds
CPU_MIN_8_CLIENT_SPEEDUP = 1.5
GPU_MAX_LATENCY_RATIO = 0.7
GPU_MIN_8_CLIENT_VS_STOCK = 1.7
GPU_MAX_PEAK_BYTES_BATCH_1 = 14e9
GPU_MAX_RUN_SECONDS = 360


@dataclass
class Results:
    environment: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    stock_seconds: list[float] = field(default_factory=list)
    stock_batch_throughput: float = 0.0  # one stock call with a batch of max(clients): batching's ceiling
    http_seconds: list[float] = field(default_factory=list)
    http_compute_seconds: list[float] = field(default_factory=list)
    http_encode_seconds: list[float] = field(default_factory=list)
    throughput: dict[int, float] = field(default_factory=dict)
    mean_batch: dict[int, float] = field(default_factory=dict)
    server_start_seconds: float = 0.0
    server_info: dict[str, Any] = field(default_factory=dict)
    total_seconds: float = 0.0
    checks: dict[str, bool] = field(default_factory=dict)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--model", help="tiny, random-sdxl, a Hub id or a directory (default: from preset)")
    parser.add_argument("--size", type=int, help="width and height (default: from preset)")
    parser.add_argument("--steps", type=int, help="inference steps (default: from preset)")
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, help="timed calls for (a) and (b)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--requests-per-client", type=int)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--stock-dtype", default="auto", choices=["auto", "float16", "bfloat16", "float32"],
                        help="baseline dtype; auto: float16 on GPU (stock SDXL usage), float32 on CPU")
    parser.add_argument("--server-arg", action="append", default=None, dest="server_args",
                        help="extra flag for `python -m server` (repeatable), e.g. --server-arg=--compile")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--chart", type=Path, help="SVG chart of the results (default: bench/chart-<preset>.svg)")
    parser.add_argument("--server-log", type=Path, help="keep the server's log here (default: discarded)")
    args = parser.parse_args(argv)
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.chart is None:
        args.chart = Path(__file__).parent / f"chart-{args.preset}.svg"
    return args


def environment() -> dict[str, Any]:
    import diffusers
    import torch

    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "diffusers": diffusers.__version__, "cpu": platform.processor() or platform.machine(),
                           "cpu_count": os.cpu_count(), "cuda": torch.version.cuda}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
    try:
        env["load_average_at_start"] = os.getloadavg()
    except OSError:
        pass
    return env


# --- a. stock diffusers --------------------------------------------------------------------------

def stock_pipeline(args: argparse.Namespace):
    """The baseline as a user writes it: default attention, eager, VAE upcast as diffusers ships it."""
    import torch
    from diffusers import AutoPipelineForText2Image

    from server import synthetic
    from server.loader import resolve_device

    device = resolve_device(args.device)
    dtype_name = args.stock_dtype if args.stock_dtype != "auto" else ("float16" if device.type == "cuda" else "float32")
    dtype = getattr(torch, dtype_name)
    if args.model in synthetic.BUILDERS:
        pipe = synthetic.BUILDERS[args.model](device, dtype)
    else:
        pipe = AutoPipelineForText2Image.from_pretrained(args.model, dtype=dtype, variant="fp16",
                                                         use_safetensors=True).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe, device, dtype_name


def time_stock(args: argparse.Namespace, results: Results) -> None:
    import torch

    pipe, device, dtype_name = stock_pipeline(args)
    results.config["stock_dtype"] = dtype_name

    def call(seed: int, batch: int = 1) -> None:
        generators = [torch.Generator("cpu").manual_seed(seed + i) for i in range(batch)]
        images = pipe([PROMPTS[0]] * batch, num_inference_steps=args.steps, guidance_scale=args.guidance,
                      width=args.size, height=args.size, generator=generators).images
        assert len(images) == batch  # PIL images, as a user gets them
        if device.type == "cuda":
            torch.cuda.synchronize()

    call(0)  # warm-up: kernel selection, allocator
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for seed in range(args.repeats):
        started = time.perf_counter()
        call(seed)
        results.stock_seconds.append(time.perf_counter() - started)
    if device.type == "cuda":
        results.config["stock_peak_bytes"] = torch.cuda.max_memory_allocated()
    batch = max(args.clients)
    call(0, batch)  # warm-up at this batch size
    started = time.perf_counter()
    call(0, batch)
    results.stock_batch_throughput = batch / (time.perf_counter() - started)


def release_gpu() -> None:
    """Free the baseline's memory so the server process has the GPU to itself."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --- b and c. through the server -----------------------------------------------------------------

def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(args: argparse.Namespace, log_path: Path) -> tuple[subprocess.Popen, str, float]:
    port = free_port()
    command = [sys.executable, "-m", "server", "--model", args.model, "--host", "127.0.0.1", "--port", str(port),
               "--device", args.device, "--max-batch", str(args.max_batch), "--max-queue", "64",
               "--default-steps", str(args.steps), "--log-level", "warning", *args.server_args]
    started = time.perf_counter()
    log = log_path.open("wb")
    proc = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=url, timeout=5) as http:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"server exited with {proc.returncode}; log: {log_path}")
            try:
                if http.get("/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
    return proc, url, time.perf_counter() - started


def request_body(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    return {"inputs": PROMPTS[seed % len(PROMPTS)], "parameters": {
        "num_inference_steps": args.steps, "guidance_scale": args.guidance, "width": args.size,
        "height": args.size, "seed": seed}}


def time_http(args: argparse.Namespace, url: str, results: Results) -> None:
    with httpx.Client(base_url=url, timeout=600) as http:
        http.post("/", json=request_body(args, 0)).raise_for_status()  # warm the connection and caches
        for seed in range(args.repeats):
            started = time.perf_counter()
            response = http.post("/", json={**request_body(args, seed), "inputs": PROMPTS[0]})
            elapsed = time.perf_counter() - started
            response.raise_for_status()
            results.http_seconds.append(elapsed)
            results.http_compute_seconds.append(float(response.headers["x-compute-time"]))
            timing = dict(part.strip().split(";dur=") for part in response.headers["server-timing"].split(","))
            results.http_encode_seconds.append(float(timing["encode"]) / 1000)


def batch_totals(url: str) -> tuple[float, float]:
    """(images, pipeline calls) so far, from the server's sdxl_batch_size histogram."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    values = dict(line.split(" ", 1) for line in text.splitlines()
                  if line.startswith(("sdxl_batch_size_sum ", "sdxl_batch_size_count ")))
    return float(values.get("sdxl_batch_size_sum", 0)), float(values.get("sdxl_batch_size_count", 0))


def time_throughput(args: argparse.Namespace, url: str, clients: int) -> float:
    errors: list[BaseException] = []
    barrier = threading.Barrier(clients + 1)

    def client(index: int) -> None:
        with httpx.Client(base_url=url, timeout=600) as http:
            barrier.wait()
            for i in range(args.requests_per_client):
                try:
                    http.post("/", json=request_body(args, 1000 * index + i)).raise_for_status()
                except Exception as exc:  # reported after the run
                    errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise SystemExit(f"{len(errors)} request(s) failed with {clients} clients: {errors[0]!r}")
    return clients * args.requests_per_client / elapsed


# --- report -------------------------------------------------------------------------------------

def report(args: argparse.Namespace, r: Results) -> None:
    stock = statistics.median(r.stock_seconds)
    http = statistics.median(r.http_seconds)
    compute = statistics.median(r.http_compute_seconds)
    overhead = statistics.median(w - c for w, c in zip(r.http_seconds, r.http_compute_seconds, strict=True))
    stock_rate = 1 / stock
    gpu = "gpu" in r.environment
    print(f"\nSDXL endpoint benchmark - {args.model}, {args.size}x{args.size}, {args.steps} steps, "
          f"guidance {args.guidance}")
    print(f"machine: {r.environment}")
    print(f"server flags: --max-batch {args.max_batch} {' '.join(args.server_args)}; "
          f"started and warmed in {r.server_start_seconds:.1f} s")
    print(f"\n a. stock diffusers ({r.config['stock_dtype']}, eager)  median {stock:.3f} s   "
          f"({len(r.stock_seconds)} calls: {', '.join(f'{s:.3f}' for s in r.stock_seconds)})")
    print(f" b. through HTTP, sequential          median {http:.3f} s   (server compute {compute:.3f} s)")
    encode = statistics.median(r.http_encode_seconds)
    print(f"    HTTP + queue overhead              median {overhead * 1000:.1f} ms = {overhead / compute:.2%} "
          f"of the pipeline call (of which PNG encoding {encode * 1000:.1f} ms)")
    print(f"    HTTP latency / stock latency       {http / stock:.2f}x")
    print(" c. throughput (images/s)")
    base = r.throughput.get(1)
    for clients, rate in sorted(r.throughput.items()):
        vs_one = f"{rate / base:.2f}x 1 client" if base else ""
        print(f"    {clients} client(s): {rate:6.3f} img/s   {rate / stock_rate:.2f}x stock sequential   {vs_one}"
              f"   (mean batch {r.mean_batch.get(clients, 0):.1f})")
    most = max(r.throughput)
    print(f"    stock diffusers, one batch of {most}: {r.stock_batch_throughput:.3f} img/s "
          f"({r.stock_batch_throughput / stock_rate:.2f}x stock sequential: the most batching can give here)")
    peaks = (r.server_info.get("cuda_memory") or {}).get("peak_bytes_by_batch_size") or {}
    if peaks:
        print("    server peak CUDA memory by batch size: "
              + ", ".join(f"{b}: {int(v) / 1e9:.1f} GB" for b, v in sorted(peaks.items(), key=lambda kv: int(kv[0]))))
    print(f"total run time {r.total_seconds:.0f} s")

    if gpu:
        r.checks = {
            f"latency <= {GPU_MAX_LATENCY_RATIO}x stock": http / stock <= GPU_MAX_LATENCY_RATIO,
            f"{most}-client throughput >= {GPU_MIN_8_CLIENT_VS_STOCK}x stock sequential":
                r.throughput[most] / stock_rate >= GPU_MIN_8_CLIENT_VS_STOCK,
            # server_info is parsed JSON: its batch-size keys are strings.
            f"peak memory at batch 1 <= {GPU_MAX_PEAK_BYTES_BATCH_1 / 1e9:g} GB":
                int(peaks.get("1", 0)) <= GPU_MAX_PEAK_BYTES_BATCH_1,
            f"whole run <= {GPU_MAX_RUN_SECONDS} s": r.total_seconds <= GPU_MAX_RUN_SECONDS,
        }
    else:
        r.checks = {
            "HTTP+queue overhead < 2% or < 5 ms": overhead / compute < CPU_MAX_OVERHEAD[0]
            or overhead < CPU_MAX_OVERHEAD[1],
            f"{most} clients >= {CPU_MIN_8_CLIENT_SPEEDUP}x stock sequential":
                r.throughput[most] / stock_rate >= CPU_MIN_8_CLIENT_SPEEDUP,
        }
    print("\ntargets:")
    for name, ok in r.checks.items():
        print(f"  [{'PASS' if ok else 'FAIL'}] {name}")


# --- chart ----------------------------------------------------------------------------------------

_W, _H, _PANEL = 900, 390, 340  # figure size; each panel's plot width
_TOP, _BOTTOM = 60, 300  # plot area, y
_STOCK, _SERVER, _CEILING = "#7a7a7a", "#1f6fb2", "#c0392b"


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _text(x: float, y: float, text: str, size: int = 12, anchor: str = "middle", **attrs: str) -> str:
    extra = "".join(f' {key.replace("_", "-")}="{value}"' for key, value in attrs.items())
    return f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}"{extra}>{_esc(text)}</text>'


def _nice_top(value: float) -> float:
    """A round axis maximum at or above `value` (1, 2 or 5 times a power of ten)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    return next(step * power for step in (1, 2, 4, 8, 10) if step * power >= value)


def _axis(x0: float, top: float, unit: str) -> list[str]:
    parts = [f'<line x1="{x0}" y1="{_TOP}" x2="{x0}" y2="{_BOTTOM}" stroke="#333"/>',
             f'<line x1="{x0}" y1="{_BOTTOM}" x2="{x0 + _PANEL}" y2="{_BOTTOM}" stroke="#333"/>']
    for i in range(5):
        value = top * i / 4
        y = _BOTTOM - (_BOTTOM - _TOP) * i / 4
        parts.append(f'<line x1="{x0 - 4}" y1="{y:.1f}" x2="{x0 + _PANEL}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(_text(x0 - 7, y + 4, f"{value:g}", 11, "end"))
    parts.append(_text(x0 - 40, (_TOP + _BOTTOM) / 2, unit, 12, transform=f"rotate(-90 {x0 - 40} "
                                                                           f"{(_TOP + _BOTTOM) / 2})"))
    return parts


def chart_svg(args: argparse.Namespace, r: Results) -> str:
    """Two panels, drawn from the measured numbers only: (left) median latency of one image, stock diffusers
    against the same request through HTTP (split into the server's pipeline call and the rest); (right)
    images per second against the number of concurrent clients, with stock sequential and one stock
    batched call as reference lines."""
    stock = statistics.median(r.stock_seconds)
    http = statistics.median(r.http_seconds)
    compute = statistics.median(r.http_compute_seconds)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" viewBox="0 0 {_W} {_H}" '
             f'font-family="sans-serif">', f'<rect width="{_W}" height="{_H}" fill="white"/>',
             _text(_W / 2, 22, f"{args.model}, {args.size}x{args.size}, {args.steps} steps - "
                   f"{r.environment.get('gpu') or 'CPU, ' + str(r.environment.get('cpu_count')) + ' cores'}", 14,
                   font_weight="bold")]
    # Left: latency.
    x0 = 70
    top = _nice_top(max(stock, http) * 1.15)
    parts += _axis(x0, top, "seconds per image (median)")
    parts.append(_text(x0 + _PANEL / 2, 45, "Latency, one request at a time", 13))

    def y_of(value: float) -> float:
        return _BOTTOM - (_BOTTOM - _TOP) * value / top

    bar = 90
    for i, (label, total, inner) in enumerate(((f"stock diffusers ({r.config.get('stock_dtype', '?')})", stock,
                                                None), ("through HTTP", http, compute))):
        x = x0 + 50 + i * 170
        parts.append(f'<rect x="{x}" y="{y_of(total):.1f}" width="{bar}" height="{_BOTTOM - y_of(total):.1f}" '
                     f'fill="{_STOCK if inner is None else _SERVER}" opacity="{1 if inner is None else 0.45}"/>')
        if inner is not None:  # the server's own pipeline call, inside the HTTP total
            parts.append(f'<rect x="{x}" y="{y_of(inner):.1f}" width="{bar}" height="{_BOTTOM - y_of(inner):.1f}" '
                         f'fill="{_SERVER}"/>')
            parts.append(_text(x + bar / 2, y_of(inner) + 16, f"compute {inner:.3f} s", 10, fill="white"))
        parts.append(_text(x + bar / 2, y_of(total) - 6, f"{total:.3f} s", 12))
        parts.append(_text(x + bar / 2, _BOTTOM + 18, label, 11))
    parts.append(_text(x0 + _PANEL / 2, _BOTTOM + 40, f"HTTP / stock = {http / stock:.2f}x", 12))
    # Right: throughput.
    x0 = 70 + _PANEL + 100
    clients = sorted(r.throughput)
    stock_rate = 1 / stock
    top = _nice_top(max([*r.throughput.values(), stock_rate, r.stock_batch_throughput]) * 1.15)
    parts += _axis(x0, top, "images per second")
    parts.append(_text(x0 + _PANEL / 2, 45, "Throughput against concurrent clients", 13))
    span = max(clients[-1] - clients[0], 1)

    def x_of(count: int) -> float:
        return x0 + 30 + (_PANEL - 60) * (count - clients[0]) / span

    def y_rate(value: float) -> float:
        return _BOTTOM - (_BOTTOM - _TOP) * value / top

    legend_y = _BOTTOM + 62
    for i, (value, color, label) in enumerate((
            (stock_rate, _STOCK, f"stock diffusers, sequential: {stock_rate:.2f} img/s"),
            (r.stock_batch_throughput, _CEILING,
             f"stock diffusers, one batch of {clients[-1]}: {r.stock_batch_throughput:.2f} img/s (ceiling)"))):
        parts.append(f'<line x1="{x0}" y1="{y_rate(value):.1f}" x2="{x0 + _PANEL}" y2="{y_rate(value):.1f}" '
                     f'stroke="{color}" stroke-dasharray="6 4"/>')
        y = legend_y + 16 * i
        parts.append(f'<line x1="{x0 - 60}" y1="{y - 4}" x2="{x0 - 35}" y2="{y - 4}" stroke="{color}" '
                     f'stroke-dasharray="6 4"/>')
        parts.append(_text(x0 - 28, y, label, 11, "start", fill=color))
    points = " ".join(f"{x_of(c):.1f},{y_rate(r.throughput[c]):.1f}" for c in clients)
    parts.append(f'<polyline points="{points}" fill="none" stroke="{_SERVER}" stroke-width="2"/>')
    for count in clients:
        x, y = x_of(count), y_rate(r.throughput[count])
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{_SERVER}"/>')
        parts.append(_text(x, y - 9, f"{r.throughput[count]:.2f}", 11, fill=_SERVER))
        parts.append(_text(x, _BOTTOM + 18, str(count), 11))
    parts.append(_text(x0 + _PANEL / 2, _BOTTOM + 36, "concurrent clients; blue: through the server", 12))
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    results = Results(environment=environment(),
                      config={k: v for k, v in vars(args).items() if k not in ("json", "chart")})
    print(f"a. stock diffusers: {args.repeats} calls ...", flush=True)
    time_stock(args, results)
    release_gpu()
    with tempfile.TemporaryDirectory() as tmp:
        log_path = args.server_log or Path(tmp) / "server.log"
        print("starting `python -m server` ...", flush=True)
        proc, url, results.server_start_seconds = start_server(args, log_path)
        try:
            print(f"b. HTTP: {args.repeats} sequential requests ...", flush=True)
            time_http(args, url, results)
            for clients in args.clients:
                print(f"c. {clients} concurrent client(s) x {args.requests_per_client} requests ...", flush=True)
                images_before, calls_before = batch_totals(url)
                results.throughput[clients] = time_throughput(args, url, clients)
                images, calls = batch_totals(url)
                results.mean_batch[clients] = (images - images_before) / max(1.0, calls - calls_before)
            results.server_info = httpx.get(f"{url}/info", timeout=10).json()
        finally:
            proc.terminate()
            proc.wait(60)
        if proc.returncode not in (0, -15):
            print(log_path.read_text(errors="replace")[-4000:], file=sys.stderr)
    results.total_seconds = time.perf_counter() - started
    report(args, results)
    if args.json:
        args.json.write_text(json.dumps(asdict(results), indent=2, default=str))
    args.chart.write_text(chart_svg(args, results))
    print(f"chart: {args.chart}")
    return 0 if all(results.checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
