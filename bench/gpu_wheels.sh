#!/usr/bin/env bash
# Puts into .whl/ the wheels that bench/run_gpu.sh needs and the device image lacks (pydantic and its
# own needs, at the versions installed here), for x86-64 Linux and Python 3.12. Carry .whl with the run.
set -eu
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
mkdir -p .whl
for name in pydantic pydantic_core annotated-types typing-inspection; do
  version=$("$PY" -c "import importlib.metadata as m; print(m.version('$name'))")
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "$name==$version"
done
ls .whl
