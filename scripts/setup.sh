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
.venv/bin/python -c "import pyrender, OpenGL, dlib, torch, webdataset, onnxruntime; print('setup: ok, torch', torch.__version__, 'onnxruntime', onnxruntime.__version__, 'PyOpenGL', OpenGL.__version__)"

# The Khronos glTF Validator (npm gltf-validator, a JavaScript library), which scripts/validate_gltf.mjs runs on
# the glTF files refine writes (tests/reconstruct/test_gltf.py): into .node/ (git-ignored) where node and npm are
# present; without them, or without the registry, setup goes on and those checks skip.
GLTF_VALIDATOR=2.0.0-dev.3.10
if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
  if ! grep -qs "\"version\": \"$GLTF_VALIDATOR\"" .node/node_modules/gltf-validator/package.json; then
    if npm install --prefix .node --no-save --no-audit --no-fund --loglevel=error "gltf-validator@$GLTF_VALIDATOR"; then
      echo "setup: gltf-validator $GLTF_VALIDATOR in .node/"
    else
      echo "setup: npm could not install gltf-validator@$GLTF_VALIDATOR: the glTF validation tests will skip"
    fi
  fi
else
  echo "setup: node and npm not found: gltf-validator not installed (the glTF validation tests will skip)"
fi
