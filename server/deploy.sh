#!/usr/bin/env bash
# The study's federation server: Flower's SuperLink with TLS, SuperNode authentication and a persistent
# state database, plus the two operator steps around it (the flwr CLI's connection, and registering
# each hospital's public key). A thin wrapper: every file is checked before Flower starts, because
# Flower's own errors come late and vague (a hospital sees an SSL handshake error, not "wrong file").
#
# Usage:
#   server/deploy.sh start   [--pki DIR | --ca F --cert F --key F] [--host H] [--port P]
#                                    [--server-name NAME]... [--database FILE] [--app-registry URL]
#                                    [--expose-control-api] [-- extra flower-superlink args]
#   server/deploy.sh gateway [--pki DIR | --ca F --cert F --key F] --host H --port P --superlink HOST:PORT
#                                    [--server-name NAME]...
#   server/deploy.sh registry --dir DIR [--host H] [--port P]
#   server/deploy.sh connect --address HOST:PORT (--pki DIR | --ca F) [--name CONNECTION]
#   server/deploy.sh register [--name CONNECTION] (--pki DIR [--hospital NAME]... | PUBLIC_KEY.pub... [--hospital NAME]...)
#   server/deploy.sh revoke  [--name CONNECTION] --pki DIR --hospital NAME
#
# start     checks the TLS files (`fedhealth certs check`, with each --server-name the SuperNodes will dial),
#           then execs `flower-superlink` with --ssl-ca-certfile/--ssl-certfile/--ssl-keyfile,
#           --enable-supernode-auth and --database. Flower 1.41 serves the Fleet API (SuperNodes), the
#           Control API (`flwr run`, `flwr supernode register`; no authentication of its own) and the Runtime
#           API (its ServerApp processes) on ONE HTTPS port, so the SuperLink binds only a loopback --host
#           (default 127.0.0.1:9092): hospitals reach the Fleet API through `gateway`. A non-loopback --host is
#           refused unless --expose-control-api (only on a network that no hospital can reach).
#           --app-registry URL: where the SuperLink fetches `@publisher/app==x.y.z` apps and their approval
#           signatures (FLWR_SUPERGRID_API_URL; `registry` below serves one offline).
# gateway   the address hospitals dial (default 127.0.0.1:9093, for hospitals on this host; --host 0.0.0.0 or the
#           interface hospitals reach, on a real server): forwards the Fleet API only to --superlink (the
#           SuperLink's loopback address), answers 403 to anything else (`fedhealth deploy gateway`,
#           fedhealth/deployment/gateway.py).
# registry  serves the folder of published apps and signature records (fedhealth app publish / add-signature)
#           as Flower's SuperLink fetches Hub apps (default 127.0.0.1:9097).
# connect   writes [superlink.CONNECTION] (default fedhealth-deployment) with the address and the CA's
#           absolute path into $FLWR_HOME/config.toml (Flower accepts only an absolute root-certificates
#           path, so the committed configs/flower/config.toml cannot carry it).
# register  `flwr supernode register <key.pub> CONNECTION --name HOSPITAL` for each hospital's public key; the
#           name is the key's PKI/hospitals/HOSPITAL/ folder (or --hospital, one per key given), and the study's
#           ServerApp sends the model only to nodes registered under one of its hospitals. A key that is already
#           registered is reported and skipped. The node id Flower assigned is written next to each key
#           (node-id), for `revoke`. Needs the SuperLink running and `connect` done.
# revoke    `flwr supernode unregister` the node registered for hospital NAME (its PKI/hospitals/NAME/node-id),
#           then move PKI/hospitals/NAME/ to PKI/revoked/NAME-<UTC time>/ so `register --pki` does not bring the
#           key back. The SuperLink refuses that key from then on. Needs the SuperLink running.
#
# Defaults come from the environment (handy in containers): FEDHEALTH_PKI, FEDHEALTH_HOST (127.0.0.1),
# FEDHEALTH_PORT (9092), FEDHEALTH_DATABASE (./superlink-state/state.db), FEDHEALTH_SERVER_NAMES
# (space separated), FEDHEALTH_CONNECTION (fedhealth-deployment), FEDHEALTH_APP_REGISTRY,
# FEDHEALTH_GATEWAY_HOST/FEDHEALTH_GATEWAY_PORT (127.0.0.1:9093; the container sets 0.0.0.0),
# FEDHEALTH_SUPERLINK_LOCAL (127.0.0.1:9092). The SuperLink's Flower home (FLWR_HOME: its installed apps) is
# its own: FLWR_HOME if set, else flwr-home/ next to --database, never the default ~/.flwr that the operator's
# flwr CLI or a SuperNode on the same host would share. Telemetry is off and run-time dependency installation
# is disabled for every Flower process started here. See docs/deployment.md.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/../fedhealth/deployment/deploy_env.sh"

command=${1:-}
[ $# -gt 0 ] && shift
case "$command" in
  -h|--help|help|"") usage; [ -n "$command" ]; exit $? ;;
  start|gateway|registry|connect|register|revoke) ;;
  *) die 2 "unknown command '$command'; use start, gateway, registry, connect, register or revoke (see --help)" ;;
esac

pki=${FEDHEALTH_PKI:-}
ca= cert= key=
case "$command" in
  gateway) host=${FEDHEALTH_GATEWAY_HOST:-127.0.0.1} port=${FEDHEALTH_GATEWAY_PORT:-9093} ;;
  registry) host=127.0.0.1 port=9097 ;;
  *) host=${FEDHEALTH_HOST:-127.0.0.1} port=${FEDHEALTH_PORT:-9092} ;;
esac
registry_url=${FEDHEALTH_APP_REGISTRY:-}
local_link=${FEDHEALTH_SUPERLINK_LOCAL:-127.0.0.1:${FEDHEALTH_PORT:-9092}}
expose_control=0
registry_dir=
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
    --app-registry) registry_url=${2?"$1 needs a value"}; shift 2 ;;
    --superlink) local_link=${2?"$1 needs a value"}; shift 2 ;;
    --dir) registry_dir=${2?"$1 needs a value"}; shift 2 ;;
    --expose-control-api) expose_control=1; shift ;;
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
  case "$host" in
    127.*|localhost|::1|"[::1]") ;;
    *) why="--host $host is refused: flwr 1.41 serves the Control API (flwr run, flwr supernode register; no"
       why+=" authentication of its own) on the same port as the Fleet API, so anyone reaching $host:$port could"
       why+=" submit code to every hospital. Bind 127.0.0.1 and let hospitals in through '$0 gateway'; or pass"
       why+=" --expose-control-api if $host is on a network no hospital can reach"
       [ "$expose_control" = 1 ] || die 2 "$why" ;;
  esac
  if [ -n "$registry_url" ]; then export FLWR_SUPERGRID_API_URL="$registry_url"; fi
  host_checks=(--host 127.0.0.1)
  for name in ${names[@]+"${names[@]}"}; do host_checks+=(--host "$name"); done
  # Exit 2 names a missing file, exit 1 says what is wrong with one (wrong CA, key of another cert, expired, ...)
  fedhealth certs check --ca "$ca" --cert "$cert" --key "$key" ${host_checks[@]+"${host_checks[@]}"}
  mkdir -p "$(dirname "$database")"
  export FLWR_HOME=${FLWR_HOME:-$(realpath -m -- "$(dirname "$database")/flwr-home")}
  echo "starting the SuperLink on https://$host:$port (state: $database, FLWR_HOME: $FLWR_HOME," \
    "apps from ${registry_url:-nowhere: only local FABs})"
  exec flower-superlink \
    --ssl-ca-certfile "$ca" --ssl-certfile "$cert" --ssl-keyfile "$key" \
    --enable-supernode-auth \
    --database "$database" \
    --host "$host" --port "$port" \
    --disable-runtime-dependency-installation \
    ${extra[@]+"${extra[@]}"}
  ;;
gateway)
  [ -n "$ca" ] && [ -n "$cert" ] && [ -n "$key" ] \
    || die 2 "gateway needs the TLS files: --pki DIR (from fedhealth certs init) or --ca, --cert and --key"
  host_checks=(--host "${local_link%:*}")
  for name in ${names[@]+"${names[@]}"}; do host_checks+=(--host "$name"); done
  fedhealth certs check --ca "$ca" --cert "$cert" --key "$key" "${host_checks[@]}"
  exec "$PYTHON" -m fedhealth.cli deploy gateway --listen "$host:$port" --superlink "$local_link" \
    --ca "$ca" --cert "$cert" --key "$key"
  ;;
registry)
  [ -n "$registry_dir" ] || die 2 "registry needs --dir DIR (the folder fedhealth app publish writes)"
  exec fedhealth app serve --dir "$registry_dir" --host "$host" --port "$port"
  ;;
connect)
  [ -n "$address" ] || die 2 "connect needs --address HOST:PORT (the SuperLink as the flwr CLI reaches it)"
  [ -n "$ca" ] || die 2 "connect needs the study CA: --pki DIR or --ca FILE"
  [ -f "$ca" ] || die 2 "$ca: CA certificate not found (no such file)"
  exec "$PYTHON" -m fedhealth.cli deploy connection --address "$address" --ca "$ca" --name "$connection"
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
  # Each key is registered under its hospital's name (flwr supernode register --name): the ServerApp sends the
  # model only to nodes registered under a hospital of its study. The name is --hospital (in order, one per
  # key given) or the key's folder, as `fedhealth certs add-hospital` files it: PKI/hospitals/NAME/.
  if [ ${#hospitals[@]} -gt 0 ] && [ ${#hospitals[@]} -ne ${#keys[@]} ]; then
    die 2 "register: ${#keys[@]} key(s) but ${#hospitals[@]} --hospital name(s); give one name per key or none"
  fi
  names=()
  for i in "${!keys[@]}"; do
    names+=("${hospitals[$i]:-$(basename -- "$(dirname -- "$(realpath -m -- "${keys[$i]}")")")}")
  done
  for pub in "${keys[@]}"; do
    [ -f "$pub" ] || die 2 "$pub: SuperNode public key not found (no such file)"
    # public keys only: a file holding a private key means a hospital's secret reached the operator
    ! grep -q "PRIVATE KEY" "$pub" || die 2 "$pub: holds a PRIVATE key; register only the .pub file the hospital sent (the hospital keeps its private key: fedhealth certs hospital-keys)"
  done
  # One `flwr` call per key, all at once (each is a second or two of imports), then report in order.
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  pids=()
  for i in "${!keys[@]}"; do
    (set +e; flwr supernode register "${keys[$i]}" "$connection" --name "${names[$i]}" >"$tmp/$i" 2>&1
     echo $? >"$tmp/$i.rc") &
    pids+=($!)
  done
  wait "${pids[@]}" || true  # each status is in its .rc file
  status=0
  for i in "${!keys[@]}"; do
    pub=${keys[$i]} out=$(cat "$tmp/$i")
    if [ "$(cat "$tmp/$i.rc")" = 0 ]; then
      printf '%s: %s as %s\n' "$pub" "$(grep -o 'SuperNode [0-9]* registered successfully' <<<"$out" \
        || echo registered)" "${names[$i]}"
      node_id=$(grep -o 'SuperNode [0-9]* registered' <<<"$out" | grep -o '[0-9]*' || true)
      if [ -n "$node_id" ]; then
        printf '%s\n' "$node_id" >"$(dirname -- "$pub")/node-id" \
          || printf 'warning: %s: could not record node id %s next to it (for revoke)\n' "$pub" "$node_id" >&2
      fi
    elif grep -q "Public key already in use" <<<"$out"; then
      printf '%s: already registered (under the name it was registered with first)\n' "$pub"
    else
      printf '%s\n' "$out" >&2
      printf 'error: %s: registration failed (is the SuperLink running, and did `%s connect` point %s at it?)\n' \
        "$pub" "$0" "$connection" >&2
      status=1
    fi
  done
  exit $status
  ;;
revoke)
  [ -n "$pki" ] && [ ${#hospitals[@]} -eq 1 ] || die 2 "revoke needs --pki DIR and one --hospital NAME"
  h=${hospitals[0]}
  filed="$pki/hospitals/$h"
  [ -d "$filed" ] || die 2 "$filed: no key filed for hospital $h (fedhealth certs add-hospital files it there)"
  [ -f "$filed/node-id" ] || die 2 "$filed/node-id: not found: this key was not registered by '$0 register' (or was registered before it recorded node ids); find the node with 'flwr supernode list $connection --format json' and run 'flwr supernode unregister NODE_ID $connection'"
  node_id=$(tr -dc '0-9' <"$filed/node-id")
  [ -n "$node_id" ] || die 2 "$filed/node-id: holds no node id"
  if ! out=$(flwr supernode unregister "$node_id" "$connection" 2>&1); then
    printf '%s\n' "$out" >&2
    die 1 "hospital $h: unregistering node $node_id failed (is the SuperLink running, and did \`$0 connect\` point $connection at it?); its key stays filed in $filed"
  fi
  mkdir -p "$pki/revoked"
  moved="$pki/revoked/$h-$(date -u +%Y%m%dT%H%M%SZ)"
  mv -- "$filed" "$moved"
  printf 'hospital %s: node %s unregistered; its key moved to %s (the SuperLink refuses it from now on)\n' \
    "$h" "$node_id" "$moved"
  ;;
esac
