#!/usr/bin/env bash
# Host-side boot steps of the SDXL endpoint, run by the sdxl-*.service units on every boot.
#   sdxl-boot gpu-check            wait for the NVIDIA driver to see a GPU, or fail loudly
#   sdxl-boot prepare              create the cache folders on the persistent disk
#   sdxl-boot pull IMAGE [PHASE]   pull (or fall back to the local copy), record PHASE when given
#   sdxl-boot watch-ready MODEL    record "model downloaded" and "server ready"
# Phases go to $STATE/boot-phases.log, the serial console and the journal; $STATE/status says where
# the boot stands (cat it through SSM / IAP when something looks wrong).
set -euo pipefail

STATE=${SDXL_STATE_DIR:-/var/lib/sdxl-endpoint}
CACHE=${SDXL_CACHE_DIR:-/opt/sdxl-endpoint/models}
ENV_FILE=${SDXL_ENV_FILE:-/etc/sdxl-endpoint/server.env}
CONSOLE=${SDXL_CONSOLE:-/dev/console}
SERVER=${SDXL_SERVER:-http://127.0.0.1:8000}
GPU_WAIT=${SDXL_GPU_WAIT_SECONDS:-900}  # GCP's Deep Learning VM installs its driver on the first boot
POLL=${SDXL_POLL_SECONDS:-5}
CONTAINER_UID=10001                     # the image's non-root user

say() {
  local line
  line="$(date -u +%Y-%m-%dT%H:%M:%SZ) sdxl-boot: $*"
  echo "$line"
  { echo "$line" >>"$CONSOLE"; } 2>/dev/null || true
  logger -t sdxl-boot -- "$*" 2>/dev/null || true
}

status() {
  mkdir -p "$STATE"
  echo "$*" >"$STATE/status"
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

gpu_check() {
  local waited=0 gpus
  status "checking the NVIDIA driver"
  while true; do
    if gpus=$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>&1) && [ -n "$gpus" ]; then
      phase "driver-ok gpu=\"${gpus//$'\n'/; }\""
      status "driver ok"
      return 0
    fi
    if [ "$waited" -ge "$GPU_WAIT" ]; then
      status "FAILED: nvidia-smi sees no GPU after ${GPU_WAIT} s: ${gpus:-no output}"
      say "FAILED: nvidia-smi sees no GPU after ${GPU_WAIT} s. The server will not start."
      say "nvidia-smi said: ${gpus:-no output}"
      say "Check the instance type has an NVIDIA GPU and the image ships its driver (see README)."
      return 1
    fi
    sleep 10
    waited=$((waited + 10))
  done
}

prepare() {
  mkdir -p "$CACHE" "$STATE"
  # The container runs as uid 10001; the cache (Hub downloads and the torch.compile cache) is its own.
  chown "$CONTAINER_UID:$CONTAINER_UID" "$CACHE"
}

pull() {
  local image=$1 record=${2:-}
  status "pulling $image"
  if docker pull --quiet "$image" >/dev/null; then
    [ -z "$record" ] || phase "$record image=$image"
  elif docker image inspect "$image" >/dev/null 2>&1; then
    # A registry outage must not keep a stopped-and-restarted endpoint down: use the copy on disk.
    say "could not pull $image; starting the copy already on disk"
    [ -z "$record" ] || phase "$record image=$image (local copy)"
  else
    status "FAILED: cannot pull $image"
    say "FAILED: cannot pull $image and no local copy exists"
    return 1
  fi
}

model_downloaded() {
  local model=$1 dir
  dir="$CACHE/hub/models--${model//\//--}"
  compgen -G "$dir/snapshots/*/model_index.json" >/dev/null \
    && [ -z "$(find "$dir/blobs" -name '*.incomplete' -print -quit 2>/dev/null)" ]
}

watch_ready() {
  local model=$1 token code downloaded=no
  token=$(sed -n 's/^SDXL_API_TOKEN=//p' "$ENV_FILE" 2>/dev/null || true)
  case "$model" in
    */*) [ ! -d "$model" ] || downloaded=n/a ;;  # a Hub id, unless it names a local folder
    *) downloaded=n/a ;;                        # tiny / random-sdxl: nothing to download
  esac
  status "starting the server (first boot: downloading $model)"
  while true; do
    if [ "$downloaded" = no ] && model_downloaded "$model"; then
      phase "model-downloaded model=$model"
      status "model on disk; loading and warming up"
      downloaded=yes
    fi
    # The token goes through stdin, never onto a command line that `ps` shows.
    code=$(printf 'header = "Authorization: Bearer %s"\n' "$token" \
      | curl -s -o /dev/null -w '%{http_code}' --max-time 5 --config - "$SERVER/ready" || true)
    if [ "$code" = 200 ]; then
      [ "$downloaded" != no ] || phase "model-downloaded model=$model"
      phase "server-ready"
      status "ready"
      return 0
    fi
    sleep "$POLL"
  done
}

case "${1:-}" in
  gpu-check) gpu_check ;;
  prepare) prepare ;;
  pull) pull "${2:?image}" "${3:-}" ;;
  watch-ready) watch_ready "${2:?model}" ;;
  phase) shift; phase "$@" ;;
  *) echo "usage: sdxl-boot gpu-check|prepare|pull IMAGE [PHASE]|watch-ready MODEL|phase NAME" >&2; exit 2 ;;
esac
