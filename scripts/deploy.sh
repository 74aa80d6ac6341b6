#!/usr/bin/env bash
# One command from a fresh machine to a running endpoint (or a preview, or a teardown).
#   scripts/deploy.sh up|preview|destroy|wake [STACK]     (make up / make preview / make destroy / make wake)
#   scripts/deploy.sh pulumi STACK ARGS...                (make pulumi STACK=... ARGS="config set ...")
# Needs only Python 3.11+, curl and cloud credentials; installs the venv, the dependencies and
# the Pulumi CLI when missing. State stays on this machine (no Pulumi Cloud account) unless
# PULUMI_BACKEND_URL says otherwise, and secrets are encrypted with a passphrase.
set -euo pipefail

action=${1:-up}
stack=${2:-aws-g5}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

case "$action" in
  up|preview|destroy|wake|pulumi) ;;
  *) echo "usage: $0 up|preview|destroy|wake|pulumi [stack] [args...]" >&2; exit 2 ;;
esac
if [ ! -f "stacks/Pulumi.$stack.yaml" ] && [ "$action" = up ] && [ -z "${SDXL_ALLOW_NEW_STACK:-}" ]; then
  echo "No preset stacks/Pulumi.$stack.yaml. Presets:" >&2
  for preset in stacks/Pulumi.*.yaml; do
    preset=${preset#stacks/Pulumi.}
    echo "  ${preset%.yaml}" >&2
  done
  exit 2
fi

python=${PYTHON:-python3}
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "Python 3.11 or newer is required (found $("$python" --version 2>&1))." >&2; exit 1; }
command -v curl >/dev/null || { echo "curl is required." >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$python" -m venv .venv
fi
if [ ! -f .venv/.deploy-installed ] || [ requirements.txt -nt .venv/.deploy-installed ]; then
  echo "==> installing the program's dependencies"
  .venv/bin/python -m pip install -q -r requirements.txt
  touch .venv/.deploy-installed
fi

export PATH="$HOME/.pulumi/bin:$PATH"
if ! command -v pulumi >/dev/null; then
  echo "==> installing the Pulumi CLI (official installer, into ~/.pulumi)"
  curl -fsSL https://get.pulumi.com | sh
fi

export PULUMI_SKIP_UPDATE_CHECK=true
if [ -z "${PULUMI_BACKEND_URL:-}" ]; then
  mkdir -p .pulumi-state
  export PULUMI_BACKEND_URL="file://$root/.pulumi-state"
fi
if [ -z "${PULUMI_CONFIG_PASSPHRASE:-}" ] && [ -z "${PULUMI_CONFIG_PASSPHRASE_FILE:-}" ]; then
  passphrase_file="$root/.pulumi-state/passphrase"
  if [ ! -s "$passphrase_file" ]; then
    mkdir -p "$(dirname "$passphrase_file")"
    (umask 077 && "$python" -c 'import secrets; print(secrets.token_urlsafe(32))' >"$passphrase_file")
    echo "==> generated a secrets passphrase in $passphrase_file (back it up: it decrypts the stack's secrets)"
  fi
  export PULUMI_CONFIG_PASSPHRASE_FILE="$passphrase_file"
fi

if [ "$action" = wake ]; then
  pulumi stack select "$stack" >/dev/null  # waking never creates a stack
else
  pulumi stack select --create --secrets-provider passphrase "$stack" >/dev/null
fi

shift $(( $# > 2 ? 2 : $# ))
case "$action" in
  up)
    if [ -z "${SKIP_DOCTOR:-}" ]; then
      echo "==> preflight: python -m tools.doctor --stack $stack (SKIP_DOCTOR=1 skips it)"
      .venv/bin/python -m tools.doctor --stack "$stack"
    fi
    pulumi up "$@"
    echo
    echo "Endpoint: $(pulumi stack output endpoint)"
    echo "Token:    pulumi stack output apiToken --show-secrets"
    echo "Try it:   $(pulumi stack output curlExample)"
    echo "(run other pulumi commands as: make pulumi STACK=$stack ARGS=\"stack output --show-secrets\")"
    ;;
  preview) pulumi preview "$@" ;;
  destroy) pulumi destroy "$@" ;;
  # Any other Pulumi command, with this stack's state backend and passphrase.
  pulumi) pulumi "$@" ;;
  wake) .venv/bin/python -m tools.wake --stack "$stack" "$@" ;;
esac
