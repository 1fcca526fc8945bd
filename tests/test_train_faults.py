"""train.py under faults: kills at any moment, bad settings, memory.

(Reruns of a finished run, refused resumes and bad flags: test_train.py.)

The kills are SIGKILLs of train.py subprocesses by PID: inside a backup write
(epoch ends and mid-epoch backups share that write, `run_dir.Backup._save`)
and after the last epoch's backup; afterwards the model_dir must resume from
the last complete backup.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import textwrap
from pathlib import Path

import pytest

from support import cli
from support import processes
from support.records import sample_records
from pipeline import cli as cli_lib
from pipeline import schema
from model import run_config
from model import run_plan
from model.commands import TRAIN
from pipeline.converter.commands import CONVERT

COMMON = ["--batch_size=6", "--image_size=32", "--nocache", "--verbose=2", "--noexport", "--nopictures"]


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> Path:
    return sample_records(tmp_path_factory.mktemp("train_faults"), {"train": 6, "validation": 3}, seed=1)


def run_train(*args: str) -> subprocess.CompletedProcess:
    """train.py's main, in this process."""
    return cli.run(TRAIN, *args)


def _start_and_kill_at(args: list[str], marker: str) -> str:
    """Starts `python train.py`, SIGKILLs it by PID once `marker` is printed.

    Returns:
      Everything the process printed up to the kill.
    """
    with processes.start("train.py", *args, merge_stderr=True) as process:
        return processes.kill_at(process, marker)


def _history_epochs(model_dir: Path) -> list[int]:
    return [entry["epoch"] for entry in json.loads((model_dir / "history.json").read_text())]


# A driver that runs train.py's main, but whose second backup write stops half-way
# through its weights file, as a kill in the middle of the write would leave it.
_DRIVER = textwrap.dedent(
    """
    import sys, time
    import keras
    from model.commands import TRAIN

    calls = []
    real_save_weights = keras.Model.save_weights

    def save_weights(self, filepath, *args, **kwargs):
        calls.append(filepath)
        if len(calls) < 2:
            return real_save_weights(self, filepath, *args, **kwargs)
        with open(filepath, "wb") as f:
            f.write(b"\\x89HDF\\r\\n\\x1a\\n" + b"\\0" * 100)  # the first bytes of an HDF5 file
        print("INSIDE_BACKUP_WRITE", flush=True)
        time.sleep(600)

    keras.Model.save_weights = save_weights
    TRAIN.run()
    """
)


def test_kill_inside_a_mid_epoch_backup_write_resumes_from_the_backup_before(records, split_tree, tmp_path):
    model_dir = tmp_path / "run"
    driver = tmp_path / "driver.py"
    driver.write_text(_DRIVER)
    args = [f"--records={records}", f"--model_dir={model_dir}", *COMMON, "--epochs=2", "--steps_per_epoch=6",
            "--backup_every_steps=2"]
    manifest = (records / "manifest.json").read_bytes()
    with processes.start(driver, *args, merge_stderr=True) as process:
        for line in process.lines():
            if "INSIDE_BACKUP_WRITE" in line:  # the second backup: epoch 1, batch 4
                break
        # While it trains, its records are held: a conversion into them is refused, naming it.
        convert = cli.run(CONVERT, f"--src={split_tree.root}", f"--out={records}", "--overwrite", "--workers=1")
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert convert.returncode == 1 and convert.stderr.strip().endswith(
        f"{records} is in use by driver.py (PID {process.pid}) on host {socket.gethostname()}: "
        "wait for it to end, or pass another --out"), convert.stderr
    assert (records / "manifest.json").read_bytes() == manifest
    state = json.loads((model_dir / "backup" / "state.json").read_text())
    assert (state["epoch"], state["step"]) == (0, 2)

    resumed = run_train(*args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "backup: the state at epoch 1, batch 4 is saved" in resumed.stderr  # the rest of epoch 1
    assert _history_epochs(model_dir) == [0, 1]
    # The half-written file was written again whole, then replaced: the last backup alone is left.
    assert sorted(p.name for p in (model_dir / "backup").iterdir()) == ["epoch_0002.weights.h5", "state.json"]
    assert sorted(p.name for p in (model_dir / "checkpoints").iterdir()) == ["epoch_001.keras", "epoch_002.keras"]


def test_kill_after_the_last_epoch_finishes_without_training_again(records, tmp_path):
    """Killed after the last epoch's backup, around the model and results saves. (A kill
    inside an epoch: test_resume.py; inside a backup write: the test above.)"""
    model_dir = tmp_path / "run"
    args = [f"--records={records}", f"--model_dir={model_dir}", *COMMON, "--epochs=2"]
    _start_and_kill_at(args, "the state after epoch 2 is saved")
    finished = run_train(*args)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "Epoch 1/2" not in finished.stdout + finished.stderr
    assert "Epoch 2/2" not in finished.stdout + finished.stderr
    assert (model_dir / "model.keras").is_file() and (model_dir / "results.json").is_file()
    assert _history_epochs(model_dir) == [0, 1]
    assert not list(model_dir.rglob(".*partial*"))


def test_train_config_refuses_what_the_flags_refuse():
    """The config alone checks the bounds its fields state, from train.py and from Python alike (test_flags)."""
    for field, rule in cli_lib.settings(run_config.TrainConfig).items():
        if rule.at_least is not None:
            with pytest.raises(ValueError, match=f"^flag --{field}={rule.at_least - 1}: "):
                run_config.TrainConfig(records="r", **{field: rule.at_least - 1})
    with pytest.raises(ValueError, match="learning_rate"):
        run_config.TrainConfig(records="r", learning_rate=0.0)


def test_the_cache_is_used_only_when_it_fits(records):
    manifest = schema.read_manifest(str(records))
    config = run_config.TrainConfig(records=str(records), image_size=100)
    images = manifest.splits["train"].num_examples + manifest.splits["validation"].num_examples
    need = images * 100 * 100 * 3
    fits, reason = run_plan.decide_cache(config, manifest, int(need / run_plan.CACHE_MEMORY_SHARE) + 1)
    assert fits and reason.startswith(f"on: {images} decoded images")
    fits, reason = run_plan.decide_cache(config, manifest, available_bytes=need)
    assert not fits and "streaming from the records" in reason
    no_cache = run_config.TrainConfig(records=str(records), image_size=100, cache=False)
    assert run_plan.decide_cache(no_cache, manifest, available_bytes=10**15) == (
        False, "off (--nocache): every epoch decodes the records"
    )
