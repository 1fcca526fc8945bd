"""A model_dir, or a conversion's --out, is held by one process at a time.

A second run is refused at once with one line naming the holder's host and
PID; a holder that was killed frees the folder at once (the lock is the
kernel's flock on the folder, which ends with the process).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from model.commands import TRAIN
from pipeline import fileio
from pipeline.converter.commands import CONVERT


def _error_line(capsys, prog: str = "train.py") -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(f"{prog}: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_a_model_dir_in_use_is_refused_naming_its_holder(run, capsys):
    argv, model_dir = run
    with fileio.held(str(model_dir), "train.py", "unused"):
        assert TRAIN.main([*argv, "--epochs=2"]) == 1
    line = _error_line(capsys)
    holder = f"train.py on host {socket.gethostname()}, PID {os.getpid()}"
    assert line == (f"train.py: error: {model_dir} is in use by {holder}: "
                    "wait for that run to end, or pass another --model_dir"), line
    assert json.loads((model_dir / "history.json").read_text())[-1]["epoch"] == 0  # nothing trained
    with fileio.held(str(model_dir), "train.py", "unused"):  # free again once the holder let go
        pass


# A process that takes a folder's lock as the commands do, says so, and waits to be killed.
_HOLDER = """
import sys, time
from pipeline import fileio
with fileio.held(sys.argv[1], "train.py", "unused"):
    print("HELD", flush=True)
    time.sleep(600)
"""


def test_the_lock_of_a_killed_holder_is_taken_over(run):
    argv, model_dir = run
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(model_dir)],
                              stdout=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        assert holder.stdout.readline().strip() == "HELD"
        with pytest.raises(fileio.LockedError, match=f"PID {holder.pid}:"):
            with fileio.held(str(model_dir), "train.py", "unused"):
                pass
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    assert TRAIN.main([*argv, "--epochs=2"]) == 0  # the kernel freed a dead holder's lock


def test_an_out_in_use_is_refused_naming_its_holder_and_free_again_after(split_tree, tmp_path, capsys):
    out = tmp_path / "records"
    out.mkdir()
    argv = ["convert.py", f"--src={split_tree.root}", f"--out={out}", "--workers=1"]
    with fileio.held(str(out), "convert.py", "unused"):
        assert CONVERT.main(argv) == 1
        holder = f"convert.py on host {socket.gethostname()}, PID {os.getpid()}"
        assert _error_line(capsys, "convert.py") == (
            f"convert.py: error: {out} is in use by {holder}: wait for that conversion to end, or pass another --out")
        assert os.listdir(out) == []  # refused before anything was written
    assert CONVERT.main(argv) == 0
    assert (out / "manifest.json").is_file()
