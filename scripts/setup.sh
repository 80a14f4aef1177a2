#!/usr/bin/env bash
# Install what facesynth needs, from nothing: Debian packages (OSMesa for headless CPU OpenGL), then a
# virtual environment .venv in the repository root with every Python package pinned.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
need=()
ldconfig -p | grep -q 'libOSMesa\.so' || need+=(libosmesa6)
ldconfig -p | grep -q 'libGL\.so\.1' || need+=(libgl1)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]} with apt-get"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip setuptools wheel
"${PIP[@]}" install -q -r requirements.txt
# pyrender 0.1.45 pins PyOpenGL==3.1.0, which is broken with OSMesa: install it without its pins
# (its other needs are in requirements.txt) and keep the current PyOpenGL.
"${PIP[@]}" install -q --no-deps pyrender==0.1.45
"${PIP[@]}" install -q --no-deps --no-build-isolation -e .
.venv/bin/python -c "import pyrender, OpenGL, dlib, torch, webdataset; print('setup: ok, torch', torch.__version__, 'PyOpenGL', OpenGL.__version__)"
