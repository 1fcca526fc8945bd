"""Runs one script's command line several times in one process.

    python tests/cli_driver.py SCRIPT CASES_JSON RESULTS_JSON

SCRIPT is a script of the repository (e.g. train.py), CASES_JSON a file
holding a list of argument lists. Each case does what `python SCRIPT *args`
does: the script's `run()` (its `cli.run(main, ...)`) with sys.argv set, its
flags back at their defaults and absl's one-time start-up done afresh. Its
file descriptors 1 and 2 are captured, and its exit status is the one the
interpreter gives: SystemExit(None) 0, an int itself, a message 1 (the message
printed on stderr), an uncaught exception 1 (with its traceback). RESULTS_JSON
gets one {"returncode", "stdout", "stderr"} per case.

The point: TensorFlow is imported once for all the cases, not once per case.
`conftest.run_cli_cases` runs this and returns the cases as CompletedProcess.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import tempfile
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402


def _load(script: str):
    spec = importlib.util.spec_from_file_location(Path(script).stem, REPO / script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _exit_status(code) -> int:
    """What the interpreter makes of SystemExit(code); a message goes to stderr."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _fresh_start() -> None:
    """Flags at their defaults, and absl.app's start-up to be run again, as in a new process."""
    flags.FLAGS.unparse_flags()
    app._run_init.done = False  # noqa: SLF001
    app._register_and_parse_flags_with_usage.done = False  # noqa: SLF001


def run_case(script: str, run, args: list[str]) -> dict:
    _fresh_start()
    sys.argv = [script, *args]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        try:
            try:
                run()
                returncode = 0
            except SystemExit as e:
                returncode = _exit_status(e.code)
            except BaseException:  # noqa: BLE001 - what an uncaught exception does
                traceback.print_exc()
                returncode = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
        out.seek(0)
        err.seek(0)
        return {
            "returncode": returncode,
            "stdout": out.read().decode("utf-8", "replace"),
            "stderr": err.read().decode("utf-8", "replace"),
        }


def main(script: str, cases_path: str, results_path: str) -> None:
    cases = json.loads(Path(cases_path).read_text())
    module = _load(script)
    results = [run_case(script, module.run, args) for args in cases]
    Path(results_path).write_text(json.dumps(results))


if __name__ == "__main__":
    main(*sys.argv[1:])
