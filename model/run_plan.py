"""A training run worked out once: `RunPlan`, and where its batches come from.

    TrainConfig + the records' manifest (read once, as train.py takes hold of them)
      -> plan_run: augment_on resolved for the hardware found, the cache decided,
         the input configs, LocalInput or ServiceInput
      -> RunPlan (frozen): every step of the run reads it, none works it out again

Whether the training batches are made in this process or by tf.data service
workers is decided here, once: `LocalInput` / `ServiceInput` say what differs
(the input config, the setup line, what to reach, how a run resumes, the batches).
bench.py's training rows go through `plan_run` and `RunPlan.batches` too.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import keras
import psutil
import tensorflow as tf

from pipeline import cli
from pipeline import schema
from pipeline.reader import augment
from pipeline.reader import dataset
from pipeline.reader import epochs
from pipeline.reader import service
from pipeline.reader import shares
from model import callbacks
from model import distribution
from model import hardware
from model import run_config

# The cache may take this share of the memory available at start; beyond it
# the run streams from the records (a cache that does not fit kills the run).
CACHE_MEMORY_SHARE = 0.5


def cache_fits(num_images: int, image_size: int, available_bytes: int) -> bool:
    """Whether `num_images` decoded uint8 images fit in CACHE_MEMORY_SHARE of the memory."""
    return num_images * image_size * image_size * 3 <= CACHE_MEMORY_SHARE * available_bytes


def decide_cache(
    config: run_config.TrainConfig, manifest: schema.Manifest, available_bytes: int | None = None,
    processes: int = 1,
) -> tuple[bool, str]:
    """Whether to cache the train and validation images: asked, and they fit (a process's share of
    them, about 1/`processes`, on each host).

    Returns:
      (cache on, the reason in words).
    """
    if not config.cache:
        return False, "off (--nocache): every epoch decodes the records"
    counts = [split.num_examples for name, split in manifest.splits.items() if name != "test"]
    num_images = -(-sum(counts) // processes)
    available = psutil.virtual_memory().available if available_bytes is None else available_bytes
    sizes = f"{num_images} decoded images take {num_images * config.image_size**2 * 3 / 1e6:,.0f} MB"
    if cache_fits(num_images, config.image_size, available):
        return True, f"on: {sizes} of {available / 1e6:,.0f} MB available"
    return False, (
        f"off: {sizes}, more than {CACHE_MEMORY_SHARE:.0%} of the {available / 1e6:,.0f} MB "
        "available; streaming from the records instead"
    )


@dataclasses.dataclass(frozen=True)
class TrainBatches:
    """What a run's fits train on.

    Attributes:
      passes: the epochs, their length stated (`epochs.TrainPasses`).
      callbacks: what moves the input to each epoch (`callbacks.FollowEpochs`), if anything.
      probe: whether the input may be timed alone after an epoch (`callbacks.EpochThroughput`).
    """

    passes: epochs.TrainPasses
    callbacks: tuple[keras.callbacks.Callback, ...]
    probe: bool


@dataclasses.dataclass(frozen=True)
class LocalInput:
    """Training batches made in this process, each epoch at the position the fit moves:
    backed up and resumed at any batch, and timed alone after each epoch."""

    mid_epoch: ClassVar[bool] = True

    def describe(self) -> str:
        return "tf.data in this process"

    def check(self) -> None:
        """Nothing to reach."""

    def train_config(self, config: dataset.InputConfig) -> dataset.InputConfig:
        return config

    def batches(self, plan: RunPlan, epoch: int, step: int) -> TrainBatches:
        position = epochs.EpochPosition(epoch, step)
        passes = dataset.train_passes(plan.config.records, plan.train_input, "train", position,
                                      plan.steps_per_epoch, plan.train_manifest)
        # Timing the input alone would keep one process from the others' next step.
        probe = not plan.placement.processes.several
        return TrainBatches(passes, (callbacks.FollowEpochs(position, epoch, step),), probe=probe)


@dataclasses.dataclass(frozen=True)
class ServiceInput:
    """Training batches made by tf.data service workers, whole epochs back to back: a
    run resumes at an epoch's start (the workers make whole epochs), and its input is
    never timed alone (a probe would start another job: another distributed epoch)."""

    address: service.Address
    mid_epoch: ClassVar[bool] = False

    def describe(self) -> str:
        return f"tf.data service at {self.address.target} (dynamic sharding: each example once per epoch)"

    def check(self) -> None:
        """cli.InputError naming --data_service unless its dispatcher answers."""
        service.check_reachable(self.address)

    def train_config(self, config: dataset.InputConfig) -> dataset.InputConfig:
        """Warped with TensorFlow ops (the only ones a worker runs), not cached (each epoch
        deals the shards out to the workers anew)."""
        return dataclasses.replace(config, cache=False, host_warp=augment.HostWarp.TENSORFLOW, distributed=True)

    def batches(self, plan: RunPlan, epoch: int, step: int) -> TrainBatches:
        del epoch, step  # the workers' epochs know no position
        passes = service.train_passes(plan.config.records, plan.train_input, self.address, plan.manifest)
        return TrainBatches(passes, (), probe=False)


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """A training run, worked out once by `plan_run`.

    Attributes:
      config: the run's settings, `augment_on` resolved for `hardware`.
      hardware: the devices found.
      manifest: the records' manifest, read once.
      cache: whether the train and validation images are cached; `cache_reason` says why, in words.
      train_input, eval_input: the InputConfigs of training and evaluation.
      source: where the training batches are made.
      placement: the replicas and processes the run spreads over.
      train_manifest: the manifest as this process reads the train split: its
        share of the shards (`shares.share_manifest`), `manifest` in one process.
      steps_per_epoch: batches an epoch; None: one pass over the (shared) split.
    """

    config: run_config.TrainConfig
    hardware: hardware.Hardware
    manifest: schema.Manifest
    cache: bool
    cache_reason: str
    train_input: dataset.InputConfig
    eval_input: dataset.InputConfig
    source: LocalInput | ServiceInput
    placement: distribution.Placement
    train_manifest: schema.Manifest
    steps_per_epoch: int | None

    def batches(self, epoch: int = 0, step: int = 0) -> TrainBatches:
        """The training batches from `epoch`, batch `step` (a resumed run's backup): train.py's and bench.py's."""
        return self.source.batches(self, epoch, step)


def plan_run(
    config: run_config.TrainConfig, manifest: schema.Manifest, found: hardware.Hardware | None = None,
    available_bytes: int | None = None, placement: distribution.Placement | None = None,
) -> RunPlan:
    """Works a run out: the hardware (`hardware.detect()` unless `found`), the cache (for
    `available_bytes`, default the memory available now), the input configs, the source,
    this process's share of the records (`placement`, default: one device, one process).

    Raises:
      cli.SettingError: a --data_service that is no address, or with batches split over JAX devices.
      shares.TooFewShardsError: fewer train shards than processes.
    """
    found = hardware.detect() if found is None else found
    placement = placement or distribution.Placement(1, distribution.Processes(), jax=False)
    config = run_config.resolve_augment_on(config, found)
    if config.data_service and placement.even_batches:
        raise cli.SettingError(
            f"--data_service with {placement.describe(config)} on JAX: the service's workers make batches of "
            "any size at an epoch's end, which JAX cannot split over the replicas; train without --data_service")
    share = placement.processes.share
    train_manifest = shares.share_manifest(manifest, "train", share, config.records)
    cache, reason = decide_cache(config, manifest, available_bytes, share.count)
    source = ServiceInput(service.Address.parse(config.data_service)) if config.data_service else LocalInput()
    evaluation = dataset.InputConfig(
        image_size=(config.image_size, config.image_size),
        batch_size=placement.local_batch(config.batch_size),
        class_mode="binary" if manifest.num_classes == 2 else "categorical",
        cache=cache,
        seed=config.seed,
    )
    host = config.augment and config.augment_on is run_config.AugmentOn.HOST
    train = dataclasses.replace(evaluation, augmentation=augment.NOTEBOOK_AUGMENTATION if host else None,
                                drop_remainder=placement.even_batches)
    steps = config.steps_per_epoch
    if steps is None and placement.even_batches:  # every process as many whole batches: the smallest share's
        steps = shares.common_steps(manifest, "train", share.count, evaluation.batch_size)
        if steps == 0:
            raise cli.InputError(
                f"the train split's smallest share holds fewer images than a batch of {evaluation.batch_size} "
                f"per process: pass a smaller --batch_size than {config.batch_size}")
    return RunPlan(config, found, manifest, cache, reason, source.train_config(train), evaluation, source,
                   placement, train_manifest, steps)


def validation_batches(plan: RunPlan) -> tf.data.Dataset | None:
    """The validation split's batches, repeated when `validation_steps` counts them; None without the split.

    Split over JAX replicas, every process pads its share to whole batches with
    images of weight 0 (`shares.weighted_eval_dataset`): the metrics still count each image once.
    """
    if "validation" not in plan.manifest.splits:
        return None
    if plan.placement.even_batches:
        ds, _ = shares.weighted_eval_dataset(plan.config.records, "validation", plan.eval_input, plan.manifest,
                                             plan.placement.processes.share)
    else:
        ds = dataset.eval_dataset(plan.config.records, "validation", plan.eval_input, plan.manifest)
    return ds.repeat() if plan.config.validation_steps else ds
