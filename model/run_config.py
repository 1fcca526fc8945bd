"""A training run's settings: `TrainConfig`, one field per train.py flag."""

from __future__ import annotations

import dataclasses
import enum
import os

from model import cnn
from model import hardware
from pipeline.reader import dataset

# Lower bounds of the numeric settings; train.py's flags use the same.
LOWER_BOUNDS = {
    "epochs": 1,
    "batch_size": 1,
    "steps_per_epoch": 1,
    "validation_steps": 1,
    "image_size": cnn.MIN_IMAGE_SIZE,
    "verbose": 0,
    "backup_every_steps": 1,
}
# The settings that define a run: a resume must not change them.
RUN_DEFINING_FIELDS = (
    "batch_size", "steps_per_epoch", "learning_rate", "augment", "augment_on", "image_size", "seed",
)


class AugmentOn(enum.Enum):
    """Where the notebook augmentation runs."""

    AUTO = "auto"  # DEVICE when a GPU is found, else HOST
    HOST = "host"  # in tf.data, on the CPU (OpenCV warp)
    DEVICE = "device"  # as the model's first layer, on the accelerator


class Strategy(enum.Enum):
    """How training spreads over the local devices (tf.distribute)."""

    DEFAULT = "default"  # one device
    MIRRORED = "mirrored"  # every local GPU (or every logical CPU device), one replica each


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A training run; train.py has one flag per field, of the same name.

    Attributes:
      records: folder written by convert.py.
      model_dir: outputs; a rerun with the same folder resumes.
      epochs: epochs to train, in all (a resumed run counts the done ones).
      batch_size: images per batch: the global batch, split evenly over the
        replicas of a mirrored strategy.
      steps_per_epoch: batches per epoch; None for one pass over train.
      validation_steps: validation batches per epoch; None for all.
      learning_rate: Adam's learning rate.
      augment: the notebook's augmentation.
      augment_on: where it runs; AUTO picks from the hardware found.
      image_size: the square input size.
      cache: keep decoded images in memory after the first epoch.
      mixed_precision: float16 compute on a GPU, bfloat16 on a CPU.
      jit_compile: compile the train step with XLA.
      save_h5: also save model.h5.
      export: also write export/, a SavedModel that takes encoded images (model.inference).
      pictures: draw input_batch.png and augmented_variants.png at the start,
        training_curves.png after every epoch and the test split's
        confusion_matrix.png and mistakes.png (a few seconds of CPU a run).
      strategy: one device, or mirrored over the local devices.
      data_service: a tf.data service dispatcher, grpc://HOST:PORT, whose
        workers prepare the training batches (validation stays local); None
        to prepare them in this process.
      profile_batches: (first, last) training batch of a TensorBoard profiler
        trace, or None for no trace.
      seed: seed of weights, shuffles and augmentation.
      backup_every_steps: also back up every this many batches of an epoch
        (besides every epoch's end and a stop), so that a kill loses at most
        that many; None for epoch ends only.
      deterministic: TensorFlow's op determinism: a resumed run then ends
        with the very weights of an uninterrupted one (it sees the same
        batches either way). Slower; for the whole process.
      verbose: Keras' progress output (0, 1 or 2).
    """

    records: str | None = None
    model_dir: str = "runs/cnn"
    epochs: int = 50
    batch_size: int = dataset.DEFAULT_BATCH_SIZE
    steps_per_epoch: int | None = None
    validation_steps: int | None = None
    learning_rate: float = cnn.DEFAULT_LEARNING_RATE
    augment: bool = True
    augment_on: AugmentOn = AugmentOn.AUTO
    image_size: int = dataset.DEFAULT_IMAGE_SIZE[0]
    cache: bool = True
    mixed_precision: bool = False
    jit_compile: bool = False
    save_h5: bool = False
    export: bool = True
    pictures: bool = True
    strategy: Strategy = Strategy.DEFAULT
    data_service: str | None = None
    profile_batches: tuple[int, int] | None = None
    seed: int = 0
    backup_every_steps: int | None = None
    deterministic: bool = False
    verbose: int = 2

    def __post_init__(self):
        for name, bound in LOWER_BOUNDS.items():
            value = getattr(self, name)
            if value is not None and value < bound:
                raise ValueError(f"--{name} must be at least {bound}, got {value}")
        if not self.learning_rate > 0:
            raise ValueError(f"--learning_rate must be positive, got {self.learning_rate}")
        if self.backup_every_steps and self.data_service:
            raise ValueError("--backup_every_steps needs the input made in this process: "
                             "a run on tf.data service resumes at the epoch")
        if self.profile_batches is not None and not 1 <= self.profile_batches[0] <= self.profile_batches[1]:
            raise ValueError(f"--profile_batches must be A,B with 1 <= A <= B, got {self.profile_batches}")

    def path(self, *names: str) -> str:
        """A path inside model_dir."""
        return os.path.join(self.model_dir, *names)


def resolve_augment_on(config: TrainConfig, found: hardware.Hardware) -> TrainConfig:
    """`config` with AugmentOn.AUTO replaced by DEVICE on a GPU, else HOST."""
    if config.augment_on is not AugmentOn.AUTO:
        return config
    return dataclasses.replace(config, augment_on=AugmentOn.DEVICE if found.gpus else AugmentOn.HOST)
