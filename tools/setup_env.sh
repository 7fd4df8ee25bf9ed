#!/usr/bin/env bash
# Create .venv (if missing) and install detmine with its dev extras into it.
# torch/torchvision (and the checkers) are pinned here, to the releases the project is tested with (and pip can
# take from the local wheel cache); pyproject.toml itself states lower bounds only.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# the checkers are pinned too: the format check and the mypy baseline depend on their versions
PINS=("torch==2.14.1" "torchvision==0.29.1" "ruff==0.17.6" "mypy==2.4.1")
.venv/bin/python -m pip install -q "${PINS[@]}"
.venv/bin/python -m pip install -q -e ".[dev]" "${PINS[@]}"
