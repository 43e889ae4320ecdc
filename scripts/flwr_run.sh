#!/usr/bin/env bash
# Run the study through Flower's own CLI (`flwr run . local-simulation`), the way a Flower user would,
# with the safety our users need and `flwr run` does not give on its own:
#   - no telemetry, no run-time dependency installation (it would try to pull a CUDA torch);
#   - Flower's configuration from configs/flower/config.toml (copied to $FLWR_HOME, default ./.flwr);
#   - success checked in the run directory (flwr run was seen to exit 0 when the ServerApp raised);
#   - the local SuperLink that `flwr run` leaves running in the background is stopped afterwards (only
#     processes started meanwhile with this FLWR_HOME: never another study's SuperLink or SuperExec).
# Usage: bash scripts/flwr_run.sh [extra flwr run args, e.g. --run-config "config='configs/smoke.toml'"]
set -euo pipefail
cd "$(dirname "$0")/.."
export FLWR_TELEMETRY_ENABLED=0
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
export RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0
export FLWR_HOME=${FLWR_HOME:-$PWD/.flwr}
export PATH="$PWD/.venv/bin:$PATH"
mkdir -p "$FLWR_HOME"
cp configs/flower/config.toml "$FLWR_HOME/config.toml"

out=${FEDHEALTH_OUT:-$PWD/runs/$(date +%Y%m%d-%H%M%S)-flwr}
before=$(pgrep -f "flower-superlink|flower-superexec" || true)
ours() {  # started by this script's `flwr run`: it runs with this FLWR_HOME (another user's SuperLink does not)
  tr '\0' '\n' < "/proc/$1/environ" 2>/dev/null | grep -qxF "FLWR_HOME=$FLWR_HOME"
}
stop_started() {
  local started=() pid
  for pid in $(pgrep -f "flower-superlink|flower-superexec" || true); do
    grep -qx "$pid" <<<"$before" || ! ours "$pid" || started+=("$pid")
  done
  [ ${#started[@]} -gt 0 ] || return 0
  kill "${started[@]}" 2>/dev/null || true
  for _ in $(seq 50); do  # up to 10 s for a clean shutdown, then force
    local alive=0
    for pid in "${started[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 1 ] || return 0
    sleep 0.2
  done
  kill -9 "${started[@]}" 2>/dev/null || true
}
trap stop_started EXIT

flwr run . local-simulation --stream --run-config "out='$out'" "$@"
status=$(.venv/bin/python -c "import json,sys; print(json.load(open(sys.argv[1]))['status'])" "$out/state.json" 2>/dev/null \
  || echo missing)
if [ "$status" != completed ]; then
  echo "error: the run did not complete (state: $status); see the log above and $out" >&2
  exit 1
fi
echo "run directory: $out"
