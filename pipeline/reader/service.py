"""The input pipeline on tf.data service: CPU hosts decode and augment, the trainer trains.

    dispatcher (one)  <-  workers (one per CPU host)  ->  batches  ->  trainer(s)

The trainer registers its training dataset's graph with the dispatcher; every
worker runs that graph on its own CPUs and streams finished batches back.
Only TensorFlow ops can travel in that graph, so a distributed dataset warps
with `augment.HostWarp.TENSORFLOW` (tf.numpy_function is not serialized).

Processing mode: dynamic sharding (`ShardingPolicy.DYNAMIC`, the
"distributed_epoch" mode). The dispatcher hands out the split's shard files to
the workers one at a time, so each example is read once per epoch, as in a
local epoch. If a worker dies mid-epoch and is restarted at the same address,
the shards it was reading are not handed out again in that epoch: the epoch
ends short by what it had not yet delivered (at-most-once visitation), and the
next epoch is whole. A worker that never comes back stalls the trainer: in TF
2.21 the dispatcher did not hand its tasks on (BUILD.md, failure behaviour),
so run workers under a supervisor that restarts them; train.py ends such a
wait after --input_timeout with one line. A dispatcher with a work_dir
(fault-tolerant mode) killed and restarted on the same port and work_dir
replays its journal: trainers and workers reconnect, the run goes on.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import socket

import tensorflow as tf
from tensorflow.python.data.experimental.ops import data_service_ops

from pipeline import cli
from pipeline import schema
from pipeline.reader import dataset
from pipeline.reader import epochs
from pipeline.reader import transforms

_SERVICE = tf.data.experimental.service
# Workers heartbeat this often; one silent for WORKER_TIMEOUT_MS is dropped.
HEARTBEAT_INTERVAL_MS = 1_000
WORKER_TIMEOUT_MS = 10_000
# A trainer learns that its epoch's job ended only at its next dispatcher
# heartbeat (1 s by default), so each epoch ended on a whole second; ten small
# RPCs a second cost nothing (docs/performance.md, tf.data service).
TASK_REFRESH_INTERVAL_MS = 100
# How long a trainer or a worker tries to reach its dispatcher before saying so.
CONNECT_TIMEOUT_S = 10
# Batches travel uncompressed: snappy costs both ends more CPU per batch than
# it saves in bytes, unless the network is short, below about 1 Gb/s per
# trainer (docs/performance.md, tf.data service).
COMPRESSION = None


class Role(enum.Enum):
    """What a data_service.py process runs."""

    DISPATCHER = "dispatcher"  # one per cluster: hands out the shards
    WORKER = "worker"  # one per CPU host: reads, decodes, augments, batches


@dataclasses.dataclass(frozen=True)
class Address:
    """Where a tf.data service dispatcher listens, as `grpc://HOST:PORT`."""

    host: str
    port: int

    @classmethod
    def parse(cls, url: str, flag: str = "--data_service") -> "Address":
        """Parses `grpc://HOST:PORT` (or `HOST:PORT`); cli.SettingError naming `flag` if it is not one."""
        rest = url.removeprefix("grpc://")
        host, _, port = rest.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise cli.SettingError(f"{flag} must be grpc://HOST:PORT, got {url!r}")
        return cls(host, int(port))

    @property
    def target(self) -> str:
        return f"grpc://{self.host}:{self.port}"


def local_address(server: _SERVICE.DispatchServer) -> Address:
    """Where a dispatcher started in this process is reached: 127.0.0.1 and the port it listens on."""
    return Address("127.0.0.1", Address.parse(server.target).port)


def check_reachable(address: Address, flag: str = "--data_service") -> None:
    """cli.InputError naming `flag` unless the dispatcher accepts a connection within CONNECT_TIMEOUT_S.

    TensorFlow's client retries a dispatcher it cannot reach without end, inside
    one C++ call: the process would hang, deaf to Ctrl-C and SIGTERM.
    """
    try:
        with socket.create_connection((address.host, address.port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as error:
        reason = error.strerror or str(error)
        raise cli.InputError(f"{flag}: no tf.data service dispatcher answers at {address.target} ({reason})") from None


def distribute(ds: tf.data.Dataset, address: Address, job_name: str | None = None) -> tf.data.Dataset:
    """Runs `ds` on the service's workers, each example once per epoch.

    Args:
      ds: a dataset made of TensorFlow ops only, whose source is a list of
        files (splittable: dynamic sharding hands out its elements).
      address: the dispatcher.
      job_name: trainers that pass the same name share one job (each gets
        part of the epoch); None gives each trainer its own.

    Returns:
      The same elements, produced by the workers; prefetched.
    """
    if job_name is not None and not job_name:
        raise ValueError("job_name must be a non-empty string or None")
    options = dict(
        processing_mode=_SERVICE.ShardingPolicy.DYNAMIC, service=address.target, job_name=job_name,
        compression=COMPRESSION,
    )
    # The refresh interval is a parameter of tf.data's own `_distribute` only
    # (the public `distribute` is the job-name check above + `_distribute`);
    # should a TensorFlow release drop it, the public call is used.
    private = getattr(data_service_ops, "_distribute", None)
    if private is not None and "task_refresh_interval_hint_ms" in inspect.signature(private).parameters:
        transformation = private(**options, task_refresh_interval_hint_ms=TASK_REFRESH_INTERVAL_MS)
    else:
        transformation = _SERVICE.distribute(**options)
    # The trainer's end is a reader and a prefetch buffer, a new dataset with
    # tf.data's autotuner on. Deleting each epoch's iterator then waited for
    # the autotuner thread's next wake-up (its period doubles from 10 ms):
    # epochs ended 2.6 or 5.2 s after they began, up to 2.4 s after their last
    # batch. Off, as in `dataset.input_options`, the wait is gone.
    trainer_end = tf.data.Options()
    trainer_end.autotune.enabled = False
    return ds.apply(transformation).prefetch(tf.data.AUTOTUNE).with_options(trainer_end)


def on_trainer(ds: tf.data.Dataset, batch_size: int) -> tf.data.Dataset:
    """After `distribute`: (images `tf.uint8` [b, H, W, 3], labels) from the
    workers -> (images float32 [B, H, W, 3] in [0, 1], labels), B = `batch_size`.

    Each worker ends its part of an epoch with a smaller batch; rebatched, only
    the epoch's last batch is smaller, so every whole epoch has the same number
    of batches. Keras counts the first epoch's and cuts any longer one short.
    """
    ds = ds.rebatch(batch_size)
    scale = tf.autograph.experimental.do_not_convert(lambda images, labels: (transforms.scale_image(images), labels))
    return ds.map(scale, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def train_passes(
    records_dir: str, config: dataset.InputConfig, address: Address, manifest: schema.Manifest, split: str = "train",
) -> epochs.TrainPasses:
    """`dataset.train_dataset`'s batches (`config.distributed`) made by the service's workers, as a trainer takes them.

    Each pass of the workers' dataset is a new job, an epoch: here they come
    back to back (`endless`), `steps_per_epoch` batches each. Keras cut an
    epoch longer than its first; one short (a worker lost) shifts the next
    instead. A run on the service resumes at an epoch's start.
    """
    on_workers = dataset.train_dataset(records_dir, config, split, manifest=manifest)
    epochs_back_to_back = on_trainer(distribute(on_workers, address), config.batch_size).repeat()
    return epochs.TrainPasses(epochs_back_to_back, None, dataset.num_batches(manifest, split, config), endless=True)


def start_dispatcher(
    port: int, work_dir: str | None = None, worker_timeout_ms: int = WORKER_TIMEOUT_MS
) -> _SERVICE.DispatchServer:
    """A dispatcher on `port`; with `work_dir`, fault tolerant (its journal survives restarts).

    A worker silent for `worker_timeout_ms` is dropped from the list of
    workers; in TF 2.21 a trainer still waits for the tasks it had (BUILD.md,
    failures): restart a lost worker at the same address.
    """
    config = _SERVICE.DispatcherConfig(
        port=port, work_dir=work_dir, fault_tolerant_mode=work_dir is not None, worker_timeout_ms=worker_timeout_ms
    )
    return _serving(lambda: _SERVICE.DispatchServer(config), port)


def start_worker(dispatcher: Address, port: int, host: str) -> _SERVICE.WorkerServer:
    """A worker on `port` that registers with `dispatcher` and tells clients to reach it at `host`."""
    config = _SERVICE.WorkerConfig(
        dispatcher_address=f"{dispatcher.host}:{dispatcher.port}", worker_address=f"{host}:%port%", port=port,
        heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
    )
    return _serving(lambda: _SERVICE.WorkerServer(config), port)


def _serving(start, port: int):
    """`start()`, a server; TensorFlow's "Could not start gRPC server" (a port in use) as the user's one line."""
    try:
        return start()
    except RuntimeError as e:
        raise cli.InputError(f"--port={port}: {e} (is the port in use?)") from None
