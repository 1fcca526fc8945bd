#!/usr/bin/env bash
# Sets everything up and runs the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
# Each module's bytecode is written into .venv at its first import and read by every later
# process; where PYTHONDONTWRITEBYTECODE is set, every process would compile TensorFlow again.
unset PYTHONDONTWRITEBYTECODE
# One worker per core (pytest-xdist); an idle worker takes tests from a busy one. A third
# worker on two cores made the suite slower, not faster (BUILD.md, Test suite).
.venv/bin/python -m pytest -q -n auto --dist worksteal "$@"
