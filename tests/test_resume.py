"""Exact resume: each epoch from (seed, epoch), backups mid-epoch, SIGTERM and Ctrl-C, kill -9.

The reader's passes are checked batch for batch; a run stopped or killed
mid-epoch and resumed must end with the weights and history of a run never
interrupted. The stops and kills are real signals to `python train.py`
processes, by PID; the resumed runs are train.py's main in this process,
except under --deterministic (op determinism is for the whole process).
"""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import keras
import numpy as np
import pytest

from support import cli
from support import processes
from support.records import sample_records
from pipeline.reader import augment
from pipeline.reader import dataset
from pipeline.reader import epochs
from model import run_config
from model import run_dir
from model import training
from model.commands import TRAIN

COMMON = ["--batch_size=6", "--image_size=32", "--verbose=2", "--noexport", "--nopictures"]
TRAIN_IMAGES = 40  # 7 batches of 6


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> Path:
    return sample_records(tmp_path_factory.mktemp("resume"), {"train": 20, "validation": 4}, seed=4)


def _history(model_dir: Path) -> list[dict]:
    path = model_dir / "history.json"
    return json.loads(path.read_text()) if path.exists() else []


def _state(model_dir: Path) -> dict:
    return json.loads((model_dir / "backup" / "state.json").read_text())


def _weights(model_dir: Path) -> list[np.ndarray]:
    return keras.models.load_model(model_dir / "model.keras").get_weights()


def _assert_same_run(resumed: Path, uninterrupted: Path) -> None:
    for a, b in zip(_weights(resumed), _weights(uninterrupted), strict=True):
        np.testing.assert_array_equal(a, b)
    keys = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy")
    assert [{k: e[k] for k in keys} for e in _history(resumed)] == [
        {k: e[k] for k in keys} for e in _history(uninterrupted)
    ]


# --------------------------------------------------------------------------
# The reader: a pass is the epoch its position names.


def _images(ds) -> list[np.ndarray]:
    return [images.numpy() for images, _ in ds]


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("cache", [True, False], ids=["cached", "streamed"])
def test_each_pass_is_the_epoch_its_position_names_from_the_batch_it_names(records, cache):
    config = dataset.InputConfig(image_size=(16, 16), batch_size=6, seed=5, cache=cache,
                                 augmentation=augment.NOTEBOOK_AUGMENTATION, shuffle_buffer=8)
    position = epochs.EpochPosition()
    passes = dataset.train_passes(str(records), config, position=position)
    assert passes.rest_of_epoch is None and passes.steps_per_epoch == 7 and not passes.endless

    def epoch(number: int) -> list[np.ndarray]:
        position.move_to(number)
        return _images(passes.epochs)

    first, second = epoch(0), epoch(1)
    assert len(first) == len(second) == int(passes.epochs.cardinality()) == 7  # the reader states the length
    assert not np.array_equal(first[0], second[0])  # another order and other draws
    assert _same(epoch(0), first)  # the same epoch again: the same batches
    # Built where a resumed run starts: the rest of that epoch, stated 2 batches long, then whole epochs.
    position = epochs.EpochPosition(1, 5)
    resumed = dataset.train_passes(str(records), config, position=position)
    assert int(resumed.rest_of_epoch.cardinality()) == 2 and int(resumed.epochs.cardinality()) == 7
    assert _same(_images(resumed.rest_of_epoch), second[5:])
    position.move_to(1)
    assert _same(_images(resumed.epochs), second)
    # --steps_per_epoch beyond the epoch: its batches, then again from the first.
    long = dataset.train_passes(str(records), config, position=epochs.EpochPosition(1), steps_per_epoch=9)
    repeated = _images(long.epochs)
    assert _same(repeated, second + second[:2]) and long.steps_per_epoch == 9
    assert _same(_images(dataset.train_dataset(str(records), config, position=epochs.EpochPosition(1, 8),
                                               steps_per_epoch=9)), repeated[8:])


# --------------------------------------------------------------------------
# In this process: a stop asked for at a chosen batch.


class StopAtCheck(threading.Event):
    """A stop request that arrives as the trainer checks for the `n`-th time (after its n-th batch)."""

    def __init__(self, n: int):
        super().__init__()
        self.checks_left = n

    def is_set(self) -> bool:
        self.checks_left -= 1
        if self.checks_left == 0:
            self.set()
        return super().is_set()


@pytest.mark.parametrize("cache", [True, False], ids=["cached", "streamed"])
def test_a_stop_mid_epoch_backs_up_that_batch_and_resumes_to_the_uninterrupted_run(records, tmp_path, cache):
    settings = dict(records=str(records), batch_size=6, image_size=32, epochs=2, verbose=0, cache=cache, export=False, pictures=False,
                    backup_every_steps=4)
    training.train_and_evaluate(run_config.TrainConfig(model_dir=str(tmp_path / "whole"), **settings))
    stopped = run_config.TrainConfig(model_dir=str(tmp_path / "stopped"), **settings)
    with pytest.raises(run_dir.Stopped) as raised:
        # One check before training, one after each batch: epoch 2, after its second batch.
        training.train_and_evaluate(stopped, StopAtCheck(1 + 7 + 2))
    assert (raised.value.epoch, raised.value.step, raised.value.backed_up) == (1, 2, True)
    state = _state(tmp_path / "stopped")
    assert (state["epoch"], state["step"]) == (1, 2) and state["metrics"] and state["counters"]
    assert [e["epoch"] for e in _history(tmp_path / "stopped")] == [0]

    training.train_and_evaluate(stopped)
    _assert_same_run(tmp_path / "stopped", tmp_path / "whole")


def test_backups_every_n_batches_and_at_the_epoch_end(records, tmp_path):
    model_dir = tmp_path / "run"
    done = cli.run(TRAIN, f"--records={records}", f"--model_dir={model_dir}", *COMMON, "--epochs=1",
                   "--steps_per_epoch=5", "--backup_every_steps=2", "--nocache")
    assert done.returncode == 0, done.stderr[-3000:]
    for batch in (2, 4):
        assert f"backup: the state at epoch 1, batch {batch} is saved" in done.stderr
    assert "backup: the state after epoch 1 is saved" in done.stderr
    assert (_state(model_dir)["epoch"], _state(model_dir)["step"]) == (1, 0)
    assert [p.name for p in (model_dir / "backup").iterdir() if p.suffix == ".h5"] == ["epoch_0001.weights.h5"]
    assert not list(model_dir.rglob("*.png"))  # --nopictures


def test_mid_epoch_backups_are_refused_on_the_tf_data_service():
    with pytest.raises(ValueError, match="resumes at the epoch"):
        run_config.TrainConfig(records="r", data_service="grpc://127.0.0.1:5050", backup_every_steps=10)


# --------------------------------------------------------------------------
# Real processes: SIGTERM, Ctrl-C and kill -9, by PID.


def _start(model_dir: Path, records: Path, *flags: str) -> processes.Process:
    return processes.start("train.py", f"--records={records}", f"--model_dir={model_dir}", *COMMON, *flags,
                           merge_stderr=True)


def _signal_at(process: processes.Process, marker: str, signum: int) -> str:
    """Sends `signum` once `marker` is printed; the whole output once the process has ended."""
    for line in process.lines():
        if marker in line:
            os.kill(process.pid, signum)
            break
    process.wait()
    return process.output()[0]


def test_sigterm_and_ctrl_c_stop_at_a_batch_with_its_backup_and_the_run_resumes_there(records, tmp_path):
    model_dir = tmp_path / "run"
    flags = ["--epochs=2", "--steps_per_epoch=15", "--backup_every_steps=2", "--nocache"]
    for signum, status, epoch in ((signal.SIGTERM, 143, 0), (signal.SIGINT, 130, 1)):
        with _start(model_dir, records, *flags) as process:
            output = _signal_at(process, f"backup: the state at epoch {epoch + 1}, batch 2 is", signum)
        name = signal.Signals(signum).name
        assert process.returncode == status, output[-3000:]
        (line,) = [line for line in output.splitlines() if line.startswith("train.py: stopped")]
        state = _state(model_dir)
        assert state["epoch"] == epoch and 2 <= state["step"] < 15, state
        assert line == (f"train.py: stopped by {name} at epoch {epoch + 1}, after batch {state['step']}: its "
                        f"state is backed up in {model_dir / 'backup'}; run the same command to resume")
        assert "Traceback" not in output
        assert [e["epoch"] for e in _history(model_dir)] == list(range(epoch))

    resumed = cli.run(TRAIN, f"--records={records}", f"--model_dir={model_dir}", *COMMON, *flags)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {model_dir / 'backup'} at epoch 2, after batch {state['step']}" in resumed.stderr
    assert "Epoch 2/2" in resumed.stdout + resumed.stderr
    assert [e["epoch"] for e in _history(model_dir)] == [0, 1]


# Under --deterministic, op determinism holds for the whole process: the resume and the
# uninterrupted run are train.py's main, one after the other, in one new interpreter.
_RESUME_THEN_WHOLE = """
import sys
from model.commands import TRAIN
resumed, whole = sys.argv[1:3], sys.argv[3:5]
flags = sys.argv[5:]
assert TRAIN.main(["train.py", *resumed, *flags]) == 0
print("THE UNINTERRUPTED RUN", file=sys.stderr, flush=True)
assert TRAIN.main(["train.py", *whole, *flags]) == 0
"""


def test_kill_9_mid_epoch_with_deterministic_resumes_to_identical_weights(records, tmp_path):
    flags = ["--epochs=2", "--backup_every_steps=3", "--deterministic"]
    with _start(tmp_path / "killed", records, *flags) as killed:
        processes.kill_at(killed, "backup: the state at epoch 1, batch 3 is saved")
    assert (_state(tmp_path / "killed")["epoch"], _state(tmp_path / "killed")["step"]) >= (0, 3)
    assert _history(tmp_path / "killed") == []  # the epoch the kill cut short left no entry
    driver = tmp_path / "resume_then_whole.py"
    driver.write_text(_RESUME_THEN_WHOLE)
    runs = [f"--records={records}", f"--model_dir={tmp_path / 'killed'}",
            f"--records={records}", f"--model_dir={tmp_path / 'whole'}"]
    done = processes.run(driver, *runs, *COMMON, *flags)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed, whole = done.stderr.split("THE UNINTERRUPTED RUN")
    # The resume went on from the backup: it never passed batch 3 of epoch 1 again.
    assert "epoch 1, batch 3 is saved" not in resumed and "epoch 1, batch 3 is saved" in whole
    assert "state after epoch 2 is saved" in resumed
    _assert_same_run(tmp_path / "killed", tmp_path / "whole")
