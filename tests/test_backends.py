"""The model commands on either Keras backend (issue #31).

The tests marked `backends` run in both sessions of the test command, the second
under KERAS_BACKEND=jax (scripts/test.sh): train.py with mid-epoch backups,
evaluate.py, predict.py and the From-Python API on the session's backend, and
run.json's backend, which a resume on another backend is refused over. The kill -9
test runs train.py under JAX as real processes from the TensorFlow session.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

from support import cli
from support import processes
from pipeline.reader import augment
from pipeline.reader import dataset
from model import backend
from model import cnn
from model import hardware
from model import run_dir
from model.commands import EVALUATE, PREDICT, TRAIN

ON = keras.backend.backend()  # the session's backend
backends = pytest.mark.backends
SMALL = ["--image_size=32", "--batch_size=6", "--nocache", "--nopictures", "--noexport", "--verbose=2"]


def _json(path: Path):
    return json.loads(path.read_text())


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def journey(split_records, tmp_path_factory):
    """(train.py's argv, model_dir, its CompletedProcess): 2 epochs of 2 batches with a backup after every
    batch, in this process on the session's backend."""
    records, _ = split_records
    model_dir = tmp_path_factory.mktemp("journey") / "run"
    argv = [f"--records={records}", f"--model_dir={model_dir}", *SMALL, "--steps_per_epoch=2", "--epochs=2",
            "--backup_every_steps=1"]
    return argv, model_dir, cli.run(TRAIN, *argv)


@backends
def test_train_evaluate_and_predict_run_on_the_sessions_backend(journey, split_tree, tmp_path):
    _, model_dir, trained = journey
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "backup: the state at epoch 2, batch 1 is saved" in trained.stderr  # mid-epoch, then the epoch's end
    assert "backup: the state after epoch 2 is saved" in trained.stderr
    assert _json(model_dir / run_dir.RUN_FILENAME)[run_dir.BACKEND_KEY] == ON
    setup = _json(model_dir / "results.json")["setup"]
    assert setup["backend"] == backend.describe() and setup["backend"].startswith(f"{ON} ")
    assert setup["devices"] == hardware.detect().describe()

    evaluated = cli.run(EVALUATE, f"--model_dir={model_dir}", f"--out={tmp_path / 'eval'}")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    metrics = _json(tmp_path / "eval" / "metrics.json")
    # The model train.py evaluated at its end, on the same split: the same figures.
    test = _json(model_dir / "results.json")["test"]
    assert (metrics["accuracy"], metrics["loss"]) == pytest.approx((test["accuracy"], test["loss"]), abs=1e-6)
    from_records = {row["filename"]: float(row["p_dogs"]) for row in _csv(tmp_path / "eval" / "predictions.csv")}

    photos = {im.relpath: str(im.path) for im in split_tree.split("test")}
    predicted = cli.run(PREDICT, f"--model_dir={model_dir}", f"--output={tmp_path / 'p.csv'}", *photos.values())
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    by_path = {row["path"]: float(row["p_dogs"]) for row in _csv(tmp_path / "p.csv")}
    # The test split is stored as-is: a photo reaches the model as its record does.
    assert sorted(from_records) == sorted(photos)
    for relpath, path in photos.items():
        assert by_path[path] == pytest.approx(from_records[relpath], abs=1e-5)


@backends
@pytest.mark.filterwarnings("ignore:`shuffle=True` was passed")  # fit's default; the dataset shuffles itself
def test_the_from_python_api_trains_on_the_sessions_backend(split_records):
    """As README.md's "From Python" shows it, smaller."""
    records = str(split_records[0])
    inputs = dataset.InputConfig(image_size=(32, 32), batch_size=6, cache=True)
    train = dataset.train_dataset(records, dataclasses.replace(inputs, augmentation=augment.NOTEBOOK_AUGMENTATION))
    validation = dataset.eval_dataset(records, "validation", inputs)
    model = cnn.compile_cnn(cnn.build_cnn((32, 32)))
    history = model.fit(train, validation_data=validation, epochs=2, verbose=0).history
    assert len(history["loss"]) == 2 and np.isfinite(history["loss"]).all()
    assert all(0.0 <= value <= 1.0 for value in history["val_accuracy"])


@backends
@pytest.mark.parametrize("stored", [None, backend.TENSORFLOW, backend.JAX], ids=["before-the-key", "tensorflow", "jax"])
def test_a_run_resumes_only_on_its_own_backend_and_an_old_run_json_is_tensorflows(journey, tmp_path, stored):
    argv, model_dir, _ = journey
    copy = tmp_path / "run"
    shutil.copytree(model_dir, copy)
    settings = _json(copy / run_dir.RUN_FILENAME)
    settings.pop(run_dir.BACKEND_KEY, None)
    old = settings if stored is None else {**settings, run_dir.BACKEND_KEY: stored}
    (copy / run_dir.RUN_FILENAME).write_text(json.dumps(old))

    done = cli.run(TRAIN, *(arg.replace(str(model_dir), str(copy)) for arg in argv))
    runs_on = stored or backend.TENSORFLOW  # a run.json from before the key was kept is a TensorFlow run's
    if runs_on == ON:  # the finished run, found as it was: nothing trained, the key kept or gained
        assert done.returncode == 0 and "already holds a finished run" in done.stdout, done.stderr[-3000:]
        assert _json(copy / run_dir.RUN_FILENAME) == {**settings, run_dir.BACKEND_KEY: ON}
        return
    assert done.returncode == 1
    (line,) = processes.our_lines(done.stderr)
    assert line.startswith(f"train.py: error: --model_dir {copy} holds a run with other settings (Keras backend: "
                           f"trained under {runs_on}, this process runs {ON}")
    assert "would not resume exactly" in line and f"run with KERAS_BACKEND={runs_on} to resume it" in line
    assert _json(copy / run_dir.RUN_FILENAME) == old  # untouched


@backends
def test_an_unsupported_backend_is_refused_naming_keras_backend_and_the_supported_ones():
    assert backend.check() == ON
    assert backend.check(backend.JAX) == backend.JAX
    for other in ("torch", "numpy", "openvino"):
        with pytest.raises(backend.BackendError, match=f"KERAS_BACKEND={other}: .*tensorflow or jax only"):
            backend.check(other)


def test_an_unsupported_backend_is_one_line_before_keras_is_imported():
    # torch is not installed here: Keras's own import would fail with a traceback.
    done = processes.run("train.py", "--records=r", environment=processes.env(KERAS_BACKEND="torch"))
    assert done.returncode == 1
    assert processes.our_lines(done.stderr) == [
        "train.py: error: KERAS_BACKEND=torch: the model commands run on tensorflow or jax only (the input is "
        "tf.data, the export a SavedModel): unset KERAS_BACKEND, or set it to jax"]


def test_the_cpu_warnings_are_the_backends():
    tf_cpu, jax_cpu = hardware.Hardware((), 2), hardware.Hardware((), 2, backend.JAX, cpu_devices=1)
    assert [w.split(":")[0] for w in hardware.cpu_only_warnings(tf_cpu, True, True)] == [
        "--mixed_precision on a machine without a GPU", "--jit_compile on a machine without a GPU"]
    (warning,) = hardware.cpu_only_warnings(jax_cpu, True, True)  # under JAX XLA compiles every step anyway
    assert warning.startswith("--mixed_precision") and "under JAX" in warning
    assert hardware.cpu_only_warnings(hardware.Hardware(("NVIDIA A100",), 16, backend.JAX), True, True) == []
    assert jax_cpu.describe() == "CPU only (2 cores; JAX sees 1 CPU device(s))"


# --------------------------------------------------------------------------
# kill -9 under JAX: real processes, started from this (TensorFlow) session.

# The resume and the uninterrupted run are train.py's main in one new interpreter
# (--deterministic holds for the whole process); then predict.py from the resumed run.
_RESUME_THEN_WHOLE = """
import sys
from model.commands import PREDICT, TRAIN
resumed, whole, output, photo = sys.argv[1:3], sys.argv[3:5], sys.argv[5], sys.argv[6]
flags = sys.argv[7:]
assert TRAIN.main(["train.py", *resumed, *flags]) == 0
print("THE UNINTERRUPTED RUN", file=sys.stderr, flush=True)
assert TRAIN.main(["train.py", *whole, *flags]) == 0
assert PREDICT.main(["predict.py", resumed[1], f"--output={output}", photo]) == 0
"""


def test_kill_9_mid_epoch_under_jax_resumes_to_the_uninterrupted_runs_weights(split_records, split_tree, tmp_path):
    records, _ = split_records
    # XLA's compiled steps kept on disk: the later processes skip the compiles (6 CPU-s each), same code.
    jax_env = processes.env(KERAS_BACKEND=backend.JAX, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "xla"),
                            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    flags = [*SMALL, "--epochs=2", "--backup_every_steps=2", "--deterministic"]  # 4 batches an epoch
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    with processes.start("train.py", f"--records={records}", f"--model_dir={killed}", *flags, environment=jax_env,
                         merge_stderr=True) as process:
        processes.kill_at(process, "backup: the state at epoch 1, batch 2 is saved")
    state = _json(killed / "backup" / "state.json")
    assert (state["epoch"], state["step"]) == (0, 2) and not (killed / "history.json").exists()

    driver = tmp_path / "resume_then_whole.py"
    driver.write_text(_RESUME_THEN_WHOLE)
    photo = str(split_tree.split("test")[0].path)
    done = processes.run(driver, f"--records={records}", f"--model_dir={killed}", f"--records={records}",
                         f"--model_dir={whole}", tmp_path / "jax.csv", photo, *flags, environment=jax_env)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed, _ = done.stderr.split("THE UNINTERRUPTED RUN")
    assert f"resuming from {killed / 'backup'} at epoch 1, after batch 2" in resumed
    assert "epoch 1, batch 2 is saved" not in resumed and "state after epoch 2 is saved" in resumed
    for run in (killed, whole):
        assert _json(run / run_dir.RUN_FILENAME)[run_dir.BACKEND_KEY] == backend.JAX
    for a, b in zip(keras.models.load_model(killed / "model.keras").get_weights(),
                    keras.models.load_model(whole / "model.keras").get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    keys = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy")
    assert [{k: e[k] for k in keys} for e in _json(killed / "history.json")] == [
        {k: e[k] for k in keys} for e in _json(whole / "history.json")]

    # A model trained on JAX predicts here, on TensorFlow, as it did there: model.keras is backend-neutral.
    here = cli.run(PREDICT, f"--model_dir={killed}", f"--output={tmp_path / 'tf.csv'}", photo)
    assert here.returncode == 0, here.stderr[-3000:]
    (on_jax,), (on_tf,) = _csv(tmp_path / "jax.csv"), _csv(tmp_path / "tf.csv")
    assert on_tf["predicted"] == on_jax["predicted"]
    assert float(on_tf["p_dogs"]) == pytest.approx(float(on_jax["p_dogs"]), abs=1e-5)
