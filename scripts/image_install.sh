#!/bin/sh
# Runs inside an image build (clients/Dockerfile and server/Dockerfile, their `build` stage), never on a host.
# Installs fedhealth and what it runs on into /opt/venv from the package sources the build was given, then
# takes out what a deployed SuperLink or SuperNode never runs, so the image is smaller and carries fewer
# tools an intruder could use:
#   torch         from TORCH_INDEX_URL (PyTorch's CPU index on a normal Docker host; here a local wheel
#                 directory served on 127.0.0.1), on its own and without dependencies, so that no later
#                 requirement can pull a multi-GB CUDA build of it;
#   the rest      from PIP_INDEX_URL (PyPI or the hospital's own mirror), torch's dependencies included;
#   taken out     ray (the simulation engine: a deployment never starts it), torch's C++ headers and test
#                 programs, pip/setuptools/wheel (nothing is installed at run time: Flower's run-time
#                 dependency installation is off as well), and the build's own leftovers.
set -eu
: "${TORCH_INDEX_URL:?the build argument TORCH_INDEX_URL is empty}"
: "${PIP_INDEX_URL:?the build argument PIP_INDEX_URL is empty}"
cd /opt/fedhealth
if [ -n "${PIP_CERT_URL:-}" ]; then  # a CA bundle for the build only (a mirror's own CA, or a proxy's)
  python3 -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], "/tmp/build-ca.crt")' "$PIP_CERT_URL"
  export PIP_CERT=/tmp/build-ca.crt
fi
python3 -m venv /opt/venv
pip=/opt/venv/bin/pip
$pip install --no-deps --index-url "$TORCH_INDEX_URL" torch==2.13.0
$pip install --index-url "$PIP_INDEX_URL" .
$pip uninstall --yes ray
site=$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
rm -rf "$site/torch/test" "$site/torch/include" "$site"/torch/bin/*Test "$site"/torch/bin/test_* \
  "$site"/torch/bin/protoc*
$pip uninstall --yes pip setuptools wheel 2>/dev/null || $pip uninstall --yes pip
rm -rf /opt/fedhealth/build /root/.cache /tmp/build-ca.crt
