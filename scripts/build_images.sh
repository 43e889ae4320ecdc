#!/usr/bin/env bash
# Builds the two deployment images from this checkout: fedhealth-server (server/Dockerfile: SuperLink, gateway,
# registry, the flwr CLI) and fedhealth-hospital (clients/Dockerfile: a hospital's SuperNode), with docker,
# podman or buildah, whichever is here (docker only when its engine answers).
#
# Usage: bash scripts/build_images.sh [--engine docker|podman|buildah] [--base IMAGE|debootstrap]
#                                     [--torch-index-url URL | --torch-wheels DIR]
#                                     [--debian-mirror URL] [--debian-keyring FILE] [--tag TAG]
#
#   --base         the base image (default python:3.11-slim when a registry answers, else `debootstrap`):
#                  `debootstrap` makes a minimal Debian bookworm root with python3 and its venv module
#                  (debootstrap --variant=minbase) and imports it as fedhealth-debian-base, once: a base
#                  already in the engine's store is reused
#   --torch-index-url  where torch's CPU build comes from (default PyTorch's CPU index when it answers)
#   --torch-wheels DIR  a folder holding torch-2.13.0+cpu*.whl (default when PyTorch's index does not answer:
#                  the folders in PIP_FIND_LINKS)
#   --debian-mirror  the Debian mirror debootstrap reads (default http://deb.debian.org/debian)
#   --debian-keyring the keyring the mirror's Release file must be signed with (default Debian's archive
#                  keyring): debootstrap is made to check it, so a plain-HTTP mirror cannot hand over a base
#   --tag          the images' tag (default latest)
# Every other package comes from wherever this host's pip is set to fetch from (PIP_INDEX_URL, pip.conf: PyPI,
# or a hospital's mirror, with its CA bundle and proxy): the script fetches them all into a wheelhouse first
# and the build installs from that alone, so the build reaches no network.
# Prints, last, one JSON line: the engine, the base, each image's size in MB and build seconds.
set -euo pipefail
shopt -s inherit_errexit  # a command substitution that fails fails the script too
cd "$(dirname "${BASH_SOURCE[0]}")/.."
trap 'exit 130' INT  # Ctrl-C and a cancelled job still run the EXIT clean-up below
trap 'exit 143' TERM
die() { echo "error: $*" >&2; exit 2; }
say() { echo "[$(date +%H:%M:%S)] $*" >&2; }

engine= base= torch_url= wheels= tag=latest
mirror=http://deb.debian.org/debian keyring=/usr/share/keyrings/debian-archive-keyring.gpg
while [ $# -gt 0 ]; do
  case "$1" in
    --engine) engine=${2?"$1 needs a value"}; shift 2 ;;
    --base) base=${2?"$1 needs a value"}; shift 2 ;;
    --torch-index-url) torch_url=${2?"$1 needs a value"}; shift 2 ;;
    --torch-wheels) wheels=${2?"$1 needs a value"}; shift 2 ;;
    --debian-mirror) mirror=${2?"$1 needs a value"}; shift 2 ;;
    --debian-keyring) keyring=${2?"$1 needs a value"}; shift 2 ;;
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
    [ -f "$keyring" ] || die "$keyring: no Debian archive keyring to check the mirror with (apt-get install debian-archive-keyring, or --debian-keyring FILE)"
    work=$(mktemp -d /tmp/fedhealth-debian-base.XXXXXX)  # root, log and tarball inside a folder only root can write
    root=$work/root
    trap 'rm -rf --one-file-system "$work"' EXIT
    say "making a minimal Debian bookworm root with python3 (debootstrap, $mirror, signatures checked)"
    debootstrap --variant=minbase --force-check-gpg --keyring="$keyring" \
      --include=python3,python3-venv,ca-certificates bookworm "$root" "$mirror" \
      >"$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log" >&2; die "debootstrap failed"; }
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    case "$engine" in
      buildah)
        ctr=$(buildah from scratch)
        tar -C "$root" -cf "$work/root.tar" .
        buildah add --quiet "$ctr" "$work/root.tar" / >/dev/null
        buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
          --env LANG=C.UTF-8 --cmd /bin/bash "$ctr"
        buildah commit --quiet "$ctr" "$base" >/dev/null
        buildah rm "$ctr" >/dev/null ;;
      *)
        tar -C "$root" -c . | "$engine" import \
          --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
          --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' - "$base" >/dev/null ;;
    esac
    rm -rf --one-file-system "$work"
    trap - EXIT
    say "base $base: imported"
  fi
fi

case "$base" in
  fedhealth-debian-base*) ;;
  *) if [ "$engine" != docker ] && ! has_image "$base"; then "$engine" pull "$base" >&2; fi ;;
esac

# podman: a container must start here, since every RUN step of a build is one. Where plain podman cannot
# (a host that does not let containers raise their resource limits: configs/deployment/containers.conf says
# why), the settings in that file are used for this script's podman calls, and the host's own are left as they
# are; where neither starts one, buildah builds instead when it is installed.
if [ "$engine" = podman ]; then
  probe() { podman run --rm --pull=never --network none --entrypoint /bin/true "$base" >/dev/null 2>"$1"; }
  why=$(mktemp)
  if ! probe "$why"; then
    ours=$PWD/configs/deployment/containers.conf
    if [ -z "${CONTAINERS_CONF:-}" ] && CONTAINERS_CONF=$ours probe /dev/null; then
      export CONTAINERS_CONF=$ours
      say "podman: plain 'podman run' fails here ($(head -c 200 "$why")); using $ours"
    elif command -v buildah >/dev/null 2>&1; then
      say "podman cannot start a container here ($(head -c 200 "$why")); building with buildah instead"
      engine=buildah
    else
      die "podman cannot start a container here: $(head -c 400 "$why")"
    fi
  fi
  rm -f "$why"
fi

# The packages: this host's pip fetches every wheel the images install into one folder (a wheelhouse), with
# its own settings (index or mirror, CA bundle, proxy: PIP_INDEX_URL, pip.conf), for the images' Python (3.11,
# glibc up to Debian bookworm's 2.36, this machine's architecture) whatever Python this host runs. torch comes
# first, its CPU build on its own, so no requirement can pull a multi-GB CUDA build. The folder is served on
# 127.0.0.1 to the build, whose pip installs from it alone (--no-index): the build itself reaches no network.
if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
"$py" -m pip --version >/dev/null 2>&1 || die "$py has no pip: the wheelhouse is fetched with this host's pip (apt-get install python3-pip)"
if [ -z "$torch_url" ] && [ -z "$wheels" ]; then
  if answers https://download.pytorch.org/whl/cpu/; then torch_url=https://download.pytorch.org/whl/cpu
  else
    for dir in ${PIP_FIND_LINKS:-}; do
      if compgen -G "$dir/torch-2.13.0*.whl" >/dev/null; then wheels=$dir; break; fi
    done
    [ -n "$wheels" ] || die "PyTorch's index does not answer and no torch-2.13.0 wheel was found: give --torch-wheels DIR or --torch-index-url URL"
  fi
fi
target=(--only-binary=:all: --python-version 3.11)
arch=$(uname -m)
for minor in $(seq 36 -1 5); do target+=(--platform "manylinux_2_${minor}_$arch"); done
target+=(--platform "manylinux2014_$arch" --platform "manylinux2010_$arch" --platform "manylinux1_$arch")
wheelhouse=$(mktemp -d /tmp/fedhealth-wheelhouse.XXXXXX)
server_pid=
trap 'kill "$server_pid" 2>/dev/null || true; rm -rf "$wheelhouse"' EXIT
t0=$(date +%s.%N)
say "wheelhouse: fetching every package with this host's pip ($py) into $wheelhouse"
if [ -n "$wheels" ]; then torch_from=(--no-index --find-links "$wheels"); else torch_from=(--index-url "$torch_url"); fi
"$py" -m pip download -q --no-deps "${target[@]}" "${torch_from[@]}" -d "$wheelhouse" torch==2.13.0 >&2 \
  || die "could not fetch torch 2.13.0's CPU build from ${wheels:-$torch_url}"
compgen -G "$wheelhouse/torch-2.13.0+cpu-*.whl" >/dev/null \
  || die "${wheels:-$torch_url} gave $(ls "$wheelhouse"), not torch's CPU build (torch-2.13.0+cpu)"
"$py" -m pip wheel -q --no-deps -w "$wheelhouse" . >&2 || die "could not build fedhealth's own wheel from this checkout"
"$py" -m pip download -q "${target[@]}" --find-links "$wheelhouse" -d "$wheelhouse" "$wheelhouse"/fedhealth-*.whl >&2 \
  || die "this host's pip could not fetch fedhealth's requirements (check its index: PIP_INDEX_URL or pip.conf)"
[ "$(compgen -G "$wheelhouse/torch-*.whl" | wc -l)" = 1 ] && ! compgen -G "$wheelhouse/nvidia_*" >/dev/null \
  || die "the wheelhouse holds a second torch or CUDA libraries: $(cd "$wheelhouse" && ls torch-* nvidia_* 2>/dev/null | tr '\n' ' ')"
t1=$(date +%s.%N)
wheelhouse_s=$(python3 -c "print(round($t1 - $t0, 1))")
wheelhouse_mb=$(du -sm "$wheelhouse" | cut -f1)
wheelhouse_n=$(compgen -G "$wheelhouse/*.whl" | wc -l)
# The lock: every wheel the images install (all but ray: a deployment never starts the simulation engine)
# with its sha256. Its own sha256 is a build argument, from this script, not from what the port serves: the
# build checks the lock against it and pip checks every wheel against the lock (--require-hashes), so no
# other process on this host that answers on the port can hand the build anything else.
"$py" - "$wheelhouse" <<'PY'
import hashlib, pathlib, sys
house = pathlib.Path(sys.argv[1])
lines = []
for wheel in sorted(house.glob("*.whl")):
    name, version = wheel.name.split("-")[:2]
    if name.lower() == "ray":
        continue
    lines.append(f"{name}=={version} --hash=sha256:{hashlib.sha256(wheel.read_bytes()).hexdigest()}")
(house / "wheels.lock").write_text("\n".join(lines) + "\n")
PY
digest=$(sha256sum "$wheelhouse/wheels.lock" | cut -d' ' -f1)
say "wheelhouse: $wheelhouse_n wheels, $wheelhouse_mb MB, in $wheelhouse_s s (lock sha256 ${digest:0:16}...)"
# A fixed port keeps the build's install step the same from one run to the next (its layer is reused); a busy
# one gives way to any free port.
port=38471
if ! python3 -c 'import socket, sys; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))' "$port" 2>/dev/null; then
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi
python3 -m http.server --bind 127.0.0.1 --directory "$wheelhouse" "$port" >/dev/null 2>&1 &
server_pid=$!
for _ in $(seq 50); do answers "http://127.0.0.1:$port/" && break; sleep 0.1; done
{ answers "http://127.0.0.1:$port/" && kill -0 "$server_pid" 2>/dev/null; } \
  || die "could not serve the wheelhouse on 127.0.0.1:$port"
wheels_url=http://127.0.0.1:$port/
network=(--network host)  # the build reaches the wheelhouse on this host's loopback

build() {  # build(IMAGE, DOCKERFILE)
  local t0 t1
  t0=$(date +%s.%N)
  args=(-f "$2" -t "$1:$tag" --build-arg "BASE_IMAGE=$base"
        --build-arg "WHEELS_URL=$wheels_url" --build-arg "WHEELS_DIGEST=$digest")
  case "$engine" in
    buildah) buildah bud --isolation chroot --layers --pull-never "${args[@]}" . >&2 || return 1 ;;
    podman) podman build --layers --pull=never ${network[@]+"${network[@]}"} "${args[@]}" . >&2 || return 1 ;;
    docker) docker build ${network[@]+"${network[@]}"} "${args[@]}" . >&2 || return 1 ;;
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

say "building fedhealth-server with $engine on $base"
server_s=$(build fedhealth-server server/Dockerfile) || die "building fedhealth-server failed (its log is above)"
say "building fedhealth-hospital with $engine on $base"
hospital_s=$(build fedhealth-hospital clients/Dockerfile) || die "building fedhealth-hospital failed (its log is above)"
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=false; [ -z "$(git status --porcelain 2>/dev/null)" ] || dirty=true
echo "{\"commit\": \"$commit\", \"dirty_tree\": $dirty, \"engine\": \"$engine\", \"containers_conf\": \"${CONTAINERS_CONF:-}\", \"base\": \"$base\", \"torch\": \"${wheels:-$torch_url}\"," \
  "\"wheelhouse\": {\"wheels\": $wheelhouse_n, \"mb\": $wheelhouse_mb, \"s\": $wheelhouse_s}," \
  "\"images\": {\"fedhealth-server:$tag\": {\"mb\": $(size_mb "fedhealth-server:$tag"), \"build_s\": $server_s}," \
  "\"fedhealth-hospital:$tag\": {\"mb\": $(size_mb "fedhealth-hospital:$tag"), \"build_s\": $hospital_s}}}"
