"""train.py end to end, as a subprocess, on generated records."""

import configparser
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from model import hardware, training
from pipeline import augment  # noqa: F401  registers DeviceAugmentation for load_model
from pipeline import sample_data, writer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    sample_data.write_sample(str(root / "src"), {"train": 12, "validation": 4, "test": 4}, seed=3)
    writer.convert_folder(str(root / "src"), str(root / "records"), workers=1, show_progress=False)
    return root / "records"


def run_train(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )


def test_train_writes_everything_and_resumes(records, tmp_path):
    model_dir = tmp_path / "run"
    common = [f"--records={records}", f"--model_dir={model_dir}", "--batch_size=6", "--image_size=64"]

    first = run_train(*common, "--epochs=1", "--save_h5")
    assert first.returncode == 0, first.stderr[-3000:]
    for name in ("model.keras", "model.h5", "history.json", "results.json", "training_curves.png",
                 "input_batch.png", "augmented_variants.png", "checkpoints/epoch_001.keras"):
        assert (model_dir / name).is_file(), name
    assert any((model_dir / "logs").rglob("events.out.tfevents.*"))
    history = json.loads((model_dir / "history.json").read_text())
    assert [entry["epoch"] for entry in history] == [0]
    assert history[0]["images_per_second"] > 0
    assert {"accuracy", "loss", "val_accuracy", "val_loss"} <= set(history[0])
    assert history[0]["limited_by"] in ("input", "compute") and history[0]["input_images_per_second"] > 0
    results = json.loads((model_dir / "results.json").read_text())
    assert set(results["test"]) >= {"accuracy", "loss"}
    assert results["setup"]["devices"].startswith("CPU only")
    assert results["setup"]["augmentation"].startswith("host")  # auto, without a GPU
    for key in ("devices", "strategy", "precision", "xla", "augmentation", "cache"):
        assert f"  {key}" in first.stderr, key
    assert "--mixed_precision on a machine without a GPU" not in first.stderr
    assert "Test: accuracy" in first.stdout

    # The same model_dir resumes after the epoch it stopped at.
    second = run_train(*common, "--epochs=2")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Epoch 1/2" not in second.stdout + second.stderr
    history = json.loads((model_dir / "history.json").read_text())
    assert [entry["epoch"] for entry in history] == [0, 1]
    assert (model_dir / "checkpoints/epoch_002.keras").is_file()

    model = keras.models.load_model(model_dir / "model.keras")
    batch = np.random.default_rng(0).random((3, 64, 64, 3), dtype=np.float32)
    probabilities = model.predict(batch, verbose=0)
    assert probabilities.shape == (3, 1)
    assert np.all((probabilities >= 0) & (probabilities <= 1))


def test_train_on_device_with_mixed_precision_and_xla(records, tmp_path):
    model_dir = tmp_path / "device"
    result = run_train(
        f"--records={records}", f"--model_dir={model_dir}", "--batch_size=6", "--image_size=64",
        "--epochs=1", "--augment_on=device", "--mixed_precision", "--jit_compile", "--nocache",
        "--profile_batches=1,2",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # CPU only: both GPU settings are warned about, naming their measured cost.
    assert "--mixed_precision on a machine without a GPU" in result.stderr
    assert "--jit_compile on a machine without a GPU" in result.stderr
    assert list((model_dir / "logs").rglob("*.xplane.pb"))  # the profiler trace
    setup = json.loads((model_dir / "results.json").read_text())["setup"]
    assert setup["precision"] == "mixed_bfloat16" and setup["xla"] == "on"
    assert setup["cache"].startswith("off (--nocache)")
    model = keras.models.load_model(model_dir / "model.keras")
    assert model.get_layer("augmentation") is not None
    assert model.output.dtype == "float32"


def test_train_rejects_missing_records(tmp_path):
    result = run_train(f"--records={tmp_path / 'nowhere'}", f"--model_dir={tmp_path / 'm'}", "--epochs=1")
    assert result.returncode != 0
    assert "convert.py" in result.stderr.strip().splitlines()[-1]

    result = run_train("--epochs=1")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("train.py: error: --records")


def test_gpu_extra_pins_the_same_tensorflow():
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    requires = config["options"]["install_requires"].split()
    tensorflow = next(r for r in requires if r.startswith("tensorflow=="))
    gpu = config["options.extras_require"]["gpu"].split()
    assert f"tensorflow[and-cuda]{tensorflow.removeprefix('tensorflow')}" in gpu
    assert "tensorboard-plugin-profile" in gpu


def test_augmentation_goes_to_the_device_only_with_a_gpu():
    config = training.TrainConfig(records="r")
    cpu = hardware.Hardware(gpus=(), cpu_cores=2)
    gpu = hardware.Hardware(gpus=("NVIDIA A100",), cpu_cores=16)
    assert training.resolve_augment_on(config, cpu).augment_on is training.AugmentOn.HOST
    assert training.resolve_augment_on(config, gpu).augment_on is training.AugmentOn.DEVICE
    host = training.TrainConfig(records="r", augment_on=training.AugmentOn.HOST)
    assert training.resolve_augment_on(host, gpu).augment_on is training.AugmentOn.HOST
    assert hardware.cpu_only_warnings(gpu, True, True) == []
    assert len(hardware.cpu_only_warnings(cpu, True, True)) == 2
