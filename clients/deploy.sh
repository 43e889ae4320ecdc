#!/usr/bin/env bash
# One hospital's SuperNode: checks everything it can before Flower starts, then execs flower-supernode
# with TLS (the study CA), SuperNode authentication (the hospital's own key), --trusted-entities (it runs
# only app versions signed by a key the hospital trusts: its own approval key) and the node config the
# fedhealth ClientApp reads. Nothing here sends data anywhere: the CSV is read by the ClientApp inside
# this hospital, and only masked model updates (SecAgg+) and aggregate test metrics leave.
#
# Usage:
#   clients/deploy.sh --name NAME --data FILE --schema FILE --key FILE --ca FILE --superlink HOST:PORT
#                              --policy FILE --audit-log FILE --ledger-dir DIR
#                              [--public-key FILE] [--audit-key FILE] [--trusted-entities FILE] [--app-log FILE]
#                              [--host H] [--port P] [--clientapp forkserver|subprocess]
#                              [-- extra flower-supernode args]
#
#   --name        the hospital's name in the study (node config hospital-name)
#   --data        its CSV or Parquet file (read-only is enough; node config data-file)
#   --schema      its own copy of the study schema (schema-file); the ClientApp refuses a study whose schema differs
#   --policy      its site policy TOML (policy-file): caps and rules the server cannot override
#   --ledger-dir  its privacy ledger folder (ledger-dir; needed when the study uses record-level DP)
#   --audit-log   its signed audit log, JSON lines (audit-log), signed with --audit-key
#   --key         its SuperNode private key, made at the hospital by `fedhealth certs hospital-keys` (supernode_auth)
#   --public-key  the registered public half (default: KEY.pub), checked to match --key
#   --audit-key   its audit-signing key (default: audit_signing next to --key; node config audit-key): must not be
#                 the SuperNode key. Its .pub (AUDIT_KEY.pub) verifies an existing audit log first
#   --trusted-entities  flower-supernode --trusted-entities (default: trusted-entities.yaml next to --key): the
#                 Ed25519 keys whose signature on an app version lets it run here; required, never empty
#   --app-log     where every app this SuperNode is sent is recorded with its hash and verdict, JSON lines
#                 (default: app-checks.jsonl next to --audit-log)
#   --ca          the study CA certificate (ca/ca.crt): the only certificate this SuperNode trusts
#   --superlink   the SuperLink as HOST:PORT; HOST must be one of the server certificate's names
#   --host/--port this SuperNode's local Runtime API, which its ClientApp processes use (default 127.0.0.1:9094;
#                 give each SuperNode on one machine its own port)
#   --clientapp   how each message's ClientApp process starts (default forkserver): `forkserver` runs the
#                 SuperNode with --isolation process beside fedhealth's SuperExec, which forks every message's
#                 flwr-clientapp from one process that has already imported flwr, torch and Opacus (still a new
#                 process per message); `subprocess` is Flower's default, a new interpreter per message
#   FLWR_HOME     the SuperNode's Flower home (its installed apps; writable): default flwr-home/ next to --ledger-dir
#
# Checks, in order, each stopping with a non-zero exit and the file named: every file is there (exit 2);
# `fedhealth validate` accepts the data file against the schema (exit 1, with validate's report);
# `fedhealth certs check-node` (key pair loads as Flower loads it, halves match); the CA, the site policy,
# the audit key (loads, is not the SuperNode key), the trusted-entities file (Ed25519 keys, not empty),
# an existing audit log (verifies with the audit public key) and the ledger/audit folders (writable).
# Every option can come from the environment instead (containers): FEDHEALTH_HOSPITAL, FEDHEALTH_DATA,
# FEDHEALTH_SCHEMA, FEDHEALTH_POLICY, FEDHEALTH_LEDGER_DIR, FEDHEALTH_AUDIT_LOG, FEDHEALTH_KEY,
# FEDHEALTH_PUBLIC_KEY, FEDHEALTH_AUDIT_KEY, FEDHEALTH_TRUSTED_ENTITIES, FEDHEALTH_APP_LOG, FEDHEALTH_CA,
# FEDHEALTH_SUPERLINK, FEDHEALTH_RUNTIME_HOST, FEDHEALTH_RUNTIME_PORT, FEDHEALTH_CLIENTAPP; and
# FEDHEALTH_SUPERNODE_POLL_INTERVAL, seconds between the SuperNode's pulls while idle (default 0.5; Flower's
# own loop waits 3 s; `flower` keeps Flower's).
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/../fedhealth/deployment/deploy_env.sh"

name=${FEDHEALTH_HOSPITAL:-}
data=${FEDHEALTH_DATA:-}
schema=${FEDHEALTH_SCHEMA:-}
policy=${FEDHEALTH_POLICY:-}
ledger=${FEDHEALTH_LEDGER_DIR:-}
audit=${FEDHEALTH_AUDIT_LOG:-}
key=${FEDHEALTH_KEY:-}
pub=${FEDHEALTH_PUBLIC_KEY:-}
audit_key=${FEDHEALTH_AUDIT_KEY:-}
trusted=${FEDHEALTH_TRUSTED_ENTITIES:-}
app_log=${FEDHEALTH_APP_LOG:-}
ca=${FEDHEALTH_CA:-}
superlink=${FEDHEALTH_SUPERLINK:-}
rhost=${FEDHEALTH_RUNTIME_HOST:-127.0.0.1}
rport=${FEDHEALTH_RUNTIME_PORT:-9094}
clientapp=${FEDHEALTH_CLIENTAPP:-forkserver}
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --name) name=${2?"$1 needs a value"}; shift 2 ;;
    --data) data=${2?"$1 needs a value"}; shift 2 ;;
    --schema) schema=${2?"$1 needs a value"}; shift 2 ;;
    --policy) policy=${2?"$1 needs a value"}; shift 2 ;;
    --ledger-dir) ledger=${2?"$1 needs a value"}; shift 2 ;;
    --audit-log) audit=${2?"$1 needs a value"}; shift 2 ;;
    --key) key=${2?"$1 needs a value"}; shift 2 ;;
    --public-key) pub=${2?"$1 needs a value"}; shift 2 ;;
    --audit-key) audit_key=${2?"$1 needs a value"}; shift 2 ;;
    --trusted-entities) trusted=${2?"$1 needs a value"}; shift 2 ;;
    --app-log) app_log=${2?"$1 needs a value"}; shift 2 ;;
    --ca) ca=${2?"$1 needs a value"}; shift 2 ;;
    --superlink) superlink=${2?"$1 needs a value"}; shift 2 ;;
    --host) rhost=${2?"$1 needs a value"}; shift 2 ;;
    --port) rport=${2?"$1 needs a value"}; shift 2 ;;
    --clientapp) clientapp=${2?"$1 needs a value"}; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) usage; exit 0 ;;
    *) die 2 "unknown argument '$1' (see --help)" ;;
  esac
done
pub=${pub:-${key:+$key.pub}}
audit_key=${audit_key:-${key:+$(dirname -- "$key")/audit_signing}}
trusted=${trusted:-${key:+$(dirname -- "$key")/trusted-entities.yaml}}
app_log=${app_log:-${audit:+$(dirname -- "$audit")/app-checks.jsonl}}

# 1. Everything named and present. Paths are made absolute: the ClientApp runs in another process.
missing=()
for pair in "name:--name (FEDHEALTH_HOSPITAL)" "data:--data (FEDHEALTH_DATA)" "schema:--schema (FEDHEALTH_SCHEMA)" \
            "policy:--policy (FEDHEALTH_POLICY)" "ledger:--ledger-dir (FEDHEALTH_LEDGER_DIR)" \
            "audit:--audit-log (FEDHEALTH_AUDIT_LOG)" "key:--key (FEDHEALTH_KEY)" "ca:--ca (FEDHEALTH_CA)" \
            "superlink:--superlink (FEDHEALTH_SUPERLINK)"; do
  var=${pair%%:*}
  [ -n "${!var}" ] || missing+=("${pair#*:}")
done
[ ${#missing[@]} -eq 0 ] || die 2 "missing: ${missing[*]}"
case "$clientapp" in
  forkserver) isolation=process ;;
  subprocess) isolation=subprocess ;;
  *) die 2 "--clientapp '$clientapp': give forkserver or subprocess (FEDHEALTH_CLIENTAPP)" ;;
esac
for arg in ${extra[@]+"${extra[@]}"}; do
  case "$arg" in
    --insecure) die 2 "--insecure is refused: a hospital connects only over TLS, trusting only the study CA ($ca)" ;;
    --root-certificates|--auth-supernode-private-key|--node-config|--trusted-entities|--isolation|--isolation=*)
      die 2 "$arg is set by this script; use its options (--clientapp for the isolation)" ;;
  esac
done
check_file() {  # $1 path, $2 what it is, $3 the option naming it
  [ -e "$1" ] || die 2 "$1: $2 not found (no such file; $3)"
  [ -f "$1" ] || die 2 "$1: $2 is not a regular file ($3)"
  [ -r "$1" ] || die 2 "$1: $2 cannot be read by this user (uid $(id -u); $3)"
}
check_file "$data" "data file" --data
check_file "$schema" "study schema" --schema
check_file "$policy" "site policy" --policy
check_file "$key" "SuperNode private key" --key
check_file "$pub" "SuperNode public key" --public-key
check_file "$ca" "study CA certificate" --ca
check_file "$audit_key" "audit signing key (fedhealth certs hospital-keys makes audit_signing)" --audit-key
check_file "$audit_key.pub" "audit public key" --audit-key
check_file "$trusted" "trusted-entities file (fedhealth certs hospital-keys makes trusted-entities.yaml)" \
  --trusted-entities
abs() { realpath -m -- "$1"; }
data=$(abs "$data") schema=$(abs "$schema") policy=$(abs "$policy") ledger=$(abs "$ledger")
audit=$(abs "$audit") key=$(abs "$key") pub=$(abs "$pub") ca=$(abs "$ca") audit_key=$(abs "$audit_key")
trusted=$(abs "$trusted") app_log=$(abs "$app_log")
for value in "$name" "$data" "$schema" "$policy" "$ledger" "$audit" "$key" "$audit_key"; do
  case "$value" in *"'"*|*$'\n'*) die 2 "$value: a quote or line break cannot travel in Flower's --node-config" ;; esac
done

# 2. The data file against the study schema: the report lists counts only, never a patient's value.
if ! fedhealth validate --schema "$schema" --data "$data"; then
  die 1 "$data: not usable for this study (see fedhealth validate's report above); SuperNode not started"
fi
# 3. The key pair exactly as flower-supernode and `flwr supernode register` load it.
fedhealth certs check-node "$key" "$pub" || die 1 "$key: SuperNode key pair refused; SuperNode not started"
# 4. CA, site policy, audit key, trusted entities, an existing audit log and the folders the ClientApp writes.
"$PYTHON" -m fedhealth.cli deploy preflight --ca "$ca" --policy "$policy" --audit-log "$audit" \
  --audit-key "$audit_key" --node-key "$key" --trusted-entities "$trusted" \
  --ledger-dir "$ledger" || die 1 "hospital $name: pre-flight checks failed (above); SuperNode not started"

# The SuperNode's own Flower home (the apps it installs): FLWR_HOME if set, else flwr-home/ next to the ledger
# folder, never the default ~/.flwr another party on this host would share.
export FLWR_HOME=${FLWR_HOME:-$(dirname -- "$ledger")/flwr-home}
node_config="hospital-name='$name' data-file='$data' schema-file='$schema' policy-file='$policy'"
node_config+=" ledger-dir='$ledger' audit-log='$audit' audit-key='$audit_key'"
echo "hospital $name: starting its SuperNode for $superlink (Runtime API $rhost:$rport; runs only apps signed by" \
  "a key in $trusted; each app it is sent is recorded in $app_log; FLWR_HOME: $FLWR_HOME; ClientApps: $clientapp)"
# flower-supernode itself, through the hospital's own launcher (`fedhealth deploy supernode`, in
# fedhealth/deployment/supernode.py), which records every app Flower is asked to run and Flower's verdict on it;
# the verdict and the refusal are Flower's.
export FEDHEALTH_APP_LOG="$app_log" FEDHEALTH_HOSPITAL="$name" FEDHEALTH_CLIENTAPP="$clientapp"
exec "$PYTHON" -m fedhealth.cli deploy supernode \
  --isolation "$isolation" \
  --superlink "$superlink" \
  --root-certificates "$ca" \
  --auth-supernode-private-key "$key" \
  --trusted-entities "$trusted" \
  --host "$rhost" --port "$rport" \
  --node-config "$node_config" \
  ${extra[@]+"${extra[@]}"}
