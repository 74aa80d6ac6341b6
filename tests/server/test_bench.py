"""The benchmark script still runs end to end (a smoke run at toy settings; its numbers are not checked)."""

from __future__ import annotations

import json
import statistics
from xml.etree import ElementTree

from bench import bench


def test_presets_fill_unset_options_only():
    gpu = bench.parse_args(["--preset", "gpu"])
    assert gpu.chart.name == "chart-gpu.svg"
    assert (gpu.model, gpu.size, gpu.steps, gpu.server_args) == ("random-sdxl", 1024, 30, ["--compile"])
    cpu = bench.parse_args(["--steps", "3", "--server-arg=--no-warmup"])
    assert (cpu.model, cpu.size, cpu.steps, cpu.server_args) == ("tiny", 256, 3, ["--no-warmup"])


def test_smoke_run_measures_every_section(tmp_path, capsys):
    out, chart = tmp_path / "results.json", tmp_path / "chart.svg"
    bench.main(["--steps", "2", "--repeats", "2", "--clients", "1", "2", "--requests-per-client", "1",
                "--max-batch", "2", "--json", str(out), "--chart", str(chart)])
    results = json.loads(out.read_text())
    assert len(results["stock_seconds"]) == 2 and len(results["http_seconds"]) == 2
    assert all(t > 0 for t in results["http_compute_seconds"])
    assert set(results["throughput"]) == {"1", "2"} and results["stock_batch_throughput"] > 0
    assert results["server_info"]["model"] == "tiny"
    printed = capsys.readouterr().out
    for needle in ("a. stock diffusers", "b. through HTTP", "HTTP + queue overhead", "c. throughput", "targets:"):
        assert needle in printed
    # The chart is drawn from these very numbers.
    svg = ElementTree.parse(chart).getroot()  # noqa: S314 - the file this test just had written
    labels = [element.text for element in svg.iter("{http://www.w3.org/2000/svg}text")]
    assert f"{statistics.median(results['stock_seconds']):.3f} s" in labels
    assert f"{statistics.median(results['http_seconds']):.3f} s" in labels
    assert {f"{rate:.2f}" for rate in results["throughput"].values()} <= set(labels)
    assert len(list(svg.iter("{http://www.w3.org/2000/svg}circle"))) == 2  # one point per client count
