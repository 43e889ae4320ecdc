# Sourced by server/deploy.sh and clients/deploy.sh (after `set -euo pipefail`): the project's virtualenv
# on PATH when there is one, Flower's telemetry and run-time installs off, and the two helpers both use.
# It sits in the package both scripts run (fedhealth/deployment), so the two containers carry it with the code.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
if [ -x "$ROOT/.venv/bin/flwr" ]; then PATH="$ROOT/.venv/bin:$PATH"; fi
PYTHON=$(command -v python3 || command -v python)
[ -x "$ROOT/.venv/bin/python" ] && PYTHON="$ROOT/.venv/bin/python"
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
# Flower's SuperExec looks for new work every second by default; a SecAgg+ round is five exchanges, each waiting
# for that poll on both sides. 0.2 s costs a few local HTTP requests a second.
export FLWR_SUPEREXEC_TASK_POLL_INTERVAL=${FLWR_SUPEREXEC_TASK_POLL_INTERVAL:-0.2}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

die() { local code=$1; shift; printf 'error: %s\n' "$@" >&2; exit "$code"; }
# The calling script's header comment, up to its `set -euo` line.
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[1]}" | sed '$d; s/^# \{0,1\}//'; }
