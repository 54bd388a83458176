#!/usr/bin/env bash
# Set up .venv with TinySigLIP and its test tools. Idempotent: a second run only checks.
#
# On the project's build machines torch 2.14.1 / torchvision 0.29.1 lie on local disk and pip takes
# them from there; anywhere else pip installs the same versions from PyPI (or set TORCH_SPEC to the
# build you want, e.g. TORCH_SPEC="torch torchvision --index-url https://download.pytorch.org/whl/cu124").
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
EXTRAS=${EXTRAS:-test}

if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
if ! python -c "import torch, torchvision" 2>/dev/null; then
  echo "== installing $TORCH_SPEC"
  python -m pip install -q --upgrade pip
  # shellcheck disable=SC2086
  python -m pip install -q $TORCH_SPEC
fi
echo "== installing tinysiglip[$EXTRAS]"
python -m pip install -q -e ".[$EXTRAS]"
python -c "import tinysiglip, torch; print('tinysiglip', tinysiglip.__version__, '| torch', torch.__version__)"
