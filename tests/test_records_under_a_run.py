"""Records that change under a training run: replaced, relabelled or gone.

A conversion into records that a run reads is refused by their lock
(test_locks.py); these are the cases no lock sees (a URL, another host, files
copied over by hand), made here by replacing the files while the run trains:
the run stops with one line, keeps the backup of what it trained on its own
records, and reports nothing from the others.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from support import cli
from support import records as records_lib
from support.records import sample_records
from model import callbacks
from model import evaluation
from model.commands import TRAIN

COMMON = ["--batch_size=6", "--image_size=32", "--verbose=0", "--noexport", "--nopictures"]


@pytest.fixture(scope="module")
def both(tmp_path_factory) -> tuple[Path, Path]:
    """(records, the same photos converted with the other class order): a relabelled set."""
    root = tmp_path_factory.mktemp("swap")
    records = sample_records(root, {"train": 6, "validation": 3, "test": 3}, seed=2)
    relabelled = root / "relabelled"
    records_lib.convert(root / "src", relabelled, classes=("dogs", "cats"))
    return records, relabelled


def _replace(records: Path, other: Path) -> None:
    """Puts `other`'s files in place of `records`' as a swap does: each renamed over, the manifest last."""
    names = sorted(os.listdir(other), key=lambda name: name == "manifest.json")
    for name in names:
        if (other / name).is_file():
            shutil.copy(other / name, records / f".{name}.new")
            os.replace(records / f".{name}.new", records / name)


def _at_batch(monkeypatch, n: int, action) -> None:
    """Runs `action` once, after the run's `n`-th training batch (counted over its epochs)."""
    real, seen = callbacks.EpochThroughput.on_train_batch_end, []

    def on_train_batch_end(self, batch, logs=None):
        real(self, batch, logs)
        seen.append(batch)
        if len(seen) == n:
            action()

    monkeypatch.setattr(callbacks.EpochThroughput, "on_train_batch_end", on_train_batch_end)


def _error_line(done) -> str:
    lines = [line for line in done.stderr.splitlines() if line.startswith("train.py: error:")]
    assert done.returncode == 1 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    return lines[0]


def _backed_up_epochs(model_dir: Path) -> int:
    return json.loads((model_dir / "backup" / "state.json").read_text())["epoch"]


@pytest.mark.parametrize("cache", ["--cache", "--nocache"])
def test_records_relabelled_mid_run_stop_it_with_the_last_backup_of_its_own(both, tmp_path, monkeypatch, cache):
    source, relabelled = both
    records, model_dir = tmp_path / "records", tmp_path / "run"
    shutil.copytree(source, records)
    _at_batch(monkeypatch, 3, lambda: _replace(records, relabelled))  # epoch 2's first batch of 2
    done = cli.run(TRAIN, f"--records={records}", f"--model_dir={model_dir}", *COMMON, cache, "--epochs=3")
    line = _error_line(done)
    assert f"{records} was replaced while this run read it" in line and "nothing was reported" in line, line
    assert _backed_up_epochs(model_dir) == 1  # epoch 2 read other records: no backup, history or checkpoint
    assert [e["epoch"] for e in json.loads((model_dir / "history.json").read_text())] == [0]
    assert sorted(p.name for p in (model_dir / "checkpoints").iterdir()) == ["epoch_001.keras"]
    assert not (model_dir / "results.json").exists() and "Test:" not in done.stdout


def test_records_replaced_before_the_test_report_give_no_report(both, tmp_path, monkeypatch):
    source, relabelled = both
    records, model_dir = tmp_path / "records", tmp_path / "run"
    shutil.copytree(source, records)
    real = evaluation.evaluate_split

    def evaluate_split(*args, **kwargs):  # the test split read from the other set
        _replace(records, relabelled)
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate_split", evaluate_split)
    done = cli.run(TRAIN, f"--records={records}", f"--model_dir={model_dir}", *COMMON, "--epochs=1")
    assert "was replaced while this run read it" in _error_line(done)
    assert not (model_dir / "results.json").exists() and not (model_dir / "eval_test").exists()
    assert "Test:" not in done.stdout
    assert _backed_up_epochs(model_dir) == 1


def test_a_shard_gone_mid_run_is_one_line_naming_it(both, tmp_path, monkeypatch):
    source, _ = both
    records, model_dir = tmp_path / "records", tmp_path / "run"
    shutil.copytree(source, records)
    shard = sorted(records.glob("*-train.tfrecord-*"))[0]
    _at_batch(monkeypatch, 3, shard.unlink)
    done = cli.run(TRAIN, f"--records={records}", f"--model_dir={model_dir}", *COMMON, "--nocache", "--epochs=4")
    line = _error_line(done)
    assert f"{shard.name} is missing" in line and "the last backup is kept" in line, line
    assert "Graph execution error" not in done.stderr
    assert 1 <= _backed_up_epochs(model_dir) < 4
