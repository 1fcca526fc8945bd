"""The repository's scripts as real processes that start with TensorFlow imported.

A test that starts `python train.py ...` pays about 6 CPU-seconds for the new
interpreter to import TensorFlow and Keras before the script does anything;
the suite starts dozens. `start` runs the same command line in a new process
forked from a server (one per test process, `python tests/warm.py`) that
imported them once:

    proc = warm.start(["convert.py", f"--src={src}", f"--out={out}"], new_session=True)
    os.kill(proc.pid, signal.SIGKILL)   # a process of its own, killed by its PID
    stdout, stderr = proc.communicate(timeout=300)

What the script sees is what `python SCRIPT ARGS` gives it: sys.argv, its
folder first on sys.path (then PYTHONPATH), its module run as __main__, the
given cwd and environment, stdin at /dev/null, Ctrl-C raising
KeyboardInterrupt, and the interpreter's own way out (exit status, uncaught
exceptions, atexit, threads). Its stdout and stderr go to files, line-buffered
as with `python -u`; `lines()` follows them while it runs. Two differences
remain: environment variables that TensorFlow reads once, at import, keep the
server's values (CUDA_VISIBLE_DEVICES and the like are read later, at device
set-up, and do apply), and the interpreter's module teardown is skipped at exit.
The server's objects are frozen (gc.freeze) before it forks: a collection in
a child skips them, which only makes it faster.
Some runs still start a new interpreter, imports and all: one train.py run in
test_train.py, and convert.py as the conversion benchmark starts it.

The server reads one JSON request per line on stdin, forks, and answers the
child's PID on stdout; when a child ends, it writes the exit status (-N for
signal N) to the request's status file.
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

# What the scripts import before their main() runs, the costly part first.
PRELOAD = (
    "tensorflow",
    "keras",
    "tensorflow_datasets",
    "matplotlib.figure",
    "matplotlib.backends.backend_agg",
    "absl.app",
    "pipeline.converter.conversion",
    "pipeline.verify",
    "pipeline.reader.dataset",
    "pipeline.reader.service",
    "model.training",
    "benchmark.report",
)
_POLL_S = 0.02  # how often a wait looks again: a guard against busy loops, not a timing


# ----------------------------------------------------------------- the server


def _serve(requests, answers) -> dict | None:
    """Forks a child per request; returns the request in the child, None at EOF."""
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    # The children's collections then skip the preloaded modules' objects, as
    # the gc docs advise before a fork (a cold process's gc walks them all).
    gc.freeze()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the test process's Ctrl-C is not ours
    status_paths: dict[int, str] = {}
    selector = selectors.DefaultSelector()
    selector.register(requests, selectors.EVENT_READ)
    pending = b""
    while True:
        ready = selector.select(timeout=_POLL_S)
        _reap(status_paths)
        if not ready:
            continue
        chunk = os.read(requests, 1 << 16)
        if not chunk:
            return None
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            request = json.loads(line)
            pid = os.fork()
            if pid == 0:
                selector.close()
                os.close(requests)
                os.close(answers)
                return request
            status_paths[pid] = request["status"]
            os.write(answers, f"{pid}\n".encode())


def _reap(status_paths: dict[int, str]) -> None:
    """Writes the exit status of each ended child to its status file."""
    while status_paths:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        path = status_paths.pop(pid, None)
        if path is not None:
            Path(path + ".tmp").write_text(str(os.waitstatus_to_exitcode(status)))
            os.replace(path + ".tmp", path)


def _become(request: dict) -> None:
    """Sets the forked child up as `python *argv` would start, then runs the script."""
    import runpy

    if request["new_session"]:
        os.setsid()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    null = os.open(os.devnull, os.O_RDONLY)  # fd 0 itself when the server's stdin is closed
    if null != 0:
        os.dup2(null, 0)
        os.close(null)
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        target = os.open(path, os.O_WRONLY | os.O_APPEND)
        os.dup2(target, fd)
        os.close(target)
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)
    script = os.path.abspath(request["argv"][0])
    sys.argv = list(request["argv"])
    python_path = [p for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[0:1] = [os.path.dirname(script), *python_path]
    try:
        runpy.run_path(script, run_name="__main__")
        code = 0
    except SystemExit as e:
        code = _exit_status(e.code)
    except KeyboardInterrupt:
        traceback.print_exc()
        code = -signal.SIGINT
    except BaseException:  # noqa: BLE001 - what the interpreter does with an uncaught exception
        sys.excepthook(*sys.exc_info())
        code = 1
    _exit(code)


def _exit_status(code) -> int:
    """What the interpreter makes of SystemExit(code); a message goes to stderr."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _exit(code: int) -> None:
    """Ends the process as the interpreter would, without tearing its modules down.

    Non-daemon threads are waited for, the atexit functions run and the
    standard streams are flushed; the teardown of TensorFlow's thousands of
    modules (about 1 CPU-second) is skipped, so a file a script left unclosed
    would lose its unflushed writes here, not pass in silence. -SIGINT: ends
    by SIGINT, as an uncaught KeyboardInterrupt does.
    """
    threading._shutdown()  # noqa: SLF001 - waits for non-daemon threads, as at interpreter exit
    atexit._run_exitfuncs()  # noqa: SLF001
    sys.stdout.flush()
    sys.stderr.flush()
    if code == -signal.SIGINT:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(code & 0xFF)


# ------------------------------------------------------------ the test side

_server: subprocess.Popen | None = None


def _fork(request: dict) -> int:
    """Sends a request to this process's server (started on first use); returns the PID."""
    global _server
    if _server is None or _server.poll() is not None:
        _server = subprocess.Popen(
            [sys.executable, __file__],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO_ROOT,
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
        )
    _server.stdin.write(json.dumps(request).encode() + b"\n")
    _server.stdin.flush()
    answer = _server.stdout.readline()
    if not answer:
        raise RuntimeError(f"the warm-process server ended ({_server.wait()})")
    return int(answer)


class Process:
    """A started script: the part of subprocess.Popen the tests use, text output."""

    def __init__(self, args: Sequence[str], cwd: Path, env: dict, new_session: bool, merge_stderr: bool):
        self.args = [str(a) for a in args]
        self.returncode: int | None = None
        self._scratch = tempfile.TemporaryDirectory(prefix="warm-")
        folder = Path(self._scratch.name)
        self._paths = {name: folder / name for name in ("stdout", "stderr", "status")}
        self._paths["stdout"].touch()
        self._paths["stderr"].touch()
        self.pid = _fork({
            "argv": self.args, "cwd": str(cwd), "env": dict(env), "new_session": new_session,
            **{name: str(path) for name, path in self._paths.items()},
            **({"stderr": str(self._paths["stdout"])} if merge_stderr else {}),
        })

    def poll(self) -> int | None:
        """The exit status (-N if signal N ended it), or None while it runs."""
        if self.returncode is None and self._paths["status"].exists():
            self.returncode = int(self._paths["status"].read_text())
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(_POLL_S)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def output(self) -> tuple[str, str]:
        """(stdout, stderr) as written so far; stderr is "" when merged into stdout."""
        return tuple(self._paths[name].read_text(errors="replace") for name in ("stdout", "stderr"))

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        """Waits for the end (TimeoutExpired after `timeout` s); returns (stdout, stderr)."""
        self.wait(timeout)
        return self.output()

    def lines(self, stream: str = "stdout") -> Iterator[str]:
        """Each line of `stream` as it is written, until the process ends."""
        with open(self._paths[stream], errors="replace") as f:
            pending = ""
            while True:
                ended = self.poll() is not None
                pending += f.read()
                *complete, pending = pending.split("\n")
                yield from (line + "\n" for line in complete)
                if ended:
                    if pending:
                        yield pending
                    return
                time.sleep(_POLL_S)

    def __enter__(self) -> Process:
        return self

    def __exit__(self, *exc) -> None:
        self.kill()
        self.wait()
        self._scratch.cleanup()


def start(
    args: Sequence[str],
    *,
    cwd: Path = REPO_ROOT,
    env: dict | None = None,
    new_session: bool = False,
    merge_stderr: bool = False,
) -> Process:
    """Starts `python *args` (args[0] a script path, relative to cwd) as a new process.

    Args:
      args: the script and its arguments.
      cwd: the working folder.
      env: the environment; default os.environ with TF_CPP_MIN_LOG_LEVEL=2.
      new_session: in a session (and process group) of its own, as
        subprocess's start_new_session=True.
      merge_stderr: stderr into the stdout file, as stderr=subprocess.STDOUT.
    """
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2") if env is None else env
    return Process(args, cwd, env, new_session, merge_stderr)


def run(args: Sequence[str], *, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    """`start(args, **kwargs)` to its end, as subprocess.run(..., capture_output=True, text=True)."""
    with start(args, **kwargs) as proc:
        stdout, stderr = proc.communicate(timeout)
        return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


if __name__ == "__main__":
    sys.path.insert(1, str(REPO_ROOT))
    # The answers get the real stdout; anything a preloaded module prints goes to stderr.
    _answers = os.dup(1)
    os.dup2(2, 1)
    _request = _serve(sys.stdin.fileno(), _answers)
    if _request is not None:
        _become(_request)
