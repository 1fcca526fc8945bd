#!/usr/bin/env bash
# Sets everything up and runs the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
# Each module's bytecode is written into .venv at its first import and read by every later
# process; where PYTHONDONTWRITEBYTECODE is set, every process would compile TensorFlow again.
unset PYTHONDONTWRITEBYTECODE
# XLA's compiled steps on disk, shared by every JAX process of the run: the tests train the same
# small CNN many times, and a cached step skips its compile (seconds of CPU each).
if [ -z "${JAX_COMPILATION_CACHE_DIR:-}" ]; then
  JAX_COMPILATION_CACHE_DIR=$(mktemp -d)
  trap 'rm -rf "$JAX_COMPILATION_CACHE_DIR"' EXIT
fi
export JAX_COMPILATION_CACHE_DIR JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
# One worker per core (pytest-xdist); an idle worker takes tests from a busy one. A third
# worker on two cores made the suite slower, not faster (BUILD.md, Test suite).
.venv/bin/python -m pytest -q -n auto --dist worksteal "$@"
# The tests marked `backends` again with Keras on JAX: Keras takes its backend once, at import, so
# JAX needs a session of its own (BUILD.md, Backends).
# Exit status 5 is "no test selected": the files named hold none marked.
KERAS_BACKEND=jax .venv/bin/python -m pytest -q -n auto --dist worksteal -m backends "$@" || [ $? -eq 5 ]
