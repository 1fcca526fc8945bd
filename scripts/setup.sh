#!/usr/bin/env bash
# Creates .venv (Python 3.11) and installs the project with its test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# uv installs the same packages as pip in two thirds of the time (BUILD.md, Dependencies);
# pip stays the fallback. Bytecode is compiled at install, as pip does: where
# PYTHONDONTWRITEBYTECODE is set, every process would compile TensorFlow again.
if .venv/bin/python -m pip install --quiet uv; then
  .venv/bin/python -m uv pip install --quiet --compile-bytecode --python .venv/bin/python -e '.[test,beam]'
else
  .venv/bin/python -m pip install --quiet -e '.[test,beam]'
fi
