#!/usr/bin/env bash
# The study's federation server: Flower's SuperLink with TLS, SuperNode authentication and a persistent
# state database, plus the two operator steps around it (the flwr CLI's connection, and registering
# each hospital's public key). A thin wrapper: every file is checked before Flower starts, because
# Flower's own errors come late and vague (a hospital sees an SSL handshake error, not "wrong file").
#
# Usage:
#   scripts/deploy_server.sh start   [--pki DIR | --ca F --cert F --key F] [--host H] [--port P]
#                                    [--server-name NAME]... [--database FILE] [-- extra flower-superlink args]
#   scripts/deploy_server.sh connect --address HOST:PORT (--pki DIR | --ca F) [--name CONNECTION]
#   scripts/deploy_server.sh register [--name CONNECTION] (--pki DIR [--hospital NAME]... | PUBLIC_KEY...)
#
# start     checks the TLS files (`fedhealth certs check`, with each --server-name the SuperNodes will dial),
#           then execs `flower-superlink` with --ssl-ca-certfile/--ssl-certfile/--ssl-keyfile,
#           --enable-supernode-auth and --database. One HTTPS port serves the Fleet API (SuperNodes), the
#           Control API (`flwr run`, `flwr supernode register`) and the Runtime API (its ServerApp processes).
# connect   writes [superlink.CONNECTION] (default fedhealth-deployment) with the address and the CA's
#           absolute path into $FLWR_HOME/config.toml (Flower accepts only an absolute root-certificates
#           path, so the committed configs/flower/config.toml cannot carry it).
# register  `flwr supernode register <key.pub> CONNECTION` for each hospital's public key; a key that is
#           already registered is reported and skipped. Needs the SuperLink running and `connect` done.
#
# Defaults come from the environment (handy in containers): FEDHEALTH_PKI, FEDHEALTH_HOST (127.0.0.1),
# FEDHEALTH_PORT (9093), FEDHEALTH_DATABASE (./superlink-state/state.db), FEDHEALTH_SERVER_NAMES
# (space separated), FEDHEALTH_CONNECTION (fedhealth-deployment). Telemetry is off and run-time
# dependency installation is disabled for every Flower process started here. See docs/deployment.md.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/_deploy_env.sh"

command=${1:-}
[ $# -gt 0 ] && shift
case "$command" in
  -h|--help|help|"") usage; [ -n "$command" ]; exit $? ;;
  start|connect|register) ;;
  *) die 2 "unknown command '$command'; use start, connect or register (see --help)" ;;
esac

pki=${FEDHEALTH_PKI:-}
ca= cert= key=
host=${FEDHEALTH_HOST:-127.0.0.1}
port=${FEDHEALTH_PORT:-9093}
database=${FEDHEALTH_DATABASE:-$PWD/superlink-state/state.db}
read -r -a names <<<"${FEDHEALTH_SERVER_NAMES:-}"
connection=${FEDHEALTH_CONNECTION:-fedhealth-deployment}
address=
hospitals=()
keys=()
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --pki) pki=${2?"$1 needs a value"}; shift 2 ;;
    --ca) ca=${2?"$1 needs a value"}; shift 2 ;;
    --cert) cert=${2?"$1 needs a value"}; shift 2 ;;
    --key) key=${2?"$1 needs a value"}; shift 2 ;;
    --host) host=${2?"$1 needs a value"}; shift 2 ;;
    --port) port=${2?"$1 needs a value"}; shift 2 ;;
    --server-name) names+=("${2?"$1 needs a value"}"); shift 2 ;;
    --database) database=${2?"$1 needs a value"}; shift 2 ;;
    --address) address=${2?"$1 needs a value"}; shift 2 ;;
    --name) connection=${2?"$1 needs a value"}; shift 2 ;;
    --hospital) hospitals+=("${2?"$1 needs a value"}"); shift 2 ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) usage; exit 0 ;;
    -*) die 2 "unknown option '$1' for '$command' (see --help)" ;;
    *) keys+=("$1"); shift ;;
  esac
done
if [ -n "$pki" ]; then
  ca=${ca:-$pki/ca/ca.crt}
  cert=${cert:-$pki/server/server.crt}
  key=${key:-$pki/server/server.key}
fi

case "$command" in
start)
  [ -n "$ca" ] && [ -n "$cert" ] && [ -n "$key" ] \
    || die 2 "start needs the TLS files: --pki DIR (from fedhealth certs init) or --ca, --cert and --key"
  for arg in ${extra[@]+"${extra[@]}"}; do
    [ "$arg" != --insecure ] || die 2 "--insecure is refused: a study's SuperLink always uses TLS"
  done
  host_checks=()
  for name in ${names[@]+"${names[@]}"}; do host_checks+=(--host "$name"); done
  # Exit 2 names a missing file, exit 1 says what is wrong with one (wrong CA, key of another cert, expired, ...)
  fedhealth certs check --ca "$ca" --cert "$cert" --key "$key" ${host_checks[@]+"${host_checks[@]}"}
  mkdir -p "$(dirname "$database")"
  echo "starting the SuperLink on https://$host:$port (state: $database, FLWR_HOME: ${FLWR_HOME:-$HOME/.flwr})"
  exec flower-superlink \
    --ssl-ca-certfile "$ca" --ssl-certfile "$cert" --ssl-keyfile "$key" \
    --enable-supernode-auth \
    --database "$database" \
    --host "$host" --port "$port" \
    --disable-runtime-dependency-installation \
    ${extra[@]+"${extra[@]}"}
  ;;
connect)
  [ -n "$address" ] || die 2 "connect needs --address HOST:PORT (the SuperLink as the flwr CLI reaches it)"
  [ -n "$ca" ] || die 2 "connect needs the study CA: --pki DIR or --ca FILE"
  [ -f "$ca" ] || die 2 "$ca: CA certificate not found (no such file)"
  exec "$PYTHON" -m fedhealth.deploy connection --address "$address" --ca "$ca" --name "$connection"
  ;;
register)
  if [ ${#keys[@]} -eq 0 ]; then
    [ -n "$pki" ] || die 2 "register needs public key files, or --pki DIR to register its hospitals' keys"
    if [ ${#hospitals[@]} -eq 0 ]; then
      for dir in "$pki"/hospitals/*/; do [ -d "$dir" ] && hospitals+=("$(basename "$dir")"); done
    fi
    for h in ${hospitals[@]+"${hospitals[@]}"}; do keys+=("$pki/hospitals/$h/supernode_auth.pub"); done
  fi
  [ ${#keys[@]} -gt 0 ] || die 2 "no public keys to register"
  for pub in "${keys[@]}"; do
    [ -f "$pub" ] || die 2 "$pub: SuperNode public key not found (no such file)"
  done
  # One `flwr` call per key, all at once (each is a second or two of imports), then report in order.
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  pids=()
  for i in "${!keys[@]}"; do
    (set +e; flwr supernode register "${keys[$i]}" "$connection" >"$tmp/$i" 2>&1; echo $? >"$tmp/$i.rc") &
    pids+=($!)
  done
  wait "${pids[@]}" || true  # each status is in its .rc file
  status=0
  for i in "${!keys[@]}"; do
    pub=${keys[$i]} out=$(cat "$tmp/$i")
    if [ "$(cat "$tmp/$i.rc")" = 0 ]; then
      printf '%s: %s\n' "$pub" "$(grep -o 'SuperNode [0-9]* registered successfully' <<<"$out" || echo registered)"
    elif grep -q "Public key already in use" <<<"$out"; then
      printf '%s: already registered\n' "$pub"
    else
      printf '%s\n' "$out" >&2
      printf 'error: %s: registration failed (is the SuperLink running, and did `%s connect` point %s at it?)\n' \
        "$pub" "$0" "$connection" >&2
      status=1
    fi
  done
  exit $status
  ;;
esac
