#!/usr/bin/env bash
# Host-side boot steps of the SDXL endpoint, run by the sdxl-*.service units on every boot.
#   sdxl-boot data-disk DEVICE...        find the data disk, format it only when blank, mount it by UUID
#   sdxl-boot docker-setup               Docker and its nvidia runtime (installed when missing), data root on it
#   sdxl-boot gpu-check CUDA             the driver sees a GPU and runs CUDA major CUDA, or fail loudly
#   sdxl-boot build CLOUD REGION BUCKET KEY SHA256   fetch the source bundle, check it, build the image
#   sdxl-boot pull-server IMAGE CLOUD    pull the server image (ECR / Artifact Registry as the instance)
#   sdxl-boot pull IMAGE                 pull an image, or keep the copy on disk when the registry is down
#   sdxl-boot model-download CLOUD SCOPE MODEL [HF_TOKEN=NAME]   fill the Hub cache while the image is made
#   sdxl-boot watch-ready MODEL          record "model downloaded" and "server ready"
#   sdxl-boot phase NAME...              record a boot phase
#   sdxl-boot unit-failed UNIT           run by sdxl-failed@UNIT.service when UNIT failed, however it did
# Phases go to $STATE/boot-phases.log, the serial console and the journal; $STATE/status says where the boot
# stands. A step that cannot succeed this boot writes $RUN/failed; the idle watcher then powers off soon. So does
# a step that ends any other way: a command failing where set -e stops (the ERR trap below), or a kill at its
# unit's TimeoutStartSec (the units' OnFailure=).
# -E: the ERR trap (below) holds inside functions too.
set -eEuo pipefail
STEP=${1:-}

STATE=${SDXL_STATE_DIR:-/var/lib/sdxl-endpoint}
RUN=${SDXL_RUN_DIR:-/run/sdxl-endpoint}    # tmpfs: a failure is never carried into the next boot
DATA=${SDXL_DATA_DIR:-/var/lib/sdxl-data}  # the data disk that outlives the instance
CACHE=${SDXL_CACHE_DIR:-$DATA/models}
ENV_FILE=${SDXL_ENV_FILE:-/run/sdxl-endpoint/server.env} # written at each server start
DAEMON_JSON=${SDXL_DOCKER_DAEMON_JSON:-/etc/docker/daemon.json}
SYSROOT=${SDXL_SYSROOT:-}                  # tests install apt sources under a scratch root
HELPER=${SDXL_CLOUD_HELPER:-/usr/local/lib/sdxl-endpoint/sdxl_cloud.py}
CONSOLE=${SDXL_CONSOLE:-/dev/console}
SERVER=${SDXL_SERVER:-http://127.0.0.1:8000}
GPU_WAIT=${SDXL_GPU_WAIT_SECONDS:-900}     # GCP's Deep Learning VM installs its driver on the first boot
DISK_WAIT=${SDXL_DISK_WAIT_SECONDS:-900}   # AWS attaches the data volume after the instance starts
NET_WAIT=${SDXL_NET_WAIT_SECONDS:-1800}    # downloads are retried this long: AWS attaches the public IP late
PULL_LIMIT=${SDXL_PULL_SECONDS:-1800}      # one pull; a registry that hangs must not hold the boot forever
BUILD_LIMIT=${SDXL_BUILD_SECONDS:-2700}    # one build: torch's CUDA wheels are several GB
MODEL_LIMIT=${SDXL_MODEL_SECONDS:-3600}    # one try at the model (about 7 GB); the server fetches what is left
MODEL_REVISION=main MODEL_VARIANT=fp16     # what the server loads by default (server/settings.py)
SMI_LIMIT=${SDXL_SMI_SECONDS:-60}          # one nvidia-smi call; a broken driver can hang it
POLL=${SDXL_POLL_SECONDS:-5}
CONTAINER_UID=10001                        # the image's non-root user
CACHE_UID=${SDXL_CACHE_UID:-$CONTAINER_UID} # who the model fetch runs as: the cache's owner (tests: their own)
SERVER_IMAGE=sdxl-endpoint-server:current  # what sdxl-server.service runs; a build or pull retags it

say() {
  local line
  line="$(date -u +%Y-%m-%dT%H:%M:%SZ) sdxl-boot: $*"
  echo "$line"
  { echo "$line" >>"$CONSOLE"; } 2>/dev/null || true
  logger -t sdxl-boot -- "$*" 2>/dev/null || true
}

status() {
  mkdir -p "$STATE"
  [ -e "$RUN/failed" ] || echo "$*" >"$STATE/status" # a failure stays the status until the next boot
}

mark_failed() {
  mkdir -p "$RUN" "$STATE"
  # noclobber: the boot's first failure stays, even when two are written at once.
  (set -C && echo "$*" >"$RUN/failed") 2>/dev/null || true
  echo "FAILED: $*" >"$STATE/status"
  say "FAILED: $*"
}

fail() {
  # Reported here, once: not again by the trap, should something below fail.
  trap - ERR
  mark_failed "$@"
  exit 1
}

# on_error STATUS LINE: a command failed where set -e ends the step, which would otherwise say nothing. Inside
# $(...) the command around it fails in turn, in this shell: reported there, once. Only the boot's own steps report
# here: the model prefetch and the ready watcher are never fatal, and the pull before Caddy fails explicitly.
on_error() {
  case "$STEP" in data-disk|docker-setup|gpu-check|build|pull-server) ;; *) return 0 ;; esac
  [ "$BASH_SUBSHELL" -eq 0 ] || return 0
  fail "sdxl-boot $STEP: \"$BASH_COMMAND\" exited $1 (line $2)"
}
trap 'on_error $? $LINENO' ERR

# unit_failed UNIT: from UNIT's OnFailure=, however it failed. Result: timeout, exit-code, signal...
# (org.freedesktop.systemd1(5)); success when UNIT never ran, its start having failed with a unit it requires
# (OnFailure= fires then too). A step that said why itself keeps its words.
unit_failed() {
  local result
  result=$(systemctl show -P Result "$1" 2>/dev/null || true)
  result=${result:-result unknown}
  [ "$result" != success ] || result=dependency
  if [ -e "$RUN/failed" ]; then say "$1 failed ($result)"; else mark_failed "$1 failed ($result): see journalctl -u $1"; fi
}

phase() {
  local uptime
  uptime=$(cut -d' ' -f1 /proc/uptime)
  mkdir -p "$STATE"
  echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) boot=$(boot_id) uptime=${uptime%.*}s phase=$*" >>"$STATE/boot-phases.log"
  say "phase $* (${uptime%.*} s after power-on)"
}

boot_id() {
  local id
  id=$(cat /proc/sys/kernel/random/boot_id 2>/dev/null || echo unknown)
  echo "${id:0:8}"
}

retry() { # retry SECONDS COMMAND...: until it succeeds or SECONDS have passed
  local deadline=$((SECONDS + $1))
  shift
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep "$POLL"
  done
}

data_disk() {
  local dev="" candidate waited=0 fstype uuid how=reused
  if mountpoint -q "$DATA"; then return 0; fi # the unit restarted within this boot
  status "waiting for the data disk"
  until [ -n "$dev" ]; do
    for candidate in "$@"; do
      if [ -e "$candidate" ]; then dev=$(readlink -f "$candidate") && break; fi
    done
    [ -n "$dev" ] || [ "$waited" -lt "$DISK_WAIT" ] || fail "the data disk ($*) did not appear in ${DISK_WAIT} s"
    [ -n "$dev" ] || { sleep 5 && waited=$((waited + 5)); }
  done
  # -p probes the device itself; blkid exits 2 when it finds no signature at all.
  fstype=$(blkid -p -s TYPE -o value "$dev" || true)
  if [ -z "$fstype" ]; then
    if [ -n "$(blkid -p -s PTTYPE -o value "$dev" || true)" ]; then
      fail "the data disk $dev has a partition table but no filesystem: it is not ours, so it is not formatted"
    fi
    say "the data disk $dev is blank: formatting it (ext4, label sdxl-data)"
    mkfs.ext4 -q -L sdxl-data -m 0 "$dev" || fail "cannot format the data disk $dev"
    how=formatted
  fi
  uuid=$(blkid -p -s UUID -o value "$dev")
  mkdir -p "$DATA"
  mount -o noatime "UUID=$uuid" "$DATA" || fail "cannot mount the data disk $dev (UUID=$uuid)"
  # After dataDiskGb grew, the filesystem takes the new room (ext4 grows while mounted).
  [ "${fstype:-ext4}" != ext4 ] || resize2fs "$dev" >/dev/null 2>&1 || true
  mkdir -p "$CACHE" "$DATA/docker" "$DATA/caddy" "$DATA/bundles"
  chown "$CONTAINER_UID:$CONTAINER_UID" "$CACHE" # Hub downloads and the compile cache: the container's user
  phase "data-disk-ready device=$dev ($how)"
}

apt_install() { # apt_install PACKAGE...: with retries, the network may come up late
  export DEBIAN_FRONTEND=noninteractive
  retry "$NET_WAIT" apt-get update -qq && retry "$NET_WAIT" apt-get install -y -qq --no-install-recommends "$@"
}

install_docker() { # Docker's own apt repository (docs.docker.com/engine/install/ubuntu)
  local codename
  codename=$(sed -n 's/^VERSION_CODENAME=//p' "$SYSROOT/etc/os-release")
  install -m 0755 -d "$SYSROOT/etc/apt/keyrings" \
    && retry "$NET_WAIT" curl -fsSL --max-time 60 https://download.docker.com/linux/ubuntu/gpg -o "$SYSROOT/etc/apt/keyrings/docker.asc" \
    && echo "deb [arch=$(dpkg --print-architecture) signed-by=/etc/apt/keyrings/docker.asc] https://download.docker.com/linux/ubuntu $codename stable" \
      >"$SYSROOT/etc/apt/sources.list.d/docker.list" \
    && apt_install docker-ce docker-ce-cli containerd.io docker-buildx-plugin
}

install_toolkit() { # NVIDIA's apt repository (NVIDIA Container Toolkit install guide)
  local key=/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg list
  retry "$NET_WAIT" curl -fsSL --max-time 60 https://nvidia.github.io/libnvidia-container/gpgkey -o "$RUN/nvidia.key" \
    && gpg --batch --yes --dearmor -o "$SYSROOT$key" "$RUN/nvidia.key" \
    && list=$(retry "$NET_WAIT" curl -fsSL --max-time 60 https://nvidia.github.io/libnvidia-container/stable/deb/nvidia-container-toolkit.list) \
    && echo "${list//deb https:\/\//deb [signed-by=$key] https://}" >"$SYSROOT/etc/apt/sources.list.d/nvidia-container-toolkit.list" \
    && apt_install nvidia-container-toolkit
}

docker_setup() {
  local installed=() runtimes
  mkdir -p "$RUN"
  status "checking Docker and the NVIDIA container toolkit"
  command -v docker >/dev/null || { install_docker || fail "could not install Docker from download.docker.com"; installed+=(docker-ce); }
  command -v nvidia-ctk >/dev/null || { install_toolkit || fail "could not install the NVIDIA container toolkit"; installed+=(nvidia-container-toolkit); }
  runtimes=$(docker info --format '{{json .Runtimes}}' 2>/dev/null || true)
  [[ $runtimes == *'"nvidia"'* ]] || nvidia-ctk runtime configure --runtime=docker >/dev/null
  # Images and build cache on the data disk, with the classic store: Docker 29's containerd store keeps
  # them under /var/lib/containerd, on the root disk that a replacement throws away.
  python3 - "$DAEMON_JSON" "$DATA/docker" <<'EOF'
import json, os, sys
path, root = sys.argv[1], sys.argv[2]
config = json.load(open(path)) if os.path.exists(path) else {}
config.update({"data-root": root, "features": {**config.get("features", {}), "containerd-snapshotter": False}})
os.makedirs(os.path.dirname(path), exist_ok=True)
json.dump(config, open(path, "w"), indent=2)
EOF
  if [ "$(docker info --format '{{.DockerRootDir}}' 2>/dev/null || true)" != "$DATA/docker" ] || [[ $runtimes != *'"nvidia"'* ]]; then
    systemctl restart docker
  fi
  [[ $(docker info --format '{{json .Runtimes}}') == *'"nvidia"'* ]] || fail "Docker has no nvidia runtime after setup"
  [ ${#installed[@]} -eq 0 ] || phase "toolkit-installed packages=${installed[*]}"
}

# smi ARGS...: nvidia-smi, stopped after SMI_LIMIT (124), killed 10 s later (137). A process stuck inside the
# driver survives even SIGKILL and holds the step: its unit's TimeoutStartSec and OnFailure= report that one.
smi() {
  local rc=0
  command -v nvidia-smi >/dev/null || { echo "nvidia-smi: command not found" && return 127; }
  timeout -k 10 "$SMI_LIMIT" nvidia-smi "$@" || rc=$?
  [ "$rc" -ne 124 ] && [ "$rc" -ne 137 ] || echo "nvidia-smi did not answer within $SMI_LIMIT s"
  return "$rc"
}

gpu_check() {
  local want=$1 deadline=$((SECONDS + GPU_WAIT)) gpus header cuda
  status "checking the NVIDIA driver"
  until gpus=$(smi --query-gpu=name,memory.total --format=csv,noheader 2>&1) && [ -n "$gpus" ]; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      say "nvidia-smi said: ${gpus:-no output}"
      fail "nvidia-smi sees no GPU after ${GPU_WAIT} s: ${gpus:-no output}. The server will not start. Check that the instance type has an NVIDIA GPU and the image ships its driver (README)"
    fi
    sleep 10
  done
  # The driver's own CUDA version (nvidia-smi's header). A newer minor runs on it; a newer major does not.
  header=$(smi 2>&1) || fail "nvidia-smi listed the GPU, then failed: ${header:-no output}"
  cuda=$(sed -n 's/.*CUDA Version: *\([0-9][0-9.]*\).*/\1/p' <<<"$header" | head -n 1)
  if [ -z "$cuda" ] || [ "${cuda%%.*}" -lt "${want%%.*}" ]; then
    fail "the NVIDIA driver supports CUDA ${cuda:-unknown}, but the server image needs CUDA $want (CUDA 13 needs driver 580 or later)"
  fi
  phase "driver-ok gpu=\"${gpus//$'\n'/; }\" cuda=$cuda"
  status "driver ok"
}

in_store() { docker image inspect "$1" >/dev/null 2>&1; }

registry_pull() { # registry_pull IMAGE [CLOUD]: one pull within PULL_LIMIT, logged in as the instance
  local image=$1 cloud=${2:-} registry=${1%%/*} config user rc=0
  config=$(mktemp -d) # a throwaway login: no registry credential stays on the disk
  case "$cloud:$registry" in
    aws:*.dkr.ecr.*.amazonaws.com) user=AWS ;;
    gcp:*-docker.pkg.dev) user=oauth2accesstoken ;;
    *) user="" ;;
  esac
  if [ -n "$user" ]; then
    python3 "$HELPER" registry-password "$cloud" "$registry" \
      | docker --config "$config" login --username "$user" --password-stdin "$registry" >/dev/null || rc=$?
  fi
  [ "$rc" -ne 0 ] || timeout "$PULL_LIMIT" docker --config "$config" pull --quiet "$image" >/dev/null || rc=$?
  rm -rf "$config"
  return "$rc"
}

pull() { # pull IMAGE [CLOUD]: one try when a copy is on disk (a registry outage keeps it), else retry
  local image=$1 wait=$NET_WAIT
  status "pulling $image"
  if in_store "$image"; then wait=0; fi
  retry "$wait" registry_pull "$@" && return 0
  in_store "$image" || fail "cannot pull $image within ${NET_WAIT} s, and no copy is on disk"
  say "could not pull $image; starting the copy already on disk"
  return 2
}

serve() { # serve IMAGE PHASE: make IMAGE the one sdxl-server runs, then drop what it superseded
  docker tag "$1" "$SERVER_IMAGE"
  phase "$2"
  docker image ls sdxl-endpoint-server --format '{{.Repository}}:{{.Tag}}' \
    | grep -vxF -e "$1" -e "$SERVER_IMAGE" | xargs -r docker rmi >/dev/null 2>&1 || true
  docker image prune --force >/dev/null 2>&1 || true
  status "server image ready"
}

keep_previous() { # keep_previous WHY: the server image of an earlier boot, when this one cannot be made
  in_store "$SERVER_IMAGE" || fail "$1, and no earlier server image is on the data disk"
  say "$1; starting the previous server image from the data disk"
  phase "image-kept image=$SERVER_IMAGE"
}

pull_server() {
  local rc=0
  pull "$@" || rc=$?
  if [ "$rc" -eq 0 ]; then serve "$1" "image-pulled image=$1"; else phase "image-pulled image=$1 (local copy)"; fi
}

build() {
  local cloud=$1 region=$2 bucket=$3 key=$4 sha=$5 tag=sdxl-endpoint-server:$5 bundle dir got
  if in_store "$tag"; then
    serve "$tag" "image-built image=$tag (built on an earlier boot)"
    return 0
  fi
  bundle="$DATA/bundles/$sha.tar"
  mkdir -p "$DATA/bundles"
  status "fetching the server source bundle $sha"
  if ! retry "$NET_WAIT" python3 "$HELPER" fetch "$cloud" "$region" "$bucket" "$key" "$bundle.part"; then
    keep_previous "cannot fetch the source bundle $bucket/$key"
    return 0
  fi
  got=$(sha256sum "$bundle.part" | cut -d' ' -f1)
  if [ "$got" != "$sha" ]; then
    rm -f "$bundle.part"
    fail "the source bundle's sha256 is $got, not $sha: refusing to build it"
  fi
  mv "$bundle.part" "$bundle"
  dir=$(mktemp -d "$DATA/bundles/build.XXXXXX")
  tar -xf "$bundle" -C "$dir" --no-same-owner
  status "building the server image (first boot: torch and its CUDA libraries, several GB)"
  if timeout "$BUILD_LIMIT" docker build --quiet -f "$dir/image/Dockerfile" -t "$tag" "$dir" >/dev/null; then
    rm -rf "$dir" "$bundle"
    serve "$tag" "image-built image=$tag"
    # BuildKit keeps every step's output (torch and its CUDA libraries: several GB) on the data disk. Without
    # --all it removes only cache no image holds; the served image's layers stay, the superseded build's go
    # (serve removed that image first). After a failed build the cache stays: the next boot resumes from it.
    docker builder prune --force >/dev/null 2>&1 || true
  else
    rm -rf "$dir"
    keep_previous "docker build failed or ran past ${BUILD_LIMIT} s"
  fi
}

model_downloaded() {
  local model=$1 dir
  dir="$CACHE/hub/models--${model//\//--}"
  compgen -G "$dir/snapshots/*/model_index.json" >/dev/null \
    && [ -z "$(find "$dir/blobs" -name '*.incomplete' -print -quit 2>/dev/null)" ]
}

hub_model() { # hub_model MODEL: a Hub id, not a built-in model or a local folder
  case "$1" in */*) [ ! -d "$1" ] ;; *) false ;; esac
}

model_phase() { # once per boot, whichever step sees the model on disk first
  mkdir -p "$RUN"
  if mkdir "$RUN/model-downloaded" 2>/dev/null; then phase "model-downloaded model=$1"; fi
}

model_download() { # beside the image build or pull: the server would only start downloading once it runs
  local cloud=$1 scope=$2 model=$3
  shift 3
  if ! hub_model "$model" || model_downloaded "$model"; then return 0; fi
  say "fetching $model into the Hub cache while the server image is made"
  if retry "$NET_WAIT" timeout "$MODEL_LIMIT" python3 "$HELPER" model "$cloud" "$scope" "$model" \
    "$MODEL_REVISION" "$MODEL_VARIANT" "$CACHE" "$CACHE_UID" "$@"; then
    model_phase "$model"
  else # not fatal: the server downloads whatever is missing
    say "could not fetch $model ahead of the server; the server downloads what is missing"
  fi
}

watch_ready() {
  local model=$1 token code downloaded=no
  hub_model "$model" || downloaded=n/a # tiny / random-sdxl or a local folder: nothing to download
  status "starting the server (first boot: downloading $model)"
  while true; do
    if [ "$downloaded" = no ] && model_downloaded "$model"; then
      model_phase "$model"
      status "model on disk; loading and warming up"
      downloaded=yes
    fi
    # Read each time: the server's start writes the file, and a rotation rewrites it.
    token=$(sed -n 's/^SDXL_API_TOKEN=//p' "$ENV_FILE" 2>/dev/null || true)
    # The token goes through stdin, never onto a command line that `ps` shows.
    code=$(printf 'header = "Authorization: Bearer %s"\n' "$token" \
      | curl -s -o /dev/null -w '%{http_code}' --max-time 5 --config - "$SERVER/ready" || true)
    if [ "$code" = 200 ]; then
      [ "$downloaded" != no ] || model_phase "$model"
      phase "server-ready"
      status "ready"
      return 0
    fi
    sleep "$POLL"
  done
}

case "$STEP" in
  data-disk) shift && data_disk "$@" ;;
  docker-setup) docker_setup ;;
  gpu-check) gpu_check "${2:?cuda version}" ;;
  build) build "${2:?cloud}" "${3:?region}" "${4:?bucket}" "${5:?key}" "${6:?sha256}" ;;
  pull-server) pull_server "${2:?image}" "${3:?cloud}" ;;
  pull) pull "${2:?image}" || [ $? -eq 2 ] ;;
  model-download) shift && model_download "${1:?cloud}" "${2:?scope}" "${3:?model}" "${@:4}" ;;
  watch-ready) watch_ready "${2:?model}" ;;
  phase) shift && phase "$@" ;;
  unit-failed) unit_failed "${2:?unit}" ;;
  *) echo "usage: sdxl-boot data-disk|docker-setup|gpu-check|build|pull-server|pull|model-download|watch-ready|phase|unit-failed ..." >&2 && exit 2 ;;
esac
