#!/usr/bin/env bash
# The three-hospital demo on one host (UCI Heart Disease: Cleveland, Hungary, VA Long Beach).
#
# Usage:
#   scripts/deploy_demo.sh [DIR]             native processes: PKI, a TLS SuperLink, the three keys registered,
#                                            three SuperNodes (each with its own data copy, schema, policy, ledger
#                                            and signed audit log), the study submitted with flwr run, then
#                                            everything stopped. DIR (default deploy-demo/) keeps it all.
#   scripts/deploy_demo.sh --compose [DIR]   lay out DIR for configs/deployment/compose.yaml (certificates that
#                                            name the `superlink` container, each hospital's folder) and print
#                                            the docker compose commands.
#
# The native route runs scripts/_deploy.py demo, which calls deploy_server.sh and deploy_hospital.sh exactly as
# docs/deployment.md shows; it prints one JSON line of results at the end and exits 1 unless the run completed.
# About 2.5 minutes on an idle 2-core machine (each Flower message starts a fresh Python process).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -x "$ROOT/.venv/bin/python" ]; then PATH="$ROOT/.venv/bin:$PATH"; fi
export FLWR_TELEMETRY_ENABLED=0

compose=0
if [ "${1:-}" = --compose ]; then compose=1; shift; fi
case "${1:-}" in -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;; esac
dir=$(realpath -m "${1:-deploy-demo}")
if [ -e "$dir" ] && [ -n "$(ls -A "$dir")" ]; then
  echo "error: $dir exists and is not empty; remove it or name another folder" >&2
  exit 2
fi

if [ "$compose" = 0 ]; then
  exec python "$ROOT/scripts/_deploy.py" demo --workdir "$dir"
fi

declare -A csv=([cleveland]=cleveland.csv [hungary]=hungary.csv [va-long-beach]=va_long_beach.csv)
fedhealth certs init --out "$dir/pki" --server-name superlink --server-name localhost --server-name 127.0.0.1
mkdir -p "$dir/server/state"
fedhealth app build --out "$dir/app.fab"
sha=$(python -c "import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],'rb').read()).hexdigest())" "$dir/app.fab")
fedhealth app publish "$dir/app.fab" --dir "$dir/server/state/registry"
for h in cleveland hungary va-long-beach; do
  site="$dir/hospitals/$h"
  mkdir -p "$site/state"
  install -m 0444 "$ROOT/configs/data/heart-disease/${csv[$h]}" "$site/data.csv"
  install -m 0444 "$ROOT/configs/data/heart-disease/schema.toml" "$site/schema.toml"
  install -m 0444 "$ROOT/configs/deployment/policy-$h.toml" "$site/policy.toml"
  # at the hospital: its own keys; only supernode_auth.pub and its approval of the app go to the operator
  fedhealth certs hospital-keys --out "$site/keys" --hospital "$h"
  fedhealth app approve "$dir/app.fab" --key "$site/keys/app_approval" --hospital "$h" --sha256 "$sha" \
    --out "$site/approval.json"
  fedhealth certs add-hospital "$site/keys/supernode_auth.pub" --pki "$dir/pki" --hospital "$h"
  fedhealth app add-signature "$site/approval.json" --dir "$dir/server/state/registry"
done
cat <<EOF

$dir is ready for configs/deployment/compose.yaml. From the repository root:

  export FEDHEALTH_DEMO=$dir FEDHEALTH_UID=$(id -u)
  docker compose -f configs/deployment/compose.yaml up -d --build superlink gateway registry
  docker compose -f configs/deployment/compose.yaml exec superlink /opt/fedhealth/server/entrypoint.sh register
  docker compose -f configs/deployment/compose.yaml up -d cleveland hungary va-long-beach
  docker compose -f configs/deployment/compose.yaml exec superlink /opt/fedhealth/server/entrypoint.sh run
  docker compose -f configs/deployment/compose.yaml down
EOF
