"""bench.py --backends: train.py per Keras backend, each row processes of its own.

The rows' command lines and environments are checked as data; two rows (one
process on TensorFlow, two on JAX) train on tiny records for real, and a row
that fails is reported. Timings are never asserted: only that each figure
exists and is positive.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from benchmark import backends
from benchmark import plan
from benchmark import report
from benchmark.commands import BENCH
from support import cli
from support import images
from support import records

ROW_NAMES = ("tensorflow", "jax", "jax_2_devices", "jax_2_processes")
# The smallest run: 2 epochs (the 1st compiles, the 2nd is timed) of one batch of 2 at 32x32.
TINY = {"image_size": (32, 32), "batch_size": 2, "passes": 1, "train_steps": 1, "backends": True}


@pytest.fixture(scope="module")
def train_records(tmp_path_factory) -> tuple[Path, Path]:
    """(image folder, its records): a train split only, so that train.py neither validates nor tests."""
    root = tmp_path_factory.mktemp("backends") / "pets"
    images.make_image_tree(root, "split", {"train": {"cats": 4, "dogs": 4}}, images.SPLIT_SIZES)
    records.convert(root, root.parent / "records")
    return root, root.parent / "records"


def test_each_row_runs_train_py_with_the_same_flags_on_its_own_backend():
    config = plan.BenchmarkConfig(src="photos", batch_size=32, passes=2, train_steps=5, backends=True)
    argvs = {b.name: backends.train_argv(config, "/r", f"/m/{b.name}", b) for b in backends.BACKENDS}
    assert tuple(argvs) == ROW_NAMES
    for name, argv in argvs.items():
        assert argv[:2] == [sys.executable, backends.TRAIN_SCRIPT] and Path(argv[1]).name == "train.py"
        assert f"--model_dir=/m/{name}" in argv
        assert [arg for arg in argv[2:] if not arg.startswith(("--model_dir=", "--strategy="))] == [
            "--records=/r", "--epochs=3", "--steps_per_epoch=5", "--batch_size=32",  # the global batch
            "--image_size=150", "--augment_on=host", "--nopictures", "--noexport", "--verbose=0"]
    assert {name: [arg for arg in argv if arg.startswith("--strategy=")] for name, argv in argvs.items()} == {
        "tensorflow": ["--strategy=default"], "jax": ["--strategy=default"],
        "jax_2_devices": ["--strategy=mirrored"], "jax_2_processes": ["--strategy=default"]}

    variables = {b.name: [backends.row_variables(b, i, 1234) for i in range(b.processes)] for b in backends.BACKENDS}
    job = {"KERAS_BACKEND": "jax", "KERAS_DISTRIBUTION_JOB_ADDRESSES": "127.0.0.1:1234",
           "KERAS_DISTRIBUTION_NUM_PROCESSES": "2", "JAX_COORDINATOR_BIND_ADDRESS": "127.0.0.1:1234"}
    assert variables == {
        "tensorflow": [{"KERAS_BACKEND": "tensorflow"}],
        "jax": [{"KERAS_BACKEND": "jax"}],
        "jax_2_devices": [{"KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}],
        "jax_2_processes": [{**job, "KERAS_DISTRIBUTION_PROCESS_ID": "0"},
                            {**job, "KERAS_DISTRIBUTION_PROCESS_ID": "1"}],
    }
    # What a row sets replaces the caller's: none of it leaks from one row into another.
    assert all(set(v) <= set(backends.ROW_VARIABLES) for row in variables.values() for v in row)


def test_rows_train_in_processes_of_their_own_and_report_what_train_py_recorded(train_records, tmp_path):
    src, records_dir = train_records
    config = plan.BenchmarkConfig(src=str(src), records=str(records_dir), out=str(tmp_path / "out"), **TINY)
    chosen = [b for b in backends.BACKENDS if b.name in ("tensorflow", "jax_2_processes")]
    results = backends.run(config, ["bench.py", "--backends"], log=lambda message: None, backends=chosen)

    assert [row.error for row in results.rows] == [None, None]
    assert results.train_images == 8 and results.records == str(records_dir)
    for row in results.rows:
        assert len(row.epoch_rates) == 2 and min(row.epoch_rates) > 0
        assert row.images_per_second == row.epoch_rates[1]  # the 1st epoch (compiling) is left out
        assert 0 < row.epoch_ends[0] < row.epoch_ends[1] and row.epoch_seconds > 0
        assert row.first_epoch_seconds == row.epoch_ends[0] and row.one_off_seconds is not None
        assert [p.process_id for p in row.processes] == list(range(row.backend.processes))
        for process in row.processes:
            assert process.exit_status == 0 and process.peak_rss_mib > 0 and process.cpu_seconds > 0
            assert process.wall_seconds >= row.epoch_ends[-1]
        assert row.setup, "train.py's results.json"
    assert report.backend_ratio(results, results.rows[0]) == 1.0
    assert report.backend_ratio(results, results.rows[1]) > 0

    table = report.format_backends_table(results)
    assert all(row.backend.label in table for row in results.rows) and "failed" not in table
    json_path, logs = report.save_backends(results, config.out)
    data = json.loads(Path(json_path).read_text())
    assert list(data) == ["machine", "date", "command", "settings", "data", "backends", "cpu_contention",
                          "wall_seconds"]
    assert data["command"] == "bench.py --backends" and data["settings"]["epochs"] == 2
    assert data["data"] == {"records": str(records_dir), "split": "train", "images": 8}
    two = data["backends"]["jax_2_processes"]
    assert [p["variables"]["KERAS_DISTRIBUTION_PROCESS_ID"] for p in two["per_process"]] == ["0", "1"]
    assert two["images_per_second"] > 0 and two["error"] is None and two["command"][1] == backends.TRAIN_SCRIPT
    assert sorted(p.name for p in Path(logs).iterdir()) == [
        "jax_2_processes.0.log", "jax_2_processes.1.log", "tensorflow.0.log"]


def test_a_failed_row_is_in_the_table_and_ends_bench_py_with_one_line(train_records, tmp_path, monkeypatch):
    """Both processes of a row on a backend that does not exist fail at once; bench.py says so after the table."""
    src, records_dir = train_records
    monkeypatch.setattr(backends, "BACKENDS", (backends.Backend("nowhere", "no such backend", "nowhere", processes=2),))
    out = tmp_path / "out"
    done = cli.run(BENCH, f"--src={src}", f"--records={records_dir}", "--backends", "--passes=1", "--train_steps=1",
                   f"--out={out}")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"bench.py: error: nowhere failed (the table says why); each process's output is in {out}/backend_logs")
    failure = re.search(r"failed: process [01] ended with exit status 1: (.*)", done.stdout)
    assert failure and "nowhere" in failure.group(1), done.stdout
    row = json.loads((out / "results.json").read_text())["backends"]["nowhere"]
    assert row["error"] and row["images_per_second"] is None and len(row["per_process"]) == 2
