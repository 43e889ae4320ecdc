#!/usr/bin/env bash
# Entrypoint of the server image (server/Dockerfile). Commands:
#   start [server/deploy.sh start options]     the SuperLink on 127.0.0.1:9092 (default command): its one port also
#                                              serves the Control API, so it is never on the hospitals' network
#   gateway [server/deploy.sh gateway options] the hospitals' address, 0.0.0.0:9093: the Fleet API only, forwarded
#                                              to the SuperLink (same network namespace: compose network_mode)
#   registry [--dir DIR]                       the approved-app registry the SuperLink fetches apps from
#                                              (default /var/lib/fedhealth/registry, 127.0.0.1:9097)
#   register [PUBLIC_KEY...]                   register the hospitals' public keys (default: every
#                                              $FEDHEALTH_PKI/hospitals/*/supernode_auth.pub mounted)
#   run [OUT]                                  submit the study: flwr run $FEDHEALTH_APP fedhealth-deployment
#                                              ($FEDHEALTH_APP: an approved version, @fedhealth/fedhealth==x.y.z,
#                                              from the registry; "." submits the unsigned local app, which
#                                              every hospital's SuperNode refuses), run directory OUT
#                                              (default /var/lib/fedhealth/runs/<time>); waits for the end and
#                                              exits 1 unless the run directory says "completed"
#   run --resume OUT                           continue the study in OUT from its last completed round (after a
#                                              SuperLink restart, say): the same study, the hospitals' ledgers
#                                              charge no round twice
#   describe [OUT]                             describe the study's cohort instead of training (Table 1, and
#                                              Kaplan-Meier for a time-to-event study): one SecAgg+ round of the
#                                              hospitals' statistics, noised for $FEDHEALTH_EPSILON at each
#                                              hospital and charged to its ledger (unset: exact, which every
#                                              deployed hospital declines); table1.csv/.html in OUT
#   status OUT                                 where the run in OUT stands (fedhealth status)
#   flwr ARGS...                               any other flwr command (flwr list, flwr log RUN_ID, flwr stop ...)
# The flwr CLI inside the container uses configs/flower/config.toml's [superlink.fedhealth-deployment]
# (127.0.0.1:9092, CA at /etc/fedhealth/pki/ca/ca.crt), copied into $FLWR_HOME on first use.
# Outside a container it runs the same way from a checkout (set FEDHEALTH_PKI and friends).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
: "${FEDHEALTH_PKI:=/etc/fedhealth/pki}"
: "${FEDHEALTH_HOST:=127.0.0.1}"
: "${FEDHEALTH_PORT:=9092}"
: "${FEDHEALTH_GATEWAY_HOST:=0.0.0.0}"
: "${FEDHEALTH_GATEWAY_PORT:=9093}"
: "${FEDHEALTH_SUPERLINK_LOCAL:=127.0.0.1:$FEDHEALTH_PORT}"
: "${FEDHEALTH_REGISTRY:=/var/lib/fedhealth/registry}"
: "${FEDHEALTH_APP_REGISTRY:=http://127.0.0.1:9097}"
: "${FEDHEALTH_APP:=@fedhealth/fedhealth==0.1.0}"
: "${FEDHEALTH_DATABASE:=/var/lib/fedhealth/state/state.db}"
: "${FEDHEALTH_STUDY:=configs/deployment/heart-disease.toml}"
: "${FEDHEALTH_CONNECTION:=fedhealth-deployment}"
: "${FLWR_HOME:=/var/lib/fedhealth/flwr-home}"
export FEDHEALTH_PKI FEDHEALTH_HOST FEDHEALTH_PORT FEDHEALTH_DATABASE FEDHEALTH_CONNECTION FLWR_HOME \
  FEDHEALTH_GATEWAY_HOST FEDHEALTH_GATEWAY_PORT FEDHEALTH_SUPERLINK_LOCAL FEDHEALTH_APP_REGISTRY
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
if [ -x "$HERE/.venv/bin/flwr" ]; then PATH="$HERE/.venv/bin:$PATH"; fi

flwr_config() {  # the CLI's connections, once: the committed file, its deployment connection pointed at this
  # SuperLink's loopback address ($FEDHEALTH_SUPERLINK_LOCAL) and the mounted study CA
  mkdir -p "$FLWR_HOME"
  if [ ! -f "$FLWR_HOME/config.toml" ]; then
    cp "$HERE/configs/flower/config.toml" "$FLWR_HOME/config.toml"
    bash "$HERE/server/deploy.sh" connect --address "$FEDHEALTH_SUPERLINK_LOCAL" --ca "$FEDHEALTH_PKI/ca/ca.crt" \
      --name "$FEDHEALTH_CONNECTION" >/dev/null
  fi
}

submit() {  # submit(OUT, EXTRA_RUN_CONFIG, WHAT_FAILED): flwr run the study into OUT, exit 1 unless it completed
  cd "$HERE"
  flwr run "$FEDHEALTH_APP" "$FEDHEALTH_CONNECTION" --stream \
    --run-config "config='$FEDHEALTH_STUDY' out='$1' references=false$2" || true
  # flwr run exits 0 even when the ServerApp fails: the run directory is the truth.
  if ! fedhealth status "$1"; then
    echo "error: $3" >&2
    exit 1
  fi
}

command=${1:-start}
[ $# -gt 0 ] && shift
case "$command" in
  start) exec bash "$HERE/server/deploy.sh" start "$@" ;;
  gateway) exec bash "$HERE/server/deploy.sh" gateway "$@" ;;
  registry) exec bash "$HERE/server/deploy.sh" registry --dir "$FEDHEALTH_REGISTRY" "$@" ;;
  register)
    flwr_config
    if [ $# -gt 0 ]; then exec bash "$HERE/server/deploy.sh" register "$@"; fi
    exec bash "$HERE/server/deploy.sh" register --pki "$FEDHEALTH_PKI" ;;
  describe)
    flwr_config
    out=${1:-/var/lib/fedhealth/runs/describe-$(date +%Y%m%d-%H%M%S)}
    noise=""
    if [ -n "${FEDHEALTH_EPSILON:-}" ]; then noise=" epsilon=$FEDHEALTH_EPSILON"; fi
    submit "$out" " describe=true$noise" "the description did not complete; see the log above and $out"
    echo "Table 1: $out/table1.csv, $out/table1.html" ;;
  run)
    flwr_config
    resume=""
    if [ "${1:-}" = "--resume" ]; then
      shift
      if [ $# -eq 0 ]; then echo "error: run --resume needs the run directory to continue" >&2; exit 2; fi
      resume=" resume=true"
    fi
    out=${1:-/var/lib/fedhealth/runs/$(date +%Y%m%d-%H%M%S)}
    submit "$out" "$resume" "the run did not complete; see the log above and $out (continue it: run --resume $out)"
    echo "run directory: $out" ;;
  status) exec fedhealth status "$@" ;;
  flwr) flwr_config; exec flwr "$@" ;;
  -h|--help|help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' ;;
  *) echo "error: unknown command '$command' (start, gateway, registry, register, run, describe, status, flwr)" >&2
     exit 2 ;;
esac
