#!/bin/sh
# Runs inside an image build (clients/Dockerfile and server/Dockerfile), never on a host.
# Installs fedhealth and what it runs on into /opt/venv, then takes out what a deployed SuperLink or SuperNode
# never runs, so the image is smaller and carries fewer tools an intruder could use. The packages come from:
#   WHEELS_URL    a wheelhouse (scripts/build_images.sh fetches one with the host's pip and serves it on
#                 127.0.0.1): fedhealth's own wheel, torch's CPU build and every requirement, installed with
#                 --no-index, so the build reaches nothing else; or, when it is empty (a plain `docker build`),
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
  $pip install --no-index --find-links "$WHEELS_URL" fedhealth
else
  : "${TORCH_INDEX_URL:?the build argument TORCH_INDEX_URL is empty}"
  : "${PIP_INDEX_URL:?the build argument PIP_INDEX_URL is empty}"
  $pip install --no-deps --index-url "$TORCH_INDEX_URL" torch==2.13.0
  $pip install --index-url "$PIP_INDEX_URL" .
fi
$pip uninstall --yes ray
site=$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
rm -rf "$site/torch/test" "$site/torch/include" "$site"/torch/bin/*Test "$site"/torch/bin/test_* \
  "$site"/torch/bin/protoc*
$pip uninstall --yes pip setuptools wheel 2>/dev/null || $pip uninstall --yes pip
rm -rf /opt/fedhealth/build /root/.cache
