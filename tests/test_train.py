"""train.py end to end on generated records: a run and what it writes, continuing
it, the GPU settings on a CPU, and reruns and bad input answered in one line.

Each run is train.py's main in this process (`python train.py` as a process:
test_resume.py and test_train_faults.py, which signal and kill it)."""

import configparser
import dataclasses
import json
import re
import shutil
from collections import Counter
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from support import cli
from support import processes
from support.records import sample_records
from pipeline import schema
from pipeline.converter import sample_data, conversion
from pipeline.reader import augment  # noqa: F401  registers DeviceAugmentation for load_model
from pipeline.reader import guard
from model import callbacks, hardware, run_config, run_plan, training
from model.commands import TRAIN

REPO = Path(__file__).resolve().parents[1]
COMMON = ["--batch_size=6", "--image_size=32"]
_LOG_LINE = re.compile(r"^[IWEF]\d{4} ")  # absl: I1128 08:13:21.551098 ...
BAD_FLAGS = {  # flag -> words its error line must hold
    "--epochs=0": "--epochs=0",
    "--steps_per_epoch=-1": "--steps_per_epoch=-1",
    "--validation_steps=-1": "--validation_steps=-1",
    "--image_size=0": "--image_size=0",
    "--learning_rate=-0.1": "--learning_rate",
    "--data_service=localhost": "--data_service must be grpc://HOST:PORT",
}


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    sample_data.write_sample(str(root / "src"), {"train": 12, "validation": 4, "test": 4}, seed=3)
    conversion.convert_folder(conversion.ConversionConfig(str(root / "src"), str(root / "records"), workers=1))
    return root / "records"


def our_stderr_lines(stderr: str) -> list[str]:
    """stderr without TensorFlow's start-up noise and absl's log lines."""
    return [line for line in processes.our_lines(stderr) if not _LOG_LINE.match(line)]


class ManifestReads:
    """Counts the parses of manifest.json (`schema.read_manifest`) while it is installed: `building`, and
    apart, `checks`: those of `guard.HeldRecords.check`, which reads the manifest again on purpose
    (at each epoch's start and end, before each backup, after the test evaluation) to see the
    records replaced under the run."""

    def __init__(self, patch: pytest.MonkeyPatch):
        self.building, self.checks, self._checking = 0, 0, False
        read, check = schema.read_manifest, guard.HeldRecords.check

        def counted_read(records_dir: str) -> schema.Manifest:
            self.checks += self._checking
            self.building += not self._checking
            return read(records_dir)

        def counted_check(held: guard.HeldRecords, remedy: str) -> None:
            self._checking = True
            try:
                check(held, remedy)
            finally:
                self._checking = False

        patch.setattr(schema, "read_manifest", counted_read)
        patch.setattr(guard.HeldRecords, "check", counted_check)


def count_calls(patch: pytest.MonkeyPatch, owner, name: str, calls: Counter) -> None:
    """Counts the calls of `owner.name` in `calls[name]` while `patch` holds."""
    real = getattr(owner, name)

    def counted(*args, **kwargs):
        calls[name] += 1
        return real(*args, **kwargs)

    patch.setattr(owner, name, counted)


@pytest.fixture(scope="module")
def first_run(records, tmp_path_factory) -> dict:
    """One epoch of train.py: its model_dir (no test changes it), arguments, CompletedProcess, the bytes
    of its results.json and history.json, its manifest reads (ManifestReads) and the calls of what
    works the run out (hardware.detect, run_config.resolve_augment_on)."""
    model_dir = tmp_path_factory.mktemp("first_run") / "run"
    args = [f"--records={records}", f"--model_dir={model_dir}", *COMMON]
    calls = Counter()
    with pytest.MonkeyPatch.context() as patch:
        reads = ManifestReads(patch)
        count_calls(patch, hardware, "detect", calls)
        count_calls(patch, run_config, "resolve_augment_on", calls)
        result = cli.run(TRAIN, *args, "--epochs=1", "--save_h5")
    assert result.returncode == 0, result.stderr[-3000:]
    files = {name: (model_dir / name).read_bytes() for name in ("results.json", "history.json")}
    return {"model_dir": model_dir, "args": args, "result": result, "manifest_reads": reads, "calls": calls,
            **files}


@pytest.fixture(scope="module")
def cli_runs(records, first_run, tmp_path_factory) -> dict:
    """case name -> CompletedProcess of train.py's reruns and bad input, which must change
    nothing, and "dirs": their model_dirs."""
    root = tmp_path_factory.mktemp("train_cli")
    other_records = sample_records(root / "other", {"train": 5, "validation": 2}, seed=9)
    dirs = {"never": root / "never"}
    args = first_run["args"]
    bad_flag_args = [f"--records={records}", f"--model_dir={dirs['never']}"]
    cases = {
        "finished": [*args, "--epochs=1"],
        "other batch": [*args, "--batch_size=4", "--epochs=2"],
        "other records": [f"--records={other_records}", f"--model_dir={first_run['model_dir']}", *COMMON, "--epochs=2"],
        "no records folder": [f"--records={root / 'nowhere'}", f"--model_dir={dirs['never']}", "--epochs=1"],
        "no --records": ["--epochs=1"],
        **{flag: [*bad_flag_args, flag] for flag in BAD_FLAGS},
    }
    return {**cli.cases(TRAIN, cases), "dirs": dirs}


# --------------------------------------------------------------------------
# Runs that train.


def test_train_writes_everything(first_run):
    model_dir, first = first_run["model_dir"], first_run["result"]
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
    assert f"Saved the model with its export and pictures to {model_dir}" in first.stdout


def test_a_run_is_worked_out_once_from_one_read_of_the_manifest(first_run):
    """The whole run (pictures, validation, the test split's evaluation, the export) is built from one
    parse of manifest.json, made as train.py takes hold of the records (`guard.reading`). Not counted:
    the guard's checks, which re-read it on purpose to see the records replaced under the run. The
    hardware is looked for and `augment_on` resolved once too (`run_plan.plan_run`)."""
    reads = first_run["manifest_reads"]
    assert reads.building == 1
    assert reads.checks >= 3  # the epoch's start and end, after the test evaluation: the count saw them apart
    assert first_run["calls"] == {"detect": 1, "resolve_augment_on": 1}


def test_a_finished_run_continues_to_more_epochs(records, first_run, tmp_path):
    model_dir = tmp_path / "continued"
    shutil.copytree(first_run["model_dir"], model_dir)  # a copy of the finished run, to a larger --epochs
    second = cli.run(TRAIN, f"--records={records}", f"--model_dir={model_dir}", *COMMON, "--epochs=2",
                  "--nopictures")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Epoch 1/2" not in second.stdout + second.stderr
    assert f"Saved the model with its export to {model_dir}" in second.stdout  # --nopictures
    history = json.loads((model_dir / "history.json").read_text())
    assert [entry["epoch"] for entry in history] == [0, 1]
    assert (model_dir / "checkpoints/epoch_002.keras").is_file()

    model = keras.models.load_model(model_dir / "model.keras")
    batch = np.random.default_rng(0).random((3, 32, 32, 3), dtype=np.float32)
    probabilities = model.predict(batch, verbose=0)
    assert probabilities.shape == (3, 1)
    assert np.all((probabilities >= 0) & (probabilities <= 1))


def test_train_on_device_with_mixed_precision(records, tmp_path):
    """The GPU settings on a CPU. (XLA training: test_model, which compiles the same model
    in-process; --jit_compile reaching it: test_jit_compile_...)"""
    model_dir = tmp_path / "device"
    result = cli.run(TRAIN, f"--records={records}", f"--model_dir={model_dir}", *COMMON, "--epochs=1", "--nopictures",
                     "--augment_on=device", "--mixed_precision", "--nocache", "--profile_batches=1,2")
    assert result.returncode == 0, result.stderr[-3000:]
    # CPU only: the GPU setting is warned about, naming its measured cost, unless the CPU computes in bfloat16.
    warned = "--mixed_precision on a machine without a GPU" in result.stderr
    assert warned is not hardware.detect().cpu_bf16
    assert list((model_dir / "logs").rglob("*.xplane.pb"))  # the profiler trace
    setup = json.loads((model_dir / "results.json").read_text())["setup"]
    assert setup["precision"] == "mixed_bfloat16" and setup["xla"] == "off"
    assert setup["cache"].startswith("off (--nocache)")
    model = keras.models.load_model(model_dir / "model.keras")
    assert model.get_layer("augmentation") is not None
    assert model.output.dtype == "float32"


# --------------------------------------------------------------------------
# Reruns and bad input: answered in one line, nothing trained.


def test_a_finished_run_says_so_and_trains_nothing(first_run, cli_runs):
    again = cli_runs["finished"]
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already holds a finished run of 1 epochs" in again.stdout
    assert "Epoch" not in again.stdout + again.stderr
    assert (first_run["model_dir"] / "results.json").read_bytes() == first_run["results.json"]


def test_a_resume_with_other_settings_or_records_is_refused(first_run, cli_runs):
    other_batch = cli_runs["other batch"]
    assert other_batch.returncode == 1
    assert our_stderr_lines(other_batch.stderr)[-1].startswith("train.py: error: --model_dir")
    assert "batch_size: 6 -> 4" in other_batch.stderr

    mixed = cli_runs["other records"]
    assert mixed.returncode == 1
    assert "records: another set than the run's (manifest fingerprint " in mixed.stderr and "delete" in mixed.stderr
    assert (first_run["model_dir"] / "history.json").read_bytes() == first_run["history.json"]  # nothing trained


def test_missing_records_are_one_line_errors(cli_runs):
    missing = cli_runs["no records folder"]
    assert missing.returncode != 0
    assert "convert.py" in missing.stderr.strip().splitlines()[-1]

    unset = cli_runs["no --records"]
    assert unset.returncode != 0
    assert unset.stderr.strip().splitlines()[-1].startswith("train.py: error: --records")


def test_a_value_error_inside_keras_keeps_its_traceback(records, tmp_path, monkeypatch):
    """A bug (here a ValueError from inside Keras' fit) is no user's mistake: its traceback, exit 1."""
    def fit(self, *args, **kwargs):
        raise ValueError("a bug inside Keras")

    monkeypatch.setattr(keras.Model, "fit", fit)
    done = cli.run(TRAIN, f"--records={records}", f"--model_dir={tmp_path / 'run'}", *COMMON)
    assert done.returncode == 1
    assert "Traceback" in done.stderr and done.stderr.strip().splitlines()[-1] == "ValueError: a bug inside Keras"
    assert "train.py: error:" not in done.stderr


@pytest.mark.parametrize("flag", BAD_FLAGS)
def test_bad_flags_are_one_line_and_exit_1(cli_runs, flag):
    result = cli_runs[flag]
    words = BAD_FLAGS[flag]
    assert result.returncode == 1, (flag, result.stderr[-2000:])
    lines = our_stderr_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("train.py: error: ") and words in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not cli_runs["dirs"]["never"].exists()


# --------------------------------------------------------------------------
# Settings.


def test_gpu_extra_pins_the_same_tensorflow():
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    requires = config["options"]["install_requires"].split()
    tensorflow = next(r for r in requires if r.startswith("tensorflow=="))
    gpu = config["options.extras_require"]["gpu"].split()
    assert f"tensorflow[and-cuda]{tensorflow.removeprefix('tensorflow')}" in gpu
    assert "tensorboard-plugin-profile" in gpu


def test_augmentation_goes_to_the_device_only_with_a_gpu():
    config = run_config.TrainConfig(records="r")
    cpu = hardware.Hardware(gpus=(), cpu_cores=2)
    gpu = hardware.Hardware(gpus=("NVIDIA A100",), cpu_cores=16)
    assert run_config.resolve_augment_on(config, cpu).augment_on is run_config.AugmentOn.HOST
    assert run_config.resolve_augment_on(config, gpu).augment_on is run_config.AugmentOn.DEVICE
    host = run_config.TrainConfig(records="r", augment_on=run_config.AugmentOn.HOST)
    assert run_config.resolve_augment_on(host, gpu).augment_on is run_config.AugmentOn.HOST
    assert hardware.cpu_only_warnings(gpu, True, True) == []
    assert len(hardware.cpu_only_warnings(cpu, True, True)) == 2
    # A CPU with bfloat16 instructions trains TensorFlow's bfloat16 2x faster: no warning for it.
    bf16 = hardware.Hardware(gpus=(), cpu_cores=2, cpu_bf16=True)
    (warning,) = hardware.cpu_only_warnings(bf16, True, True)
    assert warning.startswith("--jit_compile")


def test_jit_compile_reaches_the_model_the_setup_and_the_warnings():
    config = run_config.TrainConfig(records="r", image_size=32, jit_compile=True)
    cpu = hardware.Hardware(gpus=(), cpu_cores=2)
    manifest = schema.Manifest("pets", ("cats", "dogs"), {}, None, "src")
    plan = run_plan.plan_run(config, manifest, found=cpu)
    assert training.build_model(plan).jit_compile is True
    assert training.build_model(dataclasses.replace(plan, config=dataclasses.replace(
        plan.config, jit_compile=False))).jit_compile is False
    setup = training.describe_setup(plan)
    assert setup["xla"] == "on" and setup["input"] == "tf.data in this process"
    (warning,) = hardware.cpu_only_warnings(cpu, False, True)
    assert warning.startswith("--jit_compile on a machine without a GPU")


def test_the_input_probe_times_the_batches_after_the_first_and_says_none_without():
    data = tf.data.Dataset.from_tensor_slices((tf.zeros([10, 2, 2, 3]), tf.zeros([10]))).batch(4)  # 4, 4, 2
    assert callbacks.probe_input_rate(data) > 0
    assert callbacks.probe_input_rate(data.take(1)) is None  # --steps_per_epoch=1: no verdict from nothing
    throughput = callbacks.EpochThroughput(batch_size=4, input_data=data.take(1))
    logs = {}
    throughput.on_epoch_begin(0)
    throughput.on_train_batch_end(0)
    throughput.on_epoch_end(0, logs)
    assert logs.keys() == {"images_per_second"}
