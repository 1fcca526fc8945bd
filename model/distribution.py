"""How a run spreads: over the local devices, and over processes on several hosts.

    --strategy=default    one device
    --strategy=mirrored   one replica per local device: tf.distribute.MirroredStrategy
                          on TensorFlow, keras.distribution.DataParallel on JAX
    several processes     Keras's own variables, the same command on every host (JAX only):
                          KERAS_DISTRIBUTION_JOB_ADDRESSES=host0:port (the coordinator, first)
                          KERAS_DISTRIBUTION_NUM_PROCESSES=2  KERAS_DISTRIBUTION_PROCESS_ID=0|1

With several processes each reads its own shards (`pipeline.reader.shares`);
the model is data parallel over every process's devices (one each, or every
local one with --strategy=mirrored); --batch_size stays the global batch.
Keras 3 does not train under tf.distribute.MultiWorkerMirroredStrategy
(keras-team/keras#20585): on TensorFlow several processes are refused.

A lost process ends the others: JAX's coordination service stops hearing its
heartbeats within LOST_PROCESS_SECONDS, or loses the coordinator at once, and
ends every process (model/commands.py turns that into one line).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
from collections.abc import Iterator

import keras
import numpy as np
import tensorflow as tf

from pipeline import cli
from pipeline.reader import shares
from model import backend
from model import run_config

# Keras's variables, read as keras.distribution.initialize reads them.
JOB_ADDRESSES = "KERAS_DISTRIBUTION_JOB_ADDRESSES"
NUM_PROCESSES = "KERAS_DISTRIBUTION_NUM_PROCESSES"
PROCESS_ID = "KERAS_DISTRIBUTION_PROCESS_ID"
# JAX's own variable: the coordinator listens on every interface unless it is set (e.g. 10.0.0.1:1234).
BIND_ADDRESS = "JAX_COORDINATOR_BIND_ADDRESS"
# A process that stops sending heartbeats this long is lost, and every other one ends (JAX's default: 100 s).
LOST_PROCESS_SECONDS = 30
# How long the first processes wait at start for the others to join.
JOIN_SECONDS = 300


class DistributionError(cli.SettingError):
    """The processes of a run are set up wrong: named by Keras's variables or the flags."""


@dataclasses.dataclass(frozen=True)
class Processes:
    """The processes of one training run: Keras's KERAS_DISTRIBUTION_* variables.

    Attributes:
      count: processes in all (1: one process, no variables set).
      index: this one's, 0 the coordinator (it alone writes the model_dir).
      coordinator: HOST:PORT of process 0's coordination service ("" for one process).
    """

    count: int = 1
    index: int = 0
    coordinator: str = ""

    @property
    def several(self) -> bool:
        return self.count > 1

    @property
    def writer(self) -> bool:
        """Whether this process writes the model_dir: process 0 alone."""
        return self.index == 0

    @property
    def share(self) -> shares.Share:
        return shares.Share(self.index, self.count)

    def describe(self) -> str:
        if not self.several:
            return "one"
        return f"{self.count}, this one {self.index} (coordinator {self.coordinator}; process 0 writes)"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Processes:
        """The processes Keras's variables name; one process when none is set.

        Raises:
          DistributionError: a value that is no number, an index out of range, no coordinator.
        """
        env = os.environ if env is None else env
        given = {name: env[name] for name in (JOB_ADDRESSES, NUM_PROCESSES, PROCESS_ID) if env.get(name)}
        if not given:
            return cls()
        try:
            count, index = int(env.get(NUM_PROCESSES, "1")), int(env.get(PROCESS_ID, "0"))
        except ValueError:
            raise DistributionError(f"{NUM_PROCESSES} and {PROCESS_ID} must be whole numbers, got "
                                    f"{env.get(NUM_PROCESSES)!r} and {env.get(PROCESS_ID)!r}") from None
        if count == 1:
            return cls()
        # As Keras: a comma list names every process's address, the coordinator's first.
        coordinator = env.get(JOB_ADDRESSES, "").split(",")[0].strip()
        if count < 1 or not 0 <= index < count or ":" not in coordinator:
            raise DistributionError(
                f"several processes need {JOB_ADDRESSES}=HOST:PORT (process 0's), {NUM_PROCESSES} >= 2 and "
                f"{PROCESS_ID} in [0, {NUM_PROCESSES}); got {given}")
        return cls(count, index, coordinator)


def check(processes: Processes) -> None:
    """Raises DistributionError for several processes on TensorFlow."""
    if processes.several and backend.name() != backend.JAX:
        raise DistributionError(
            f"{processes.count} processes ({NUM_PROCESSES}): training on several hosts needs "
            f"{backend.ENV_VAR}=jax; Keras 3 does not train under tf.distribute's MultiWorkerMirroredStrategy "
            "(keras-team/keras#20585)")


def initialize(processes: Processes) -> None:
    """Joins the run's processes (JAX's coordination service), before any JAX computation.

    What `keras.distribution.initialize` does, with a bound on a lost process's silence.

    Raises:
      DistributionError: several processes on TensorFlow.
    """
    check(processes)
    if not processes.several:
        return
    import jax

    if jax.distributed.is_initialized():  # a second run in one Python process
        return
    jax.distributed.initialize(
        coordinator_address=processes.coordinator, num_processes=processes.count, process_id=processes.index,
        initialization_timeout=JOIN_SECONDS, heartbeat_timeout_seconds=LOST_PROCESS_SECONDS,
        coordinator_bind_address=os.environ.get(BIND_ADDRESS))


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where a run's steps run: its replicas (devices in all) and processes.

    Attributes:
      replicas: devices the global batch is split over, in every process.
      processes: the run's processes.
      jax: the model runs on JAX (keras.distribution) rather than TensorFlow (tf.distribute).
    """

    replicas: int
    processes: Processes
    jax: bool

    @property
    def even_batches(self) -> bool:
        """Whether every batch must split evenly over the replicas (JAX's global arrays must):
        training drops an epoch's last smaller batch, evaluation pads to whole batches."""
        return self.jax and self.replicas > 1

    def local_batch(self, batch_size: int) -> int:
        """This process's part of a global batch of `batch_size`."""
        return batch_size // self.processes.count

    def describe(self, config: run_config.TrainConfig) -> str:
        kind = "one device" if self.replicas == 1 else f"{self.replicas} replicas"
        where = f" over {self.processes.count} processes" if self.processes.several else ""
        return f"{config.strategy.value}: {kind}{where}, global batch {config.batch_size}"


def _tf_devices() -> list:
    """The local devices a mirrored run spreads over on TensorFlow: the GPUs, else the logical CPUs."""
    return tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")


def _jax_devices(config: run_config.TrainConfig, processes: Processes) -> list:
    import jax

    if config.strategy is run_config.Strategy.MIRRORED:
        return jax.devices()
    # One device per process: each process's first.
    return [next(d for d in jax.devices() if d.process_index == index) for index in range(processes.count)]


def place(config: run_config.TrainConfig, processes: Processes) -> Placement:
    """Works out the replicas of a run (after `initialize`).

    Raises:
      DistributionError: a --batch_size the replicas do not divide (on JAX).
    """
    if backend.name() != backend.JAX:
        mirrored = config.strategy is run_config.Strategy.MIRRORED
        return Placement(len(_tf_devices()) if mirrored else 1, processes, jax=False)
    replicas = len(_jax_devices(config, processes))
    if config.batch_size % replicas:
        raise DistributionError(
            f"--batch_size={config.batch_size} does not split over {replicas} replicas: the global batch is one "
            f"array split evenly over them on JAX; pass a multiple of {replicas}")
    return Placement(replicas, processes, jax=True)


@contextlib.contextmanager
def model_scope(config: run_config.TrainConfig, placement: Placement) -> Iterator[tf.distribute.Strategy | None]:
    """Where the run's model is built and trained: a tf.distribute strategy's scope on TensorFlow
    (yields the strategy), the keras.distribution data parallelism on JAX (yields None; set for the
    rest of the process, as Keras's fit reads it)."""
    if placement.jax:
        if placement.replicas > 1 or placement.processes.several:
            keras.distribution.set_distribution(keras.distribution.DataParallel(
                devices=_jax_devices(config, placement.processes), auto_shard_dataset=False))  # our shares
        yield None
        return
    if config.strategy is run_config.Strategy.DEFAULT:
        strategy = tf.distribute.get_strategy()
    else:
        strategy = tf.distribute.MirroredStrategy([device.name for device in _tf_devices()])
    with strategy.scope():
        yield strategy


def agree(processes: Processes, what: str, value: str) -> None:
    """Checks that every process has the same `value` (e.g. the run's settings) as process 0.

    Raises:
      DistributionError: in every process, naming the processes that differ and `what`.
    """
    if not processes.several:
        return
    from jax.experimental import multihost_utils

    digest = np.frombuffer(hashlib.sha256(value.encode()).digest(), np.uint32)
    every = np.asarray(multihost_utils.process_allgather(digest))
    differ = [index for index in range(processes.count) if not np.array_equal(every[index], every[0])]
    if differ:
        raise DistributionError(
            f"process(es) {', '.join(map(str, differ))} have other {what} than process 0: run the same command, "
            "on the same records and --model_dir, on every host")
