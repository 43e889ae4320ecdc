#!/bin/sh
# Runs inside an image build (clients/Dockerfile and server/Dockerfile), never on a host.
# Installs fedhealth and what it runs on into /opt/venv, then takes out what a deployed SuperLink or SuperNode
# never runs, so the image is smaller and carries fewer tools an intruder could use. The packages come from:
#   WHEELS_URL    a wheelhouse (scripts/build_images.sh fetches one with the host's pip and serves it on
#                 127.0.0.1): fedhealth's own wheel, torch's CPU build and every requirement but ray, exactly
#                 the wheels its lock names with their sha256 (WHEELS_DIGEST: the lock's own sha256), with
#                 --no-index, so pip reaches nothing else; or, when it is empty (a plain `docker build`),
#   TORCH_INDEX_URL  torch's CPU build (PyTorch's CPU index), on its own and without dependencies, so that no
#                 later requirement can pull a multi-GB CUDA build of it, and
#   PIP_INDEX_URL the rest (PyPI or the hospital's own mirror), torch's dependencies included.
# Taken out: ray (the simulation engine: a deployment never starts it), torch's C++ headers and test programs,
# pip/setuptools/wheel (nothing is installed at run time: Flower's run-time dependency installation is off as
# well), and the build's own leftovers.
set -eu
cd /opt/fedhealth
python3 -m venv /opt/venv
pip=/opt/venv/bin/pip
if [ -n "${WHEELS_URL:-}" ]; then
  # the lock comes from the same port as the wheels, so it is checked against WHEELS_DIGEST, which the build
  # was given on its command line; pip then checks every wheel against the lock
  : "${WHEELS_DIGEST:?the build argument WHEELS_DIGEST (the lock's sha256) is empty}"
  python3 - "$WHEELS_URL" "$WHEELS_DIGEST" <<'PY'
import hashlib, sys, urllib.request
lock = urllib.request.urlopen(sys.argv[1].rstrip("/") + "/wheels.lock", timeout=60).read()
if hashlib.sha256(lock).hexdigest() != sys.argv[2]:
    sys.exit(f"the wheelhouse's lock at {sys.argv[1]} is not the one this build was given (sha256 {sys.argv[2]})")
open("/tmp/wheels.lock", "wb").write(lock)
PY
  $pip install --no-index --find-links "$WHEELS_URL" --no-deps --require-hashes -r /tmp/wheels.lock
else
  : "${TORCH_INDEX_URL:?the build argument TORCH_INDEX_URL is empty}"
  : "${PIP_INDEX_URL:?the build argument PIP_INDEX_URL is empty}"
  $pip install --no-deps --index-url "$TORCH_INDEX_URL" torch==2.13.0
  $pip install --index-url "$PIP_INDEX_URL" .
  $pip uninstall --yes ray
fi
site=$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
rm -rf "$site/torch/test" "$site/torch/include" "$site"/torch/bin/*Test "$site"/torch/bin/test_* \
  "$site"/torch/bin/protoc*
$pip uninstall --yes pip setuptools wheel 2>/dev/null || $pip uninstall --yes pip
rm -rf /opt/fedhealth/build /root/.cache /tmp/wheels.lock
find /opt/venv -perm /022 -exec chmod go-w {} +  # root's alone, here in the install's own layer
