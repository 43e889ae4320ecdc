#!/usr/bin/env bash
# Install fedhealth into ./.venv on a fresh Linux machine with Python 3.11.
#   bash scripts/setup.sh          the package and its runtime dependencies
#   bash scripts/setup.sh --test   the same plus what the test suite needs
# torch==2.13.0 is installed first, on its own: on our machines it is a CPU build on local disk, and
# installing it before anything else stops any later requirement from pulling a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
export FLWR_TELEMETRY_ENABLED=0

python=${PYTHON:-}
if [ -z "$python" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then python=$candidate; break; fi
  done
fi
[ -n "$python" ] || { echo "error: Python 3.11 not found (set PYTHON=/path/to/python3.11)" >&2; exit 2; }
"$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
  || { echo "error: $python is $("$python" --version 2>&1); fedhealth needs Python 3.11 or newer" >&2; exit 2; }

extras=""
[ "${1:-}" = "--test" ] && extras="[test]"

[ -x .venv/bin/python ] || "$python" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@" 2> >(grep -v "^WARNING: Location" >&2); }
pip install torch==2.13.0
pip install -e ".${extras}"
echo "fedhealth installed in .venv ($(.venv/bin/python -c 'import torch, flwr, opacus; print(f"torch {torch.__version__}, flwr {flwr.__version__}, opacus {opacus.__version__}")'))"

# The test suite opens the study report in a real headless browser (Debian's Chromium) and builds and runs
# the deployment images, compose.yaml included (when no docker engine answers: podman with runc and the
# dnsname plugin that lets compose services find each other by name, buildah where podman cannot start a
# container, debootstrap for a base image without a registry; podman-compose comes with the test extra):
# installed here when missing and this is a Debian machine we may administer; otherwise those tests are
# skipped and say why.
if [ -n "$extras" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  wanted=()
  command -v chromium >/dev/null 2>&1 || wanted+=(chromium)
  if ! { command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; }; then
    command -v podman >/dev/null 2>&1 || wanted+=(podman)
    command -v runc >/dev/null 2>&1 || wanted+=(runc)
    [ -e /usr/lib/cni/dnsname ] || wanted+=(golang-github-containernetworking-plugin-dnsname)
    command -v buildah >/dev/null 2>&1 || wanted+=(buildah)
    command -v debootstrap >/dev/null 2>&1 || wanted+=(debootstrap)
    command -v gpgv >/dev/null 2>&1 || wanted+=(gpgv)  # debootstrap checks the mirror's signature with it
    [ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || wanted+=(debian-archive-keyring)
  fi
  if [ ${#wanted[@]} -gt 0 ]; then
    echo "installing Debian's ${wanted[*]} for the report's browser test and the image tests"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${wanted[@]}"; } >/dev/null 2>&1 \
      || echo "warning: could not install ${wanted[*]}; the tests that need them will be skipped" >&2
  fi
fi
