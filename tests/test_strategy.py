"""train.py --strategy=mirrored on two logical CPU devices: same accuracy, resumes."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import pytest

from support import processes
from support.records import sample_records
from model import run_config
from model import training

# The machine's CPU split into two logical devices before TensorFlow starts,
# then train.py's own main: a mirrored run gets two replicas.
_TWO_DEVICES = textwrap.dedent(
    """
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from model.commands import TRAIN
    TRAIN.run()
    """
)
COMMON = ["--batch_size=10", "--image_size=32", "--epochs=3", "--seed=3", "--verbose=2", "--noexport",
          "--nopictures"]


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> Path:
    return sample_records(tmp_path_factory.mktemp("strategy"), {"train": 30, "validation": 15}, seed=2)


@pytest.fixture(scope="module")
def driver(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("driver") / "train_on_two_devices.py"
    path.write_text(_TWO_DEVICES)
    return path


def _run(program: Path, *args: str) -> subprocess.CompletedProcess:
    result = processes.run(program, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _last_val_accuracy(model_dir: Path) -> float:
    return json.loads((model_dir / "history.json").read_text())[-1]["val_accuracy"]


def test_mirrored_on_two_devices_learns_as_one_device_and_resumes_after_a_kill(records, driver, tmp_path):
    # The one-device reference: the same settings, trained in this process.
    single = tmp_path / "single"
    training.train_and_evaluate(run_config.TrainConfig(
        records=str(records), model_dir=str(single), batch_size=10, image_size=32, epochs=3, seed=3, verbose=0,
        export=False, pictures=False,
    ))

    mirrored = tmp_path / "mirrored"
    args = [f"--records={records}", f"--model_dir={mirrored}", "--strategy=mirrored", *COMMON]
    # Killed by PID once the first epoch's state is backed up, then resumed.
    with processes.start(driver, *args, merge_stderr=True) as process:
        output = processes.kill_at(process, "the state after epoch 1 is saved")
    assert "mirrored: 2 replicas, global batch 10" in output

    resumed = _run(driver, *args)
    log = resumed.stdout + resumed.stderr
    assert "Epoch 2/3" in log and "Epoch 1/3" not in log
    history = json.loads((mirrored / "history.json").read_text())
    assert [entry["epoch"] for entry in history] == [0, 1, 2]
    results = json.loads((mirrored / "results.json").read_text())
    assert results["setup"]["strategy"].startswith("mirrored: 2 replicas")

    # Both learn the sample (chance is 0.5; 3 epochs reached 0.80 on one device and on two) and end
    # within noise of each other: 30 validation images, so one image is 0.033.
    single_accuracy, mirrored_accuracy = _last_val_accuracy(single), _last_val_accuracy(mirrored)
    assert single_accuracy >= 0.65 and mirrored_accuracy >= 0.65, (single_accuracy, mirrored_accuracy)
    assert abs(single_accuracy - mirrored_accuracy) <= 0.15, (single_accuracy, mirrored_accuracy)


def test_mirrored_on_two_jax_devices_is_one_device_split_in_two(records, tmp_path):
    """On JAX, --strategy=mirrored is keras.distribution.DataParallel over the local devices: 30 images in
    batches of 10 split 5 + 5 compute what one device computes, up to the order of a sum."""
    two_devices = processes.env(KERAS_BACKEND="jax", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    logs = {}
    for strategy in ("default", "mirrored"):
        model_dir = tmp_path / strategy
        result = processes.run("train.py", f"--records={records}", f"--model_dir={model_dir}",
                               f"--strategy={strategy}", "--deterministic", *COMMON, environment=two_devices)
        assert result.returncode == 0, result.stderr[-3000:]
        logs[strategy] = json.loads((model_dir / "history.json").read_text())
    assert "mirrored: 2 replicas, global batch 10" in result.stderr
    for one, two in zip(logs["default"], logs["mirrored"]):
        assert two["val_accuracy"] == one["val_accuracy"]
        assert two["loss"] == pytest.approx(one["loss"], abs=1e-4)
        assert two["val_loss"] == pytest.approx(one["val_loss"], abs=1e-4)
