"""The preflight doctor for the hosted targets: huggingface_hub and the runpod SDK against the loopback fakes of
their APIs (tests/fakes/). Nothing leaves the machine: the loopback guard of test_doctor.py applies here too."""

from __future__ import annotations

import pytest

from stacks import catalog
from tests.fakes import huggingface_api as hf_fake
from tests.fakes import runpod_api as rp_fake
from tests.tools.test_doctor import loopback_only, run, write_stack  # noqa: F401 - loopback_only: the autouse guard
from tools.doctor import FAIL, OK, WARN
from tools.doctor import report as doctor_report

A10G = "aws-us-east-1-nvidia-a10g-x1"


def checks(report) -> dict[str, tuple[str, str, str | None]]:
    return {c.name: (c.status, c.value, c.fix) for c in report.checks}


def listing(**a10g) -> list[dict]:
    return [
        hf_fake.compute(A10G, "aws", "us-east-1", "nvidia-a10g", "x1", price=1.0, **a10g),
        hf_fake.compute("aws-us-east-1-nvidia-t4-x1", "aws", "us-east-1", "nvidia-t4", "x1", price=0.5,
                        gpu_memory=14, architecture="NVIDIA T4"),
        hf_fake.compute("gcp-us-east4-nvidia-l4-x1", "gcp", "us-east4", "nvidia-l4", "x1", price=0.7,
                        status="not_available", architecture="NVIDIA L4"),
        hf_fake.compute("aws-us-east-1-nvidia-a10g-x4", "aws", "us-east-1", "nvidia-a10g", "x4", gpus=4, price=5.0),
        hf_fake.compute("aws-us-east-1-intel-spr-x2", "aws", "us-east-1", "intel-spr", "x2", accelerator="cpu",
                        gpus=0, gpu_memory=None, price=0.067, architecture="Intel Sapphire Rapids"),
        hf_fake.compute("aws-us-east-1-inf2-x1", "aws", "us-east-1", "inf2", "x1", accelerator="neuron",
                        price=0.75, architecture="AWS Inferentia2"),
    ]


@pytest.fixture
def hf(monkeypatch):
    with hf_fake.serving(hf_fake.FakeHuggingFace(hardware=listing())) as fake, \
            hf_fake.sdk_pointed_at(monkeypatch, fake):
        yield fake


@pytest.fixture
def rp(monkeypatch):
    with rp_fake.serving(rp_fake.FakeRunPod(), monkeypatch) as fake:
        yield fake


# --- Hugging Face -----------------------------------------------------------------------------------------


def test_hf_hardware_that_exists_is_available_and_within_quota_passes(hf):
    report = run(["--cloud", "huggingface", "--gpu", "a10g"])
    found = checks(report)
    assert found["config"][0] == OK and A10G in found["config"][1]
    assert found["credentials"] == (OK, f"token of {hf_fake.USER}; endpoints go to namespace {hf_fake.USER}", None)
    assert found["hardware"][0] == OK and "$1/h" in found["hardware"][1]
    assert found["availability"] == (OK, f"{A10G} is available", None)
    assert found["quota"][0] == OK and "0 of 2 nvidia-a10g in use, 1 needed" in found["quota"][1]
    assert report.ok
    assert any(call[1] == f"/v2/provider/{hf_fake.USER}" for call in hf.calls)


@pytest.mark.parametrize("a10g, replicas, check, status, fix, seen", [
    ({"status": "not_available"}, 1, "availability", FAIL, "--suggest", "is not_available"),
    ({"status": "low_availability"}, 1, "availability", WARN, None, "is low_availability"),
    ({"quota": (1, 1)}, 1, "quota", FAIL, "https://endpoints.huggingface.co/contact", "1 of 1 nvidia-a10g in use, 1 "
     "needed"),
    # Two free, but maxReplicas 3 may need three: one per replica.
    ({"quota": (2, 0)}, 3, "quota", FAIL, "https://endpoints.huggingface.co/contact", "0 of 2 nvidia-a10g in use, 3 "
     "needed (3 replicas x 1)"),
])
def test_hf_unavailable_hardware_or_no_quota_fails_with_the_fix(hf, a10g, replicas, check, status, fix, seen):
    hf.hardware = listing(**a10g)
    found = checks(run(["--cloud", "huggingface", "--gpu", "a10g", "--max-replicas", str(replicas)]))
    assert found[check][0] == status and seen in found[check][1]
    assert (fix is None and found[check][2] is None) or fix in found[check][2]


def test_hf_hardware_missing_from_the_listing_fails(hf):
    hf.hardware = [entry for entry in listing() if entry["id"] != A10G]
    found = checks(run(["--cloud", "huggingface", "--gpu", "a10g"]))
    assert found["hardware"][0] == FAIL and f"Hugging Face lists no {A10G}" in found["hardware"][1]


def test_hf_suggest_lists_fitting_hardware_available_now_cheapest_first(hf):
    report = run(["--cloud", "huggingface", "--gpu", "a10g", "--suggest"])
    # No CPU, Inf2, x4, 14 GB T4 (below 16 GB), nor what is not available.
    assert [s.machine_type for s in report.suggestions] == [A10G]
    assert [s.usd_per_hour for s in report.suggestions] == [1.0]
    assert "Hugging Face API, live" in doctor_report.as_text(report)


def test_hf_suggest_judges_the_quota_for_every_replica(hf):
    (a10g,) = run(["--cloud", "huggingface", "--gpu", "a10g", "--max-replicas", "3", "--suggest"]).suggestions
    assert (a10g.quota, a10g.quota_detail) == ("insufficient", "2 of 2 nvidia-a10g free")
    (a10g,) = run(["--cloud", "huggingface", "--gpu", "a10g", "--max-replicas", "2", "--suggest"]).suggestions
    assert a10g.quota == "available"


def test_hf_rejected_token_is_one_fail_line(hf, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    report = run(["--cloud", "huggingface", "--gpu", "a10g"])
    assert [c.name for c in report.checks] == ["config", "credentials"]
    assert checks(report)["credentials"][0] == FAIL and "HTTP 401" in checks(report)["credentials"][1]


def test_the_hf_preset_without_an_image_fails_as_preview_would(hf):
    found = checks(run(["--stack", "hf-a10g"]))
    assert found["config"][0] == FAIL and "image: required when cloud is huggingface" in found["config"][1]


# --- RunPod -----------------------------------------------------------------------------------------------


def test_runpod_key_type_stock_and_balance_pass(rp):
    report = run(["--cloud", "runpod", "--gpu", "l4"])
    found = checks(report)
    assert found["credentials"] == (OK, "RUNPOD_API_KEY works (account user_abc123)", None)
    assert found["hardware"] == (OK, "NVIDIA L4: 24 GB, $0.43/h in SECURE", None)
    assert found["availability"] == (OK, "NVIDIA L4 stock in SECURE: Medium", None)
    assert found["spend"] == (OK, "balance $25.00, spending $0/h of a $80/h limit", None)
    assert report.ok


def stack_file(tmp_path, monkeypatch, gpu_type: str, cloud_type: str = "SECURE") -> str:
    return write_stack(tmp_path, monkeypatch, {"cloud": "runpod", "image": "ghcr.io/o/s:1",
                                               "runpodGpuType": gpu_type, "runpodCloudType": cloud_type})


def test_runpod_type_out_of_stock_fails_and_suggest_lists_what_is_in_stock(rp, tmp_path, monkeypatch):
    report = run(["--stack", stack_file(tmp_path, monkeypatch, "NVIDIA RTX A5000"), "--suggest"])
    found = checks(report)
    assert found["availability"][0] == FAIL and "stock in SECURE: None" in found["availability"][1]
    # In stock, fitting (no RTX 3070), cheapest first, with the live price.
    assert [(s.machine_type, s.usd_per_hour) for s in report.suggestions] == [
        ("NVIDIA RTX A4000", 0.25), ("NVIDIA L4", 0.43), ("NVIDIA A40", 0.44), ("NVIDIA GeForce RTX 4090", 0.69)]
    assert all(s.machine_type in catalog.RUNPOD_GPUS for s in report.suggestions)


def test_runpod_community_cloud_is_priced_as_community(rp, tmp_path, monkeypatch):
    found = checks(run(["--stack", stack_file(tmp_path, monkeypatch, "NVIDIA L4", "COMMUNITY")]))
    assert found["hardware"] == (OK, "NVIDIA L4: 24 GB, $0.39/h in COMMUNITY", None)


@pytest.mark.parametrize("balance, limit, why", [(0.2, 80.0, "needs one hour"), (25.0, 0.3, "pass the limit")])
def test_runpod_balance_and_spend_limit(rp, balance, limit, why):
    rp.balance, rp.spend_limit = balance, limit
    found = checks(run(["--cloud", "runpod", "--gpu", "l4"]))
    assert found["spend"][0] == FAIL and why in found["spend"][1]


def test_runpod_without_a_key_is_one_fail_line(rp, monkeypatch):
    monkeypatch.delenv("RUNPOD_API_KEY")
    report = run(["--cloud", "runpod", "--gpu", "l4"])
    assert [c.name for c in report.checks] == ["config", "credentials"]
    assert checks(report)["credentials"][2].endswith("export RUNPOD_API_KEY=<key>")


def test_runpod_key_revoked_after_the_first_call_is_one_fail_and_the_rest_skipped(rp, monkeypatch):
    answer = rp.answer
    asked = []

    def revoked_after_one(query: str, key: str | None):
        asked.append(query)
        return answer(query, key) if len(asked) == 1 else answer(query, "revoked")

    monkeypatch.setattr(rp, "answer", revoked_after_one)
    report = run(["--cloud", "runpod", "--gpu", "l4", "--suggest"])
    assert [c.name for c in report.checks] == ["config", "credentials", "hardware"]  # no spend check
    assert checks(report)["hardware"][0] == FAIL and "RunPod rejected the key" in checks(report)["hardware"][1]
    assert report.suggestions == [] and len(asked) == 2  # nothing asked after the refusal
