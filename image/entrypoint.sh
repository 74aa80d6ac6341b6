#!/bin/sh
# Container entrypoint: check that the model cache volume is usable, then hand PID 1 to the server
# (flags pass through, e.g. `docker run IMAGE --compile`; settings also come from SDXL_* variables).
set -eu

cache="${HF_HOME:-/models}"
if ! mkdir -p "$cache" 2>/dev/null || [ ! -w "$cache" ]; then
  echo "entrypoint: the model cache $cache is not writable by uid $(id -u)." >&2
  echo "entrypoint: on the host, run: chown -R $(id -u):$(id -g) <the directory mounted at $cache>" >&2
  exit 78 # EX_CONFIG: restarting will not help until the mount is fixed
fi

# In a RunPod pod (RunPod sets RUNPOD_POD_ID and a pod-scoped RUNPOD_API_KEY in every pod), a sidecar stops the
# pod after SDXL_IDLE_STOP_MINUTES without a generation request: image/pod_idle_stop.py. Elsewhere nothing starts.
if [ -n "${RUNPOD_POD_ID:-}" ] && [ -n "${RUNPOD_API_KEY:-}" ] && [ -n "${SDXL_IDLE_STOP_MINUTES:-}" ]; then
  python -m image.pod_idle_stop --minutes "$SDXL_IDLE_STOP_MINUTES" &
fi
# The server never needs RunPod's key: it does not get it.
unset RUNPOD_API_KEY

exec python -m server "$@"
