"""A disk that fills: one line naming where and what was needed, exit 1, nothing half-written.

The full disk is a wrapper, not a mount: the converter's shard writer, or the
trainer's weights writer, raises what a full disk raises after some bytes.
"""

from __future__ import annotations

import errno
import json
import os

import keras
import pytest
import tensorflow as tf

from model.commands import TRAIN
from pipeline import fileio
from pipeline import schema
from pipeline.converter.commands import CONVERT
from support.records import files


_open_file = fileio.open_file


class _FullDiskFile:
    """A shard file whose disk fills after `room` bytes, as the OS reports it (ENOSPC)."""

    room = 2_000

    def __init__(self, path: str):
        self._file = _open_file(path, "wb")
        self._written = 0

    def write(self, data: bytes) -> None:
        self._written += len(data)
        if self._written > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self._file.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._file.close()


def _shards_fill_the_disk(path: str, mode: str = "rb"):
    is_shard = mode == "wb" and f".{schema.FILE_FORMAT}-" in os.path.basename(path)
    return _FullDiskFile(path) if is_shard else _open_file(path, mode)


def _one_error_line(capsys, prog: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(f"{prog}: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_a_conversion_that_fills_the_disk_says_so_and_leaves_the_old_records(
    split_tree, split_records, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "records"
    assert CONVERT.main(["convert.py", f"--src={split_tree.root}", f"--out={out}", "--workers=1"]) == 0
    before = files(out)
    monkeypatch.setattr(fileio, "open_file", _shards_fill_the_disk)
    status = CONVERT.main(["convert.py", f"--src={split_tree.root}", f"--out={out}", "--workers=1", "--overwrite"])
    assert status == 1
    line = _one_error_line(capsys, "convert.py")
    needed = sum(image.path.stat().st_size for image in split_tree.images)
    assert line.startswith(f"convert.py: error: no space left writing to {out}, about {needed / 1e6:,.1f} MB"), line
    assert "MB are free" in line and "the old records are untouched" in line
    assert files(out) == before  # byte for byte
    assert sorted(os.listdir(out)) == sorted(before)  # the scratch folder is gone


def test_a_training_run_that_fills_the_disk_keeps_its_backup_and_resumes(split_records, tmp_path, monkeypatch, capsys):
    records, _ = split_records
    model_dir = tmp_path / "run"
    argv = ["train.py", f"--records={records}", f"--model_dir={model_dir}", "--epochs=2", "--batch_size=6",
            "--image_size=32", "--nocache", "--verbose=0", "--steps_per_epoch=2", "--noexport",
            "--nopictures"]
    real_save_weights, calls = keras.Model.save_weights, []

    def save_weights(self, filepath, *args, **kwargs):
        calls.append(filepath)
        if len(calls) == 2:  # the second epoch's backup: the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", filepath)
        return real_save_weights(self, filepath, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(keras.Model, "save_weights", save_weights)
        assert TRAIN.main(argv) == 1
    line = _one_error_line(capsys, "train.py")
    assert line.startswith(f"train.py: error: no space left writing to {model_dir}"), line
    assert "the last complete backup is kept" in line and "run the same command again" in line
    state = json.loads((model_dir / "backup" / "state.json").read_text())
    assert state["epoch"] == 1 and (model_dir / "backup" / state["weights"]).is_file()

    assert TRAIN.main(argv) == 0  # room again: the same command resumes
    assert [entry["epoch"] for entry in json.loads((model_dir / "history.json").read_text())] == [0, 1]
    assert fileio.is_disk_full(OSError(errno.EDQUOT, "quota")) and not fileio.is_disk_full(OSError(errno.EACCES, "no"))


def test_a_text_write_that_fails_leaves_the_old_file_and_no_part(tmp_path, monkeypatch):
    folder = tmp_path / "taken"
    folder.mkdir()
    with pytest.raises(IsADirectoryError):
        fileio.write_text(str(folder), "new")
    path = tmp_path / "results.json"
    path.write_text("old")

    def full_disk(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError, match="No space"):
        fileio.write_text(str(path), "new")
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["results.json", "taken"]
