"""The repository's scripts as real processes: for what only a process shows.

Kills, Ctrl-C, SIGTERM, servers and crashes: each script runs as `python
SCRIPT ARGS` in a new interpreter, by default in a session of its own (its
process group is its own, so a signal to the group reaches only it and its
children), and is acted on by its PID. Its stdout and stderr go to files,
unbuffered, so a test can follow them while it runs:

    with processes.start("convert.py", f"--src={src}", f"--out={out}") as proc:
        processes.wait_until(proc, lambda: (out / "x").exists(), "its first shard")
        os.kill(proc.pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL

Waits are bounded by PATIENCE, a guard against hanging, not a measurement.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PATIENCE = 300  # seconds
# TensorFlow's C++ start-up logging, which TF_CPP_MIN_LOG_LEVEL does not silence.
TF_LOG_PREFIXES = ("WARNING: All log messages", "I0000", "E0000", "W0000", "To enable the following")


def env(**changes: str) -> dict[str, str]:
    """This environment, TensorFlow quiet and on the CPU, the repository importable."""
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "",
            "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **changes}


class Process:
    """A started script: its subprocess.Popen (`.popen`) and its output files."""

    def __init__(self, args, environment: dict | None, new_session: bool, merge_stderr: bool):
        self._folder = tempfile.TemporaryDirectory(prefix="proc-")
        self._stdout = Path(self._folder.name) / "stdout"
        self._stderr = self._stdout if merge_stderr else Path(self._folder.name) / "stderr"
        with open(self._stdout, "wb") as out, open(self._stderr, "ab") as err:
            self.popen = subprocess.Popen(
                [sys.executable, *map(str, args)], cwd=REPO, env=environment or env(),
                stdin=subprocess.DEVNULL, stdout=out, stderr=out if merge_stderr else err,
                start_new_session=new_session,
            )
        self.pid = self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    def poll(self) -> int | None:
        return self.popen.poll()

    def wait(self, timeout: float = PATIENCE) -> int:
        return self.popen.wait(timeout)

    def output(self) -> tuple[str, str]:
        """(stdout, stderr) so far; stderr is "" when merged into stdout."""
        err = "" if self._stderr == self._stdout else self._stderr.read_text(errors="replace")
        return self._stdout.read_text(errors="replace"), err

    def communicate(self, timeout: float = PATIENCE) -> tuple[str, str]:
        """Waits for the end (killing it past `timeout`); (stdout, stderr)."""
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            raise
        return self.output()

    def lines(self) -> Iterator[str]:
        """stdout's lines as they are written, until the process ends."""
        with open(self._stdout, errors="replace") as f:
            pending = ""
            while True:
                chunk = f.readline()
                if chunk:
                    pending += chunk
                    if pending.endswith("\n"):
                        yield pending
                        pending = ""
                    continue
                if self.popen.poll() is not None:
                    rest = pending + f.read()
                    if rest:
                        yield rest
                    return
                time.sleep(0.01)

    def __enter__(self) -> Process:
        return self

    def __exit__(self, *exc) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait()
        self._folder.cleanup()


def start(*args, environment: dict | None = None, new_session: bool = True,
          merge_stderr: bool = False) -> Process:
    """`python *args` (a script of the repository, or any path) started in the repository."""
    return Process(args, environment, new_session, merge_stderr)


def run(*args, environment: dict | None = None, timeout: float = PATIENCE) -> subprocess.CompletedProcess:
    """`python *args` to its end: its exit status (-N for signal N), stdout and stderr."""
    with start(*args, environment=environment) as process:
        stdout, stderr = process.communicate(timeout)
    return subprocess.CompletedProcess(process.popen.args, process.returncode, stdout, stderr)


def wait_until(process: Process, condition: Callable[[], bool], what: str) -> None:
    """Polls `condition` until it holds; fails if the process ends first or PATIENCE runs out."""
    deadline = time.monotonic() + PATIENCE
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"{process.popen.args[1]} ended ({process.returncode}) before {what}: {process.output()}")
        if time.monotonic() > deadline:
            process.popen.kill()
            pytest.fail(f"{process.popen.args[1]} did not reach {what}: {process.communicate()}")
        time.sleep(0.01)


def kill_at(process: Process, marker: str) -> str:
    """SIGKILLs `process` by its PID once a line holding `marker` is printed; returns the output up to it."""
    seen = []
    for line in process.lines():
        seen.append(line)
        if marker in line:
            os.kill(process.pid, signal.SIGKILL)
            break
    process.wait()
    assert process.returncode == -signal.SIGKILL, "".join(seen)[-3000:]
    return "".join(seen)


def our_lines(stderr: str) -> list[str]:
    """The non-blank lines of `stderr` without TensorFlow's C++ start-up logging."""
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith(TF_LOG_PREFIXES)]


def dead_pid() -> int:
    """The PID of a process that has ended (and was reaped): no process holds it now."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
