"""The one cloud-init bootstrap (stacks/bootstrap.py + image/host/): real validators on every variant
(`cloud-init schema`, shellcheck, `caddy validate`), AWS's 16 KB limit, and its wiring into both stacks."""

from __future__ import annotations

import base64
import dataclasses
import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pulumi.runtime.rpc import is_rpc_secret, unwrap_rpc_secret

from stacks import bootstrap
from stacks.bootstrap import BootstrapValues, LocalCaddy, render_caddyfile, render_cloud_init
from tests.stacks.conftest import FAKE_EIP, FAKE_GCP_ADDRESS, FAKE_GCP_PROJECT, run_program

BIN = Path(sys.executable).parent
TOKEN = "A1b2C3d4" * 6  # 48 characters, the generated token's length
HF_TOKEN = "hf_" + "Q" * 34
# A realistic worst case for the size limit: ten long origins, a long domain-less setup, a digest-pinned image.
LONG_ORIGINS = tuple(f"https://preview-{i:02d}.my-image-app.example-company.com" for i in range(10))
LONG_IMAGE = "ghcr.io/some-organisation/sdxl-endpoint-server@sha256:" + "0" * 64


def values(**overrides) -> BootstrapValues:
    base = BootstrapValues(
        image="ghcr.io/sdxl-endpoint/sdxl-endpoint-server:latest", model="stabilityai/stable-diffusion-xl-base-1.0",
        api_token=TOKEN, hf_token=HF_TOKEN, cors_origins=("https://app.example.com",), public_ip="203.0.113.10",
    )
    return dataclasses.replace(base, **overrides)


VARIANTS = {
    "ip": values(),
    "domain": values(domain="sdxl.example.com", public_ip=None),
    "no-idle-stop-no-hf-token": values(idle_stop_minutes=0, hf_token=None),
    "worst-case-size": values(cors_origins=LONG_ORIGINS, image=LONG_IMAGE,
                              model="some-organisation/a-rather-long-fine-tuned-sdxl-model-name-v2"),
}


def files_of(document: str) -> dict[str, dict]:
    """write_files by path, with gz+b64 content unpacked the way cloud-init unpacks it."""
    assert document.startswith("#cloud-config\n")
    parsed = yaml.safe_load(document)
    files = {}
    for entry in parsed["write_files"]:
        content = entry["content"]
        if entry.get("encoding") == "gz+b64":
            content = gzip.decompress(base64.b64decode(content)).decode()
        files[entry["path"]] = {**entry, "content": content}
    return files


def run_tool(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, **kwargs)


@pytest.mark.parametrize("name", VARIANTS)
def test_valid_per_cloud_init_schema(name: str, tmp_path: Path) -> None:
    cloud_init = shutil.which("cloud-init") or "/usr/bin/cloud-init"
    if not Path(cloud_init).exists():
        if os.environ.get("CI"):
            pytest.fail("cloud-init is not installed (.ci/run installs it)")
        pytest.skip("Debian's cloud-init package is not installed here (.ci/run installs it)")
    path = tmp_path / "user-data"
    path.write_text(render_cloud_init(VARIANTS[name]))
    result = run_tool([cloud_init, "schema", "--config-file", str(path)])
    assert result.returncode == 0 and "Valid" in result.stdout, result.stdout + result.stderr


def test_a_broken_document_is_caught_by_the_schema_check(tmp_path: Path) -> None:
    # Proves the check above can fail: a typo'd key under write_files.
    cloud_init = shutil.which("cloud-init") or "/usr/bin/cloud-init"
    if not Path(cloud_init).exists():
        pytest.skip("cloud-init is not installed")
    document = yaml.safe_load(render_cloud_init(values()))
    document["write_files"][0]["permission"] = document["write_files"][0].pop("permissions")
    path = tmp_path / "user-data"
    path.write_text("#cloud-config\n" + yaml.safe_dump(document))
    assert run_tool([cloud_init, "schema", "--config-file", str(path)]).returncode != 0


@pytest.mark.parametrize("name", VARIANTS)
def test_within_awss_16_kb_user_data_limit(name: str) -> None:
    size = len(render_cloud_init(VARIANTS[name]).encode())
    assert size <= bootstrap.USER_DATA_LIMIT_BYTES == 16 * 1024
    # Headroom for growth: a bootstrap near the edge breaks the first time someone adds a line.
    assert size <= 14 * 1024, f"{size} bytes: close to AWS's 16 KB limit"


def test_embedded_shell_is_shellcheck_clean(tmp_path: Path) -> None:
    files = files_of(render_cloud_init(values()))
    scripts = [path for path, f in files.items() if f["content"].startswith("#!/usr/bin/env bash")
               or f["content"].startswith("#!/bin/sh")]
    assert scripts == [bootstrap.BOOT_SCRIPT]
    for path in scripts:
        target = tmp_path / Path(path).name
        target.write_text(files[path]["content"])
        result = run_tool([str(BIN / "shellcheck"), "--severity=style", str(target)])
        assert result.returncode == 0, result.stdout
    # runcmd holds argv lists only: nothing there goes through a shell.
    assert all(isinstance(cmd, list) for cmd in yaml.safe_load(render_cloud_init(values()))["runcmd"])


def test_shellcheck_catches_a_planted_mistake(tmp_path: Path) -> None:
    script = tmp_path / "bad.sh"
    script.write_text("#!/usr/bin/env bash\nrm -rf $1/*\n")
    assert run_tool([str(BIN / "shellcheck"), str(script)]).returncode != 0


def test_embedded_scripts_are_the_files_in_image_host() -> None:
    files = files_of(render_cloud_init(values()))
    assert files[bootstrap.BOOT_SCRIPT]["content"] == (bootstrap.HOST_TEMPLATES / "sdxl-boot.sh").read_text()
    idle = files[bootstrap.IDLE_SCRIPT]["content"]
    assert idle == (bootstrap.HOST_TEMPLATES / "idle_stop.py").read_text()
    compile(idle, bootstrap.IDLE_SCRIPT, "exec")
    assert files[bootstrap.BOOT_SCRIPT]["permissions"] == files[bootstrap.IDLE_SCRIPT]["permissions"] == "0755"


CADDY_VARIANTS = {
    "domain": dict(public_ip="203.0.113.10", domain="sdxl.example.com"),
    "ip-with-sslip-fallback": dict(public_ip="203.0.113.10", domain=None),
    "local-test": dict(public_ip="127.0.0.1", domain=None, local=LocalCaddy(http_port=18080, https_port=18443)),
}


def adapted(caddyfile: str, tmp_path: Path) -> dict:
    path = tmp_path / "Caddyfile"
    path.write_text(caddyfile)
    env = {"HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "data"), "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
           "PATH": "/usr/bin:/bin"}
    result = run_tool([str(BIN / "caddy"), "validate", "--config", str(path), "--adapter", "caddyfile"], env=env)
    assert result.returncode == 0 and "Valid configuration" in result.stdout + result.stderr, result.stderr
    result = run_tool([str(BIN / "caddy"), "adapt", "--config", str(path), "--adapter", "caddyfile"], env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("name", CADDY_VARIANTS)
def test_caddyfile_is_valid_per_caddy_validate(name: str, tmp_path: Path) -> None:
    config = adapted(render_caddyfile(**CADDY_VARIANTS[name]), tmp_path)
    (server,) = config["apps"]["http"]["servers"].values()
    # Timeouts of at least 300 s, in nanoseconds in Caddy's JSON.
    assert server["write_timeout"] >= 300e9
    handlers = json.dumps(server["routes"])
    proxies = [h for route in server["routes"] for sub in route["handle"] for r in sub.get("routes", [])
               for h in r["handle"] if h.get("handler") == "reverse_proxy"]
    assert proxies, handlers
    for proxy in proxies:
        transport = proxy["transport"]
        assert transport["response_header_timeout"] >= 300e9
        assert transport["read_timeout"] >= 300e9 and transport["write_timeout"] >= 300e9
        assert [u["dial"] for u in proxy["upstreams"]] == [f"127.0.0.1:{bootstrap.SERVER_PORT}"]
    # Automatic HTTPS with its HTTP->HTTPS redirect left on.
    assert "automatic_https" not in server or not server["automatic_https"].get("disable_redirects")


def test_caddy_validate_rejects_a_broken_caddyfile(tmp_path: Path) -> None:
    path = tmp_path / "Caddyfile"
    path.write_text(render_caddyfile("203.0.113.10", None).replace("profile shortlived", "profile"))
    result = run_tool([str(BIN / "caddy"), "validate", "--config", str(path), "--adapter", "caddyfile"],
                      env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert result.returncode != 0


def test_without_a_domain_the_ip_gets_a_shortlived_le_certificate_and_sslip_is_the_fallback(tmp_path: Path) -> None:
    config = adapted(render_caddyfile("203.0.113.10", None), tmp_path)
    (server,) = config["apps"]["http"]["servers"].values()
    hosts = [host for route in server["routes"] for m in route.get("match", []) for host in m.get("host", [])]
    assert sorted(hosts) == ["203-0-113-10.sslip.io", "203.0.113.10"]
    policies = config["apps"]["tls"]["automation"]["policies"]
    ip_policy = next(p for p in policies if "203.0.113.10" in p.get("subjects", []))
    assert [(i["module"], i.get("profile")) for i in ip_policy["issuers"]] == [("acme", "shortlived")]
    # The IP URL carries no SNI; the instance only sees its private address behind the cloud's NAT.
    assert config["apps"]["http"]["servers"] and "203.0.113.10" in json.dumps(config["apps"]["tls"])
    assert "default_sni" in render_caddyfile("203.0.113.10", None)


def test_with_a_domain_only_the_domain_is_served(tmp_path: Path) -> None:
    config = adapted(render_caddyfile("203.0.113.10", "sdxl.example.com"), tmp_path)
    (server,) = config["apps"]["http"]["servers"].values()
    hosts = [host for route in server["routes"] for m in route.get("match", []) for host in m.get("host", [])]
    assert hosts == ["sdxl.example.com"]
    assert "shortlived" not in json.dumps(config)  # the domain gets Caddy's default issuers


def test_no_domain_and_no_ip_is_refused() -> None:
    with pytest.raises(ValueError, match="public IP"):
        render_caddyfile(None, None)


def test_sslip_host() -> None:
    assert bootstrap.sslip_host("203.0.113.10") == "203-0-113-10.sslip.io"


def test_env_file_is_root_only_and_holds_the_tokens_once() -> None:
    document = render_cloud_init(values())
    files = files_of(document)
    env = files[bootstrap.ENV_FILE]
    assert (env["permissions"], env["owner"]) == ("0600", "root:root")
    lines = dict(line.split("=", 1) for line in env["content"].splitlines())
    assert lines["SDXL_API_TOKEN"] == TOKEN and lines["HF_TOKEN"] == HF_TOKEN
    assert json.loads(lines["SDXL_CORS_ORIGINS"]) == ["https://app.example.com"]
    assert lines["HF_HOME"] == "/models"
    assert lines["SDXL_COMPILE_CACHE_DIR"].startswith("/models/")  # the compile cache on the same disk
    # Nowhere else: not in a unit, a script or the Caddyfile (which are world-readable).
    assert document.count(TOKEN) == 1 and document.count(HF_TOKEN) == 1
    assert "HF_TOKEN" not in files_of(render_cloud_init(values(hf_token=None)))[bootstrap.ENV_FILE]["content"]


def test_a_line_break_cannot_smuggle_a_variable_into_the_env_file() -> None:
    with pytest.raises(ValueError, match="line break"):
        render_cloud_init(values(api_token="abc\nSDXL_HOST=evil"))


def unit(files: dict, name: str) -> str:
    return files[f"/etc/systemd/system/{name}.service"]["content"]


def test_server_runs_under_systemd_on_the_gpu_with_the_cache_on_the_persistent_disk() -> None:
    files = files_of(render_cloud_init(values()))
    server = unit(files, "sdxl-server")
    assert "--gpus all" in server
    assert "Restart=always" in server
    assert f"--env-file {bootstrap.ENV_FILE}" in server
    assert f"--volume {bootstrap.MODEL_CACHE_DIR}:/models" in server
    assert f"--publish 127.0.0.1:{bootstrap.SERVER_PORT}:{bootstrap.SERVER_PORT}" in server  # Caddy is the way in
    assert "Requires=docker.service sdxl-gpu-check.service" in server  # no GPU, no server
    assert "ExecStartPre=/usr/local/bin/sdxl-boot pull ghcr.io/sdxl-endpoint/sdxl-endpoint-server:latest image-pulled" \
        in server
    assert "ExecStart=/usr/local/bin/sdxl-boot gpu-check" in unit(files, "sdxl-gpu-check")
    assert "watch-ready stabilityai/stable-diffusion-xl-base-1.0" in unit(files, "sdxl-ready")
    caddy = unit(files, "sdxl-caddy")
    assert bootstrap.CADDY_IMAGE in caddy and "--network host" in caddy and "Restart=always" in caddy
    assert f"--volume {bootstrap.CADDY_DATA_DIR}:/data" in caddy  # certificates survive stop/start
    assert "${" not in "".join(f["content"] for f in files.values() if f["path"].endswith(".service"))


def test_every_unit_written_is_enabled_and_started_on_first_boot() -> None:
    for variant in (values(), values(idle_stop_minutes=0)):
        document = yaml.safe_load(render_cloud_init(variant))
        written = sorted(Path(f["path"]).name for f in document["write_files"] if f["path"].endswith(".service"))
        enable, start = document["runcmd"][2], document["runcmd"][3]
        assert enable[:2] == ["systemctl", "enable"] and sorted(enable[2:]) == written
        assert start[:3] == ["systemctl", "start", "--no-block"] and sorted(start[3:]) == written


def test_idle_stop_minutes_reach_the_watcher_and_zero_leaves_it_out() -> None:
    files = files_of(render_cloud_init(values(idle_stop_minutes=45)))
    assert "idle_stop.py --minutes 45" in unit(files, "sdxl-idle-stop")
    off = files_of(render_cloud_init(values(idle_stop_minutes=0)))
    assert "/etc/systemd/system/sdxl-idle-stop.service" not in off and bootstrap.IDLE_SCRIPT not in off


def test_systemd_specifiers_in_values_are_escaped() -> None:
    files = files_of(render_cloud_init(values(model="org/model%n")))
    assert "watch-ready org/model%%n" in unit(files, "sdxl-ready")


# --- wiring into the stacks, through the real program under mocks ---------------------------------------------

def aws_user_data(run) -> str:
    raw = run.one("aws:ec2/instance:Instance").inputs["userData"]
    assert is_rpc_secret(raw), "user data is not a Pulumi secret"
    return unwrap_rpc_secret(raw)


def test_aws_endpoint_is_https_on_the_elastic_ip_and_the_bootstrap_knows_it() -> None:
    run = run_program(preset="aws-g5")
    assert run.value(run.outputs["endpoint"]) == f"https://{FAKE_EIP}"
    files = files_of(aws_user_data(run))
    caddyfile = files[bootstrap.CADDYFILE]["content"]
    assert f"https://{FAKE_EIP} {{" in caddyfile and f"default_sni {FAKE_EIP}" in caddyfile
    assert "idle_stop.py --minutes 30" in unit(files, "sdxl-idle-stop")  # the config default


def test_aws_endpoint_with_a_domain() -> None:
    run = run_program({"domain": "sdxl.example.com", "idleStopMinutes": "0"}, preset="aws-g5")
    assert run.value(run.outputs["endpoint"]) == "https://sdxl.example.com"
    assert run.value(run.outputs["curlExample"]).startswith("curl -sS --fail-with-body https://sdxl.example.com/ ")
    files = files_of(aws_user_data(run))
    assert "https://sdxl.example.com {" in files[bootstrap.CADDYFILE]["content"]
    assert bootstrap.IDLE_SCRIPT not in files


def test_gcp_endpoint_is_https_on_its_static_address() -> None:
    run = run_program({"gcp:project": FAKE_GCP_PROJECT}, preset="gcp-t4")
    assert run.value(run.outputs["endpoint"]) == f"https://{FAKE_GCP_ADDRESS}"
    raw = run.one("gcp:compute/instance:Instance").inputs["metadata"]
    assert is_rpc_secret(raw)
    files = files_of(unwrap_rpc_secret(raw)["user-data"])
    assert f"https://{FAKE_GCP_ADDRESS} {{" in files[bootstrap.CADDYFILE]["content"]
