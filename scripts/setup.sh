#!/usr/bin/env bash
# Creates .venv (Python 3.11) and installs the project with its test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
# The venv starts without pip (ensurepip takes 8 s): uv goes in through this Python's pip
# (`pip --python`, pip >= 22.3), then installs the project, and pip with it. uv installs the
# same packages as pip in a tenth of the time (BUILD.md, Dependencies); the venv's own pip is
# the fallback. No bytecode is compiled here: the callers let Python write it as it imports
# (scripts/test.sh), which costs a third of compiling all of site-packages.
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv --without-pip .venv
fi
has() { .venv/bin/python -m "$1" --version >/dev/null 2>&1; }
if ! has uv && ! "$PYTHON" -m pip --python .venv/bin/python install --quiet uv; then
  has pip || .venv/bin/python -m ensurepip --upgrade >/dev/null
  .venv/bin/python -m pip install --quiet uv || true
fi
if has uv; then
  .venv/bin/python -m uv pip install --quiet --python .venv/bin/python -e '.[test,beam,dask,jax]' pip
else
  .venv/bin/python -m pip install --quiet -e '.[test,beam,dask,jax]'
fi
