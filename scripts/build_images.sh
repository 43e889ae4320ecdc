#!/usr/bin/env bash
# Builds the two deployment images from this checkout: fedhealth-server (server/Dockerfile: SuperLink, gateway,
# registry, the flwr CLI) and fedhealth-hospital (clients/Dockerfile: a hospital's SuperNode), with docker,
# podman or buildah, whichever is here (docker only when its engine answers).
#
# Usage: bash scripts/build_images.sh [--engine docker|podman|buildah] [--base IMAGE|debootstrap]
#                                     [--index-url URL] [--torch-index-url URL | --torch-wheels DIR]
#                                     [--debian-mirror URL] [--tag TAG]
#
#   --base         the base image (default python:3.11-slim when a registry answers, else `debootstrap`):
#                  `debootstrap` makes a minimal Debian bookworm root with python3 and its venv module
#                  (debootstrap --variant=minbase) and imports it as fedhealth-debian-base, once: a base
#                  already in the engine's store is reused
#   --index-url    where the Python packages come from (default https://pypi.org/simple; a hospital's mirror)
#   --torch-index-url  where torch's CPU build comes from (default PyTorch's CPU index when it answers)
#   --torch-wheels DIR  a folder holding torch-2.13.0*.whl, served as that index on 127.0.0.1 for the build
#                  (default when PyTorch's index does not answer: the folders in PIP_FIND_LINKS)
#   --tag          the images' tag (default latest)
# The CA bundle this host's pip trusts (PIP_CERT, or pip's `cert` setting) is handed to the build too
# (PIP_CERT_URL), for a mirror with its own CA or a TLS-inspecting proxy; nothing of it stays in the images.
# Prints, last, one JSON line: the engine, the base, each image's size in MB and build seconds.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
die() { echo "error: $*" >&2; exit 2; }
say() { echo "[$(date +%H:%M:%S)] $*" >&2; }

engine= base= index_url=https://pypi.org/simple torch_url= wheels= tag=latest
mirror=http://deb.debian.org/debian
while [ $# -gt 0 ]; do
  case "$1" in
    --engine) engine=${2?"$1 needs a value"}; shift 2 ;;
    --base) base=${2?"$1 needs a value"}; shift 2 ;;
    --index-url) index_url=${2?"$1 needs a value"}; shift 2 ;;
    --torch-index-url) torch_url=${2?"$1 needs a value"}; shift 2 ;;
    --torch-wheels) wheels=${2?"$1 needs a value"}; shift 2 ;;
    --debian-mirror) mirror=${2?"$1 needs a value"}; shift 2 ;;
    --tag) tag=${2?"$1 needs a value"}; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

answers() { command -v curl >/dev/null 2>&1 && curl -s -o /dev/null --max-time 5 "$1"; }

if [ -z "$engine" ]; then
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then engine=docker
  elif command -v podman >/dev/null 2>&1; then engine=podman
  elif command -v buildah >/dev/null 2>&1; then engine=buildah
  else die "none of docker (with a running engine), podman or buildah is installed; on Debian: apt-get install buildah debootstrap"
  fi
fi
case "$engine" in
  docker|podman|buildah) command -v "$engine" >/dev/null 2>&1 || die "--engine $engine: not installed" ;;
  *) die "--engine '$engine': give docker, podman or buildah" ;;
esac
if [ -z "$base" ]; then
  if answers https://registry-1.docker.io/v2/; then base=python:3.11-slim; else base=debootstrap; fi
fi

has_image() {
  case "$engine" in
    buildah) buildah inspect --type image "$1" >/dev/null 2>&1 ;;
    *) "$engine" image inspect "$1" >/dev/null 2>&1 ;;
  esac
}

if [ "$base" = debootstrap ]; then
  base=fedhealth-debian-base:bookworm
  if has_image "$base"; then
    say "base $base: already built, reused"
  else
    command -v debootstrap >/dev/null 2>&1 || die "no registry answers and debootstrap is not installed (apt-get install debootstrap), or give --base IMAGE"
    [ "$(id -u)" = 0 ] || die "debootstrap needs root"
    root=$(mktemp -d /tmp/fedhealth-debian-root.XXXXXX)
    trap 'rm -rf "$root" "$root.tar"' EXIT
    say "making a minimal Debian bookworm root with python3 (debootstrap, $mirror)"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root" "$mirror" \
      >"$root.log" 2>&1 || { tail -20 "$root.log" >&2; die "debootstrap failed (log: $root.log)"; }
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    case "$engine" in
      buildah)
        ctr=$(buildah from scratch)
        tar -C "$root" -cf "$root.tar" .
        buildah add --quiet "$ctr" "$root.tar" / >/dev/null
        buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
          --env LANG=C.UTF-8 --cmd /bin/bash "$ctr"
        buildah commit --quiet "$ctr" "$base" >/dev/null
        buildah rm "$ctr" >/dev/null ;;
      *)
        tar -C "$root" -c . | "$engine" import \
          --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
          --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' - "$base" >/dev/null ;;
    esac
    rm -rf "$root" "$root.log" "$root.tar"
    trap - EXIT
    say "base $base: imported"
  fi
fi

# torch's CPU build: PyTorch's index, or a local folder of wheels served as an index for the build only; and the
# CA bundle this host's pip trusts (PIP_CERT or pip's `cert` setting: a hospital mirror's own CA, or a proxy's),
# served beside it, so the build trusts what this host's pip trusts
server_pid=
network=()
ca_bundle=${PIP_CERT:-$(python3 -m pip config get global.cert 2>/dev/null || true)}
if [ -z "$torch_url" ] && [ -z "$wheels" ]; then
  if answers https://download.pytorch.org/whl/cpu/; then torch_url=https://download.pytorch.org/whl/cpu
  else
    for dir in ${PIP_FIND_LINKS:-}; do
      if compgen -G "$dir/torch-2.13.0*.whl" >/dev/null; then wheels=$dir; break; fi
    done
    [ -n "$wheels" ] || die "PyTorch's index does not answer and no torch-2.13.0 wheel was found: give --torch-wheels DIR or --torch-index-url URL"
  fi
fi
ca_url=
if [ -n "$wheels" ] || [ -n "$ca_bundle" ]; then
  served=$(mktemp -d /tmp/fedhealth-build-files.XXXXXX)
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  python3 -m http.server --bind 127.0.0.1 --directory "$served" "$port" >/dev/null 2>&1 &
  server_pid=$!
  trap 'kill "$server_pid" 2>/dev/null || true; rm -rf "$served"' EXIT
  network=(--network host)  # the build reaches these files on this host's loopback
  for _ in $(seq 50); do answers "http://127.0.0.1:$port/" && break; sleep 0.1; done
  if [ -n "$ca_bundle" ]; then
    [ -f "$ca_bundle" ] || die "$ca_bundle: pip's CA bundle (PIP_CERT or pip's cert setting) not found"
    ln -s "$(realpath "$ca_bundle")" "$served/ca.crt"
    ca_url=http://127.0.0.1:$port/ca.crt
    say "CA bundle: $ca_bundle, served to the build at $ca_url"
  fi
  if [ -n "$wheels" ]; then
    found=$(compgen -G "$wheels/torch-2.13.0*.whl" | head -1) || true
    [ -n "$found" ] || die "--torch-wheels $wheels: no torch-2.13.0*.whl in it"
    mkdir "$served/torch"
    ln -s "$(realpath "$found")" "$served/torch/$(basename "$found")"
    torch_url=http://127.0.0.1:$port/
    say "torch: $(basename "$found"), served to the build at $torch_url"
  fi
fi

build() {  # build(IMAGE, DOCKERFILE)
  local t0 t1
  t0=$(date +%s.%N)
  args=(-f "$2" -t "$1:$tag" --build-arg "BASE_IMAGE=$base" --build-arg "PIP_INDEX_URL=$index_url"
        --build-arg "TORCH_INDEX_URL=$torch_url" --build-arg "PIP_CERT_URL=$ca_url")
  case "$engine" in
    buildah) buildah bud --isolation chroot --layers --pull-never "${args[@]}" . >&2 ;;
    podman) podman build --layers --pull=never ${network[@]+"${network[@]}"} "${args[@]}" . >&2 ;;
    docker) docker build ${network[@]+"${network[@]}"} "${args[@]}" . >&2 ;;
  esac
  t1=$(date +%s.%N)
  python3 -c "print(round($t1 - $t0, 1))"
}
size_mb() {
  local bytes
  case "$engine" in
    buildah) bytes=$(buildah images --json "$1" | python3 -c 'import json, sys
number, unit = json.load(sys.stdin)[0]["size"].split()
print(round(float(number) * {"B": 1, "kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9}[unit]))') ;;
    *) bytes=$("$engine" image inspect --format '{{.Size}}' "$1") ;;
  esac
  python3 -c "print(round($bytes / 1e6))"
}

case "$base" in fedhealth-debian-base*) ;; *) [ "$engine" = buildah ] && buildah pull "$base" >&2 ;; esac
say "building fedhealth-server with $engine on $base"
server_s=$(build fedhealth-server server/Dockerfile)
say "building fedhealth-hospital with $engine on $base"
hospital_s=$(build fedhealth-hospital clients/Dockerfile)
echo "{\"engine\": \"$engine\", \"base\": \"$base\", \"torch_index\": \"$torch_url\"," \
  "\"images\": {\"fedhealth-server:$tag\": {\"mb\": $(size_mb "fedhealth-server:$tag"), \"build_s\": $server_s}," \
  "\"fedhealth-hospital:$tag\": {\"mb\": $(size_mb "fedhealth-hospital:$tag"), \"build_s\": $hospital_s}}}"
