"""train.py on several hosts: the training runs in a child process, and its end is read here.

When one process of a run is lost (killed, its host gone), JAX's coordination
service ends every other one: the coordinator stops hearing the lost one's
heartbeats within `distribution.LOST_PROCESS_SECONDS`, or the others lose the
coordinator at once. It ends them from C++, with an abort and a page of
logging that no Python handler sees. So with several processes train.py runs
the training as a child of itself (`run_child`), passes its output and the
signals it gets through, and turns that end into one line naming the lost
process. The child ends with its parent (`end_with_parent`): killing either
by PID ends the training.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

from model import distribution

CHILD_ENV = "TFR_TRAINING_CHILD"  # set in the child's environment
# The lines JAX's end of a run starts with (only the coordinator logs the first).
_END_MARKERS = ("coordination_service", "Terminating process because the JAX distributed service")
_UNHEALTHY = re.compile(r"tasks are unhealthy \(stopped sending heartbeats\):\s*([\d,\s]+)")
_COORDINATOR_LOST = "Failed to send RPC to coordination service"
EXIT_LOST = 75  # EX_TEMPFAIL: run the same command again (as train.py's input watchdog)


def is_child() -> bool:
    return os.environ.get(CHILD_ENV) == "1"


def end_with_parent() -> None:
    """In the child: ends this process when its parent's end closes its stdin (a kill -9 included)."""

    def wait_for_eof():
        while os.read(0, 4096):  # the raw descriptor: a buffered stdin's lock would stall the exit
            pass
        os._exit(EXIT_LOST)

    threading.Thread(target=wait_for_eof, name="end-with-parent", daemon=True).start()


@contextlib.contextmanager
def peers_end_the_run() -> Iterator[None]:
    """In the child: a collective that fails because a peer's connection dropped (Gloo) means a
    process was lost; JAX's coordination service then ends this one within LOST_PROCESS_SECONDS and
    names it (`run_child` reads that). Waits for it; any other error, or no such end, keeps its traceback."""
    try:
        yield
    except Exception as error:
        if not (type(error).__name__ == "JaxRuntimeError" and "Gloo" in str(error)
                and any(what in str(error) for what in ("Connection reset", "Connection closed", "Read error"))):
            raise
        time.sleep(2 * distribution.LOST_PROCESS_SECONDS)
        raise


def lost_processes(log: str, count: int) -> str:
    """Which processes JAX's log says were lost, in words, e.g. "process 1 of 2"."""
    unhealthy = _UNHEALTHY.search(log)
    if unhealthy:
        ids = sorted({int(n) for n in re.findall(r"\d+", unhealthy.group(1))})
        return f"process{'es' if len(ids) > 1 else ''} {', '.join(map(str, ids))} of {count} (no heartbeat)"
    if _COORDINATOR_LOST in log:
        return f"process 0 of {count} (the coordinator: it no longer answers)"
    return f"a process of {count}"


# The child: train.py's command with the flags given, whatever program called it (a script, pytest).
_CHILD_PROGRAM = "from model.commands import TRAIN; TRAIN.run()"


def run_child(flags: list[str], processes: distribution.Processes, model_dir: str, prog: str = "train.py") -> int:
    """Runs train.py's command with `flags` as this process's child and returns its exit status;
    prints one line and returns EXIT_LOST when JAX ended it because another process was lost."""
    child = subprocess.Popen([sys.executable, "-c", _CHILD_PROGRAM, *flags], env={**os.environ, CHILD_ENV: "1"},
                             stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    forwarded = {signum: signal.signal(signum, lambda signum, frame: child.send_signal(signum))
                 for signum in (signal.SIGTERM, signal.SIGINT)}
    held: list[str] = []  # JAX's end-of-run logging, printed only if it was not that end
    try:
        for raw in child.stderr:
            line = raw.decode(errors="replace")
            if held or any(marker in line for marker in _END_MARKERS):
                held.append(line)
            else:
                sys.stderr.write(line)
                sys.stderr.flush()
        status = child.wait()
    finally:
        for signum, handler in forwarded.items():
            signal.signal(signum, handler)
    log = "".join(held)
    if status == -signal.SIGABRT and "Terminating process because the JAX distributed service" in log:
        print(f"{prog}: error: lost {lost_processes(log, processes.count)} of the run "
              f"coordinated at {processes.coordinator}, so process {processes.index} ended too: the last backup in "
              f"{os.path.join(model_dir, 'backup')} is kept; start the same command on every host to resume",
              file=sys.stderr)
        return EXIT_LOST
    sys.stderr.write(log)
    return 128 - status if status < 0 else status
