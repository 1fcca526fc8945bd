#!/usr/bin/env bash
# Sets everything up and runs the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
# Three workers on two cores (pytest-xdist): the process tests wait on their
# children, and a third worker uses that time; an idle worker takes tests from a busy one.
.venv/bin/python -m pytest -q -n 3 --dist worksteal "$@"
