"""The input pipeline on tf.data service: CPU hosts decode and augment, the trainer trains.

    dispatcher (one)  <-  workers (one per CPU host)  ->  batches  ->  trainer(s)

The trainer registers its training dataset's graph with the dispatcher; every
worker runs that graph on its own CPUs and streams finished batches back.
Only TensorFlow ops can travel in that graph, so a distributed dataset warps
with `augment.HostWarp.TENSORFLOW` (tf.numpy_function is not serialized).

Processing mode: dynamic sharding (`ShardingPolicy.DYNAMIC`, the
"distributed_epoch" mode). The dispatcher hands out the split's shard files to
the workers one at a time, so each example is read once per epoch, as in a
local epoch. If a worker dies mid-epoch, the shards it was reading are not
handed out again in that epoch: the epoch ends short by what it had not yet
delivered; training goes on with the other workers (at-most-once visitation).
"""

from __future__ import annotations

import dataclasses
import enum

import tensorflow as tf

_SERVICE = tf.data.experimental.service
# Workers heartbeat this often; one silent for WORKER_TIMEOUT_MS is dropped.
HEARTBEAT_INTERVAL_MS = 1_000
WORKER_TIMEOUT_MS = 10_000


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
        """Parses `grpc://HOST:PORT` (or `HOST:PORT`); ValueError naming `flag` if it is not one."""
        rest = url.removeprefix("grpc://")
        host, _, port = rest.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{flag} must be grpc://HOST:PORT, got {url!r}")
        return cls(host, int(port))

    @property
    def target(self) -> str:
        return f"grpc://{self.host}:{self.port}"


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
    distributed = ds.apply(
        _SERVICE.distribute(
            processing_mode=_SERVICE.ShardingPolicy.DYNAMIC, service=address.target, job_name=job_name
        )
    )
    return distributed.prefetch(tf.data.AUTOTUNE)


def start_dispatcher(
    port: int, work_dir: str | None = None, worker_timeout_ms: int = WORKER_TIMEOUT_MS
) -> _SERVICE.DispatchServer:
    """A dispatcher on `port`; with `work_dir`, fault tolerant (its journal survives restarts).

    A worker silent for `worker_timeout_ms` is dropped, and the trainers stop
    waiting for it.
    """
    config = _SERVICE.DispatcherConfig(
        port=port, work_dir=work_dir, fault_tolerant_mode=work_dir is not None, worker_timeout_ms=worker_timeout_ms
    )
    return _SERVICE.DispatchServer(config)


def start_worker(dispatcher: Address, port: int, host: str) -> _SERVICE.WorkerServer:
    """A worker on `port` that registers with `dispatcher` and tells clients to reach it at `host`."""
    config = _SERVICE.WorkerConfig(
        dispatcher_address=f"{dispatcher.host}:{dispatcher.port}", worker_address=f"{host}:%port%", port=port,
        heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
    )
    return _SERVICE.WorkerServer(config)
