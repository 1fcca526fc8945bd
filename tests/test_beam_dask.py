"""`convert.py --runner=beam --dask_scheduler=...`: Beam's DaskRunner on a 2-worker Dask cluster.

The cluster is `distributed.LocalCluster` with worker processes (spawned, as
remote workers start fresh), everything bound to 127.0.0.1 and no dashboard;
the module starts it once and stops it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("apache_beam")
distributed = pytest.importorskip("distributed")

import cloudpickle  # noqa: E402
import dask  # noqa: E402
import psutil  # noqa: E402
from apache_beam.options import pipeline_options  # noqa: E402

from support import cli  # noqa: E402
from support.images import make_image_tree  # noqa: E402
from support.processes import free_port  # noqa: E402
from support.records import convert, files, partial_folders  # noqa: E402
from pipeline.converter import beam, conversion  # noqa: E402
from pipeline.converter.commands import CONVERT  # noqa: E402

SHARDS = 3


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("dask") / "pets"
    return make_image_tree(root, "split", {"train": {"cats": 5, "dogs": 4}, "validation": {"cats": 2, "dogs": 2}},
                           sizes=[(24, 32), (30, 30)])


@pytest.fixture(scope="module")
def local(tree, tmp_path_factory) -> dict[str, bytes]:
    """name -> bytes of the local path's records of `tree`."""
    out = tmp_path_factory.mktemp("dask_local") / "records"
    convert(tree.root, out, num_shards=SHARDS)
    return files(out)


@pytest.fixture(scope="module")
def cluster():
    """A 2-process Dask cluster on 127.0.0.1: workers spawned (never forked from this TensorFlow process)."""
    # Read at each (re)start of a worker: for as long as the cluster runs.
    with dask.config.set({"distributed.worker.multiprocessing-method": "spawn"}):
        cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None)
        try:
            yield cluster
        finally:
            cluster.close()


def _cluster_pids() -> set[int]:
    """This process (the scheduler runs in it) and its children: the nannies and their workers."""
    me = psutil.Process()
    return {me.pid, *(child.pid for child in me.children(recursive=True))}


def test_dask_writes_the_bytes_of_the_local_path_and_listens_on_loopback_only(tree, local, cluster, tmp_path):
    with distributed.Client(cluster.scheduler_address) as client, distributed.get_task_stream(client) as tasks:
        convert(tree.root, tmp_path / "dask", num_shards=SHARDS, runner="beam",
                dask_scheduler=cluster.scheduler_address)
        workers = set(client.scheduler_info()["workers"])
    assert files(tmp_path / "dask") == local  # shards, manifest, TFDS metadata: every file
    # A partition per shard: with Dask's default of 128 elements a partition, one worker did it all.
    assert {task["worker"] for task in tasks.data} == workers and len(workers) == 2
    pids = _cluster_pids()
    listening = {c.laddr.ip for c in psutil.net_connections("inet") if c.status == "LISTEN" and c.pid in pids}
    assert listening == {"127.0.0.1"}


def test_convert_cli_names_the_scheduler_and_closes_the_client(tree, local, cluster, tmp_path):
    done = cli.run(CONVERT, f"--src={tree.root}", f"--out={tmp_path / 'cli'}", f"--num_shards={SHARDS}",
                   "--runner=beam", f"--dask_scheduler={cluster.scheduler_address}", "--nodata_report")
    assert done.returncode == 0, done.stderr
    assert files(tmp_path / "cli") == local
    # Beam's runner never closes its client: the converter does.
    with distributed.Client(cluster.scheduler_address) as client:
        assert set(client.run_on_scheduler(_clients)) == {client.id, "fire-and-forget"}


def _clients(dask_scheduler) -> list[str]:
    return list(dask_scheduler.clients)


def test_dask_options_name_the_runner_and_a_partition_per_shard():
    options = beam.pipeline_options_from([], workers=8, dask_scheduler="tcp://10.0.0.5:8786", partitions=6)
    assert options.view_as(pipeline_options.StandardOptions).runner == beam.DASK_RUNNER
    flags = options.get_all_options(drop_default=True)
    assert (flags["address"], flags["npartitions"]) == ("tcp://10.0.0.5:8786", 6)
    theirs = beam.pipeline_options_from(["dask_partition_size=2"], workers=8, dask_scheduler="tcp://h:8786",
                                        partitions=6).get_all_options(drop_default=True)
    assert (theirs["partition_size"], theirs.get("npartitions")) == (2, None)


@pytest.mark.parametrize("flags, message", [
    ({"dask_scheduler": "tcp://h:8786"}, "--dask_scheduler needs --runner=beam"),
    ({"dask_scheduler": "tcp://h:8786", "runner": "beam", "beam_pipeline_options": ["runner=DataflowRunner"]},
     "drop runner= from --beam_pipeline_options"),
])
def test_dask_scheduler_refuses_what_contradicts_it(tmp_path, flags, message):
    with pytest.raises(conversion.ConversionError, match=message):
        conversion.ConversionConfig(str(tmp_path), str(tmp_path / "out"), **flags)


def test_an_unreachable_scheduler_is_one_line_and_leaves_no_records(tree, tmp_path):
    done = cli.run(CONVERT, f"--src={tree.root}", f"--out={tmp_path / 'out'}", "--runner=beam",
                   f"--dask_scheduler=tcp://127.0.0.1:{free_port()}", "--beam_pipeline_options=dask_connection_timeout=1")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("convert.py: error: no Dask scheduler reached at")
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists() and partial_folders(tmp_path) == []


class _KillOnce(distributed.WorkerPlugin):
    """Kills its worker process (SIGKILL, by its PID) when the first task that writes shards
    starts on any worker; `marker` records the PID, so that it happens once in the cluster.

    The DaskRunner names the tasks after the Beam step: after GroupByKey's
    "shuffle-*" tasks, the Map that writes the shards is "apply_dofn_to_bundle-<hash>".
    By then the images are encoded and the shuffle's parts sit in the workers' memory.
    """

    def __init__(self, marker: str):
        self.marker = marker

    def transition(self, key, start, finish, **kwargs):
        name = str(key[0] if isinstance(key, tuple) else key)
        if finish != "executing" or not name.startswith("apply_dofn_to_bundle-") or "shuffle" in name:
            return
        try:
            claim = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(claim, str(os.getpid()).encode())
        os.close(claim)
        os.kill(os.getpid(), signal.SIGKILL)


@contextlib.contextmanager
def _kill_the_first_writer(cluster, marker: Path) -> Iterator[set[int]]:
    """Arms `_KillOnce` on the cluster's 2 workers; yields their PIDs. Ends with 2 workers again."""
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers need not import this module
    try:
        # No client of ours stays open during the conversion: a second client slows its end by seconds.
        with distributed.Client(cluster.scheduler_address) as client:
            client.wait_for_workers(2, timeout=30)
            client.register_plugin(_KillOnce(str(marker)), name="kill-once")
            workers = set(client.run(os.getpid).values())
        try:
            yield workers
        finally:
            with distributed.Client(cluster.scheduler_address) as client:
                client.unregister_worker_plugin("kill-once")
                client.wait_for_workers(2, timeout=30)  # the nanny starts a new worker process
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def _killed(marker: Path, workers: set[int]) -> bool:
    """Whether the kill happened, to one of `workers`, and that process is gone."""
    pid = int(marker.read_text())
    return pid in workers and (not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)


def test_a_worker_killed_mid_conversion_is_replaced_and_its_tasks_rerun_with_the_same_bytes(
        tree, local, cluster, tmp_path):
    with _kill_the_first_writer(cluster, tmp_path / "killed") as workers:
        convert(tree.root, tmp_path / "dask", num_shards=SHARDS, runner="beam", dask_scheduler=cluster.scheduler_address)
    assert _killed(tmp_path / "killed", workers)
    assert files(tmp_path / "dask") == local


def test_when_dask_gives_up_on_a_killed_worker_the_old_records_stay(tree, cluster, tmp_path):
    """With no retry allowed (`distributed.scheduler.allowed-failures`, 3 by default), one line."""
    out = tmp_path / "records"
    convert(tree.root, out, num_shards=1)
    before = files(out)
    allowed, cluster.scheduler.allowed_failures = cluster.scheduler.allowed_failures, 0
    try:
        with _kill_the_first_writer(cluster, tmp_path / "killed") as workers:
            with pytest.raises(conversion.ConversionError, match=r"after 1 of its workers died .* nothing in --out changed") as e:
                convert(tree.root, out, num_shards=SHARDS, overwrite=True, runner="beam",
                        dask_scheduler=cluster.scheduler_address)
    finally:
        cluster.scheduler.allowed_failures = allowed
    assert "\n" not in str(e.value)
    assert _killed(tmp_path / "killed", workers)
    assert files(out) == before
    assert partial_folders(tmp_path) == []
