#!/usr/bin/env bash
# The whole test suite, as CI runs it: fast tests, then the slow end-to-end ones.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
. .venv/bin/activate
ruff check tinysiglip tests
python -m pytest -q -m "not slow" --durations=10
python -m pytest -q -m "slow" --durations=10 || [ $? -eq 5 ]  # 5: no slow test collected
