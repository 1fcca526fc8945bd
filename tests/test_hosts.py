"""Training on several processes (Keras 3 on JAX, keras.distribution): real processes on 127.0.0.1.

Each pair of train.py processes finds its coordinator through Keras's own
KERAS_DISTRIBUTION_* variables, on a free port of 127.0.0.1, and is ended by
the test. The shares each process reads are counted in this process, through
the run's own `run_plan.plan_run`.
"""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import numpy as np
import pytest

from support import cli
from support import processes
from support.records import sample_records
from model import distribution
from model import hardware
from model import run_config
from model import run_plan
from model import supervise
from model.commands import TRAIN
from pipeline import cli as cli_errors
from pipeline import schema
from pipeline.reader import dataset
from pipeline.reader import read
from pipeline.reader import shares

# 24 training images a process (4 shards of 12, two each), 20 validation images (5 a shard).
COUNTS = {"train": 24, "validation": 10}
FLAGS = ["--image_size=32", "--batch_size=8", "--epochs=2", "--seed=1", "--deterministic", "--backup_every_steps=2",
         "--nopictures", "--noexport", "--verbose=2"]


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> Path:
    return sample_records(tmp_path_factory.mktemp("hosts"), COUNTS, seed=4)


@pytest.fixture(scope="module")
def xla_cache(tmp_path_factory) -> Path:
    """XLA's compiled steps kept on disk: the later runs skip the compiles (the same code)."""
    return tmp_path_factory.mktemp("xla")


def _pair(records: Path, model_dir: Path, xla_cache: Path, second: tuple[str, ...] = ()) -> list[processes.Process]:
    """train.py as processes 0 and 1 of one run, the coordinator on a free port of 127.0.0.1;
    `second`: flags process 1 alone gets (after the common ones)."""
    address = f"127.0.0.1:{processes.free_port()}"
    common = {"KERAS_BACKEND": "jax", distribution.JOB_ADDRESSES: address, distribution.NUM_PROCESSES: "2",
              distribution.BIND_ADDRESS: address, "JAX_COMPILATION_CACHE_DIR": str(xla_cache),
              "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    return [processes.start("train.py", f"--records={records}", f"--model_dir={model_dir}", *FLAGS,
                            *(second if index else ()),
                            environment=processes.env(**common, **{distribution.PROCESS_ID: str(index)}),
                            merge_stderr=True)
            for index in (0, 1)]


def _finish(pair: list[processes.Process]) -> list[str]:
    """Waits for both; their output (stdout and stderr), each exit status 0."""
    outputs = [process.communicate()[0] for process in pair]
    for process, output in zip(pair, outputs):
        assert process.returncode == 0, output[-3000:]
    return outputs


def _digest(stderr: str) -> str:
    return re.search(r"final weights: sha256 (\w+)", stderr).group(1)


@pytest.fixture(scope="module")
def whole_run(records, xla_cache, tmp_path_factory) -> tuple[Path, list[str]]:
    """(model_dir, both processes' stderr) of a 2-process run never interrupted."""
    model_dir = tmp_path_factory.mktemp("whole") / "run"
    pair = _pair(records, model_dir, xla_cache)
    try:
        return model_dir, _finish(pair)
    finally:
        for process in pair:
            process.__exit__()


def test_two_processes_train_one_model_with_identical_weights(whole_run, records):
    model_dir, (first, second) = whole_run
    assert _digest(first) == _digest(second)
    # Process 0 alone writes: backups, history, model (process 1 has no writing callback to log).
    assert "backup: the state" in first and "backup: the state" not in second
    assert f"Process 1 of 2 trained its share: process 0 saved the model to {model_dir}" in second
    # Each process its own two shards: 24 images, 3 batches of 4 an epoch.
    assert "each process its own shards (24, 24 images), 24 of them an epoch" in first
    history = json.loads((model_dir / "history.json").read_text())
    assert len(history) == 2
    # The validation split's 20 images counted once each, the padding not at all: k / 20 exactly.
    for epoch in history:
        assert epoch["val_accuracy"] * 20 == pytest.approx(round(epoch["val_accuracy"] * 20), abs=1e-4)
    assert json.loads((model_dir / "run.json").read_text())["backend"] == "jax"


def test_each_process_reads_only_its_shards_and_together_they_cover_the_epoch_once(records):
    manifest = schema.read_manifest(str(records))
    config = run_config.TrainConfig(records=str(records), batch_size=8, image_size=32, seed=1)
    seen, batches = [], 0
    for index in (0, 1):
        placement = distribution.Placement(2, distribution.Processes(2, index, "127.0.0.1:1"), jax=True)
        plan = run_plan.plan_run(config, manifest, hardware.Hardware((), 2), placement=placement)
        names = [schema.parse_example(record)[schema.FILENAME_KEY].numpy().decode()
                 for record in read.read_records(str(records), "train", plan.train_manifest)]
        seen.append(names)
        epoch = list(plan.batches().passes.epochs)
        assert [images.shape[0] for images, _ in epoch] == [4] * plan.steps_per_epoch  # the local batch
        batches += len(epoch) * 4
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(
        schema.parse_example(r)[schema.FILENAME_KEY].numpy().decode() for r in read.read_records(str(records), "train"))
    assert batches == manifest.splits["train"].num_examples  # every image once an epoch (two even shares)


def test_validation_pads_each_share_to_whole_batches_of_weight_zero(records):
    manifest = schema.read_manifest(str(records))
    config = dataset.InputConfig(image_size=(32, 32), batch_size=4)
    weights = []
    for index in (0, 1):
        ds, steps = shares.weighted_eval_dataset(str(records), "validation", config, manifest, shares.Share(index, 2))
        batch_weights = np.concatenate([w.numpy() for _, _, w in ds])
        assert len(batch_weights) == steps * 4
        weights.append(batch_weights)
    every = np.concatenate(weights)
    real = every[every > 0]
    assert len(real) == manifest.splits["validation"].num_examples  # each image once
    assert every.sum() == pytest.approx(len(every))  # Keras' mean over padded batches is the mean over the images


def test_a_killed_process_ends_the_other_with_one_line_and_the_rerun_resumes_exactly(
    whole_run, records, xla_cache, tmp_path
):
    model_dir = tmp_path / "run"
    pair = _pair(records, model_dir, xla_cache)
    with pair[0], pair[1]:
        # Process 0, the coordinator, killed by its PID once it has backed up batch 2 of epoch 1:
        # process 1 loses it at once (a lost process 1 takes LOST_PROCESS_SECONDS to be noticed).
        for line in pair[0].lines():
            if "epoch 1, batch 2 is saved" in line:
                os.kill(pair[0].pid, signal.SIGKILL)
                break
        pair[1].wait(timeout=2 * distribution.LOST_PROCESS_SECONDS + 30)
        err, _ = pair[1].communicate()
        assert pair[1].returncode == supervise.EXIT_LOST
        (line,) = [text for text in processes.our_lines(err) if "error:" in text]
        assert "lost process 0 of 2 (the coordinator" in line and "start the same command on every host" in line
        assert line == processes.our_lines(err)[-1]
    # The kill lands a step or two after the line: a later mid-epoch backup may be the last.
    state = json.loads((model_dir / "backup" / "state.json").read_text())
    assert state["epoch"] == 0 and state["step"] in (2, 4)
    rerun = _pair(records, model_dir, xla_cache)
    with rerun[0], rerun[1]:
        first, second = _finish(rerun)
    assert f"at epoch 1, after batch {state['step']}" in first
    assert _digest(first) == _digest(second) == _digest(whole_run[1][0])


def test_a_host_with_other_flags_stops_every_process_with_one_line(records, xla_cache, tmp_path):
    pair = _pair(records, tmp_path / "run", xla_cache, second=("--learning_rate=0.01",))
    with pair[0], pair[1]:
        outputs = [process.communicate()[0] for process in pair]
    for process, output in zip(pair, outputs):
        assert process.returncode == 1, output[-3000:]
        assert processes.our_lines(output)[-1] == (
            "train.py: error: process(es) 1 have other settings or records than process 0: run the same command, "
            "on the same records and --model_dir, on every host")
    assert not (tmp_path / "run" / "backup").exists()


def test_several_processes_on_tensorflow_are_one_line(records, tmp_path, monkeypatch):
    monkeypatch.setenv(distribution.JOB_ADDRESSES, "127.0.0.1:1")
    monkeypatch.setenv(distribution.NUM_PROCESSES, "2")
    monkeypatch.setenv(distribution.PROCESS_ID, "0")
    done = cli.run(TRAIN, f"--records={records}", f"--model_dir={tmp_path}")
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert "KERAS_BACKEND=jax" in line and "keras-team/keras#20585" in line
    assert not any(tmp_path.iterdir())


def test_fewer_shards_than_processes_are_refused_naming_num_shards(records):
    manifest = schema.read_manifest(str(records))
    config = run_config.TrainConfig(records=str(records), image_size=32, batch_size=8)
    placement = distribution.Placement(8, distribution.Processes(8, 0, "127.0.0.1:1"), jax=True)
    with pytest.raises(shares.TooFewShardsError, match="--num_shards=8"):
        run_plan.plan_run(config, manifest, hardware.Hardware((), 2), placement=placement)


def test_the_data_service_with_several_processes_is_refused_in_one_line(records):
    manifest = schema.read_manifest(str(records))
    config = run_config.TrainConfig(records=str(records), image_size=32, batch_size=8,
                                    data_service="grpc://127.0.0.1:5050")
    placement = distribution.Placement(2, distribution.Processes(2, 1, "127.0.0.1:1"), jax=True)
    with pytest.raises(cli_errors.SettingError, match="--data_service with default: 2 replicas over 2 processes"):
        run_plan.plan_run(config, manifest, hardware.Hardware((), 2), placement=placement)


@pytest.mark.parametrize("env, message", [
    ({distribution.NUM_PROCESSES: "two"}, "whole numbers"),
    ({distribution.NUM_PROCESSES: "2", distribution.PROCESS_ID: "2", distribution.JOB_ADDRESSES: "h:1"}, "in [0,"),
    ({distribution.NUM_PROCESSES: "2", distribution.PROCESS_ID: "1"}, "HOST:PORT"),
])
def test_keras_variables_read_as_keras_reads_them(env, message):
    with pytest.raises(distribution.DistributionError, match=re.escape(message)):
        distribution.Processes.from_env(env)
    both = {distribution.JOB_ADDRESSES: "10.0.0.1:1234,10.0.0.2:2345", distribution.NUM_PROCESSES: "2",
            distribution.PROCESS_ID: "1"}
    assert distribution.Processes.from_env(both) == distribution.Processes(2, 1, "10.0.0.1:1234")
    assert distribution.Processes.from_env({}) == distribution.Processes()


# What JAX 0.10.2 logs as it ends a process of a run that lost another (from runs on this machine).
_NO_HEARTBEAT = """E1208 00:58:42.843485 coordination_service.cc:1549] Use error polling to propagate the following \
error to all tasks: UNAVAILABLE: The following tasks are unhealthy (stopped sending heartbeats):
1
The tasks have crashed. Check the task logs for an earlier error.
F1208 00:58:42.844186 client.h:80] Terminating process because the JAX distributed service detected fatal errors."""
_NO_COORDINATOR = """F1208 00:59:19.018112 client.h:80] Terminating process because the JAX distributed service \
detected fatal errors. absl::Status: UNAVAILABLE: Failed to send RPC to coordination service. Either the leader \
task was preempted/died/restarted unexpectedly or this task is experiencing network issues."""


@pytest.mark.parametrize("log, named", [
    (_NO_HEARTBEAT, "process 1 of 2 (no heartbeat)"),
    (_NO_COORDINATOR, "process 0 of 2 (the coordinator: it no longer answers)"),
    ("F1208 client.h:80] Terminating process because the JAX distributed service detected fatal errors.",
     "a process of 2"),
])
def test_the_lost_process_is_named_from_jaxs_log(log, named):
    assert supervise.lost_processes(log, 2) == named
