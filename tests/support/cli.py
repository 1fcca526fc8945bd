"""A command line run in this process, as the tests of flags, errors and outputs want it.

    done = cli.run(CONVERT, f"--src={src}", f"--out={out}")
    assert done.returncode == 0 and "Wrote 28 images" in done.stdout

`Command.main` parses its own flags afresh on every call, so cases run one
after another in one process; what the command prints is captured here, not
by pytest, so module-scoped fixtures can run commands too.
"""

from __future__ import annotations

import contextlib
import io
import subprocess

from absl import logging

from pipeline import cli


def run(command: cli.Command, *args) -> subprocess.CompletedProcess:
    """`command.main([command.prog, *args])`: its exit status and what it printed.

    stderr holds absl's log lines too, formatted as in a process of its own.
    """
    argv = [command.prog, *map(str, args)]
    stdout, stderr = io.StringIO(), io.StringIO()
    absl_stream = logging.get_absl_handler().python_handler
    kept = absl_stream.stream
    absl_stream.stream = stderr
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            status = command.main(argv)
    finally:
        absl_stream.stream = kept
    return subprocess.CompletedProcess(argv, status, stdout.getvalue(), stderr.getvalue())


def cases(command: cli.Command, cases: dict[str, list]) -> dict[str, subprocess.CompletedProcess]:
    """name -> `run(command, *args)` of each case, in order."""
    return {name: run(command, *args) for name, args in cases.items()}
