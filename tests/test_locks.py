"""A model_dir, or a conversion's --out, is held by one process at a time;
records being read are held by their readers together, and by no conversion.

A run is refused at once with one line naming the holder's program, PID and
host; a holder that was killed frees the folder at once (the lock is the
kernel's flock on the folder, which ends with the process).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from model.commands import EVALUATE
from model.commands import TRAIN
from pipeline import fileio
from pipeline.converter.commands import CONVERT
from pipeline.reader import guard

# How this process is named in a refused run's line: pytest's test worker.
HOST = socket.gethostname()


def _error_line(capsys, prog: str = "train.py") -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(f"{prog}: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_a_model_dir_in_use_is_refused_naming_its_holder(run, capsys):
    argv, model_dir = run
    with fileio.held(str(model_dir), "unused"):
        assert TRAIN.main([*argv, "--epochs=2"]) == 1
    line = _error_line(capsys)
    assert line.startswith(f"train.py: error: {model_dir} is in use by ") and line.endswith(
        f" (PID {os.getpid()}) on host {HOST}: wait for that run to end, or pass another --model_dir"), line
    assert json.loads((model_dir / "history.json").read_text())[-1]["epoch"] == 0  # nothing trained
    with fileio.held(str(model_dir), "unused"):  # free again once the holder let go
        pass


# A process that takes a folder's lock as the commands do, says so, and waits to be killed.
_HOLDER = """
import sys, time
from pipeline import fileio
with fileio.held(sys.argv[1], "unused"):
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
        with pytest.raises(fileio.LockedError, match=f" by python\\S* \\(PID {holder.pid}\\) on host"):
            with fileio.held(str(model_dir), "unused"):
                pass
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    assert TRAIN.main([*argv, "--epochs=2"]) == 0  # the kernel freed a dead holder's lock


def test_an_out_in_use_is_refused_naming_its_holder_and_free_again_after(split_tree, tmp_path, capsys):
    out = tmp_path / "records"
    out.mkdir()
    argv = ["convert.py", f"--src={split_tree.root}", f"--out={out}", "--workers=1"]
    with fileio.held(str(out), "unused"):
        assert CONVERT.main(argv) == 1
        line = _error_line(capsys, "convert.py")
        assert line.startswith(f"convert.py: error: {out} is in use by ") and line.endswith(
            f" (PID {os.getpid()}) on host {HOST}: wait for it to end, or pass another --out"), line
        assert os.listdir(out) == []  # refused before anything was written
    assert CONVERT.main(argv) == 0
    assert (out / "manifest.json").is_file()


def test_records_being_read_are_not_converted_over_and_readers_share_them(split_tree, split_records, tmp_path, capsys):
    records = tmp_path / "records"
    shutil.copytree(split_records[0], records)
    before = {p.name: p.read_bytes() for p in records.iterdir() if p.is_file()}
    with guard.hold(str(records)), guard.hold(str(records)):  # two readers at once
        argv = ["convert.py", f"--src={split_tree.root}", f"--out={records}", "--overwrite", "--workers=1"]
        assert CONVERT.main(argv) == 1
        line = _error_line(capsys, "convert.py")
        assert line.startswith(f"convert.py: error: {records} is in use by ") and f"(PID {os.getpid()})" in line
    assert {p.name: p.read_bytes() for p in records.iterdir() if p.is_file()} == before


def test_records_being_converted_are_not_read(finished_run, split_records, capsys):
    argv, model_dir = finished_run
    records = str(split_records[0])
    with fileio.held(records, "unused"):  # as convert.py holds its --out
        assert EVALUATE.main(["evaluate.py", f"--model_dir={model_dir}", f"--records={records}"]) == 1
        line = _error_line(capsys, "evaluate.py")
    assert line.startswith(f"evaluate.py: error: {records} is in use by ") and line.endswith(
        f" (PID {os.getpid()}) on host {HOST}: wait for that conversion to end, then run again"), line
