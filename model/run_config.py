"""A training run's settings: `TrainConfig`, whose fields are train.py's flags."""

from __future__ import annotations

import dataclasses
import enum
import os

from model import cnn
from model import hardware
from pipeline import cli
from pipeline.reader import dataset

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
    """A training run: each field is a train.py flag of the same name, its help the field's documentation.

    Raises (on construction):
      cli.SettingError: a value out of its bounds, naming the flag; a required
        field unset; `backup_every_steps` with `data_service`; bad `profile_batches`.
    """

    records: str = cli.setting(help="Records folder written by convert.py.")
    model_dir: str = cli.setting("runs/cnn", help="Output folder; rerun with it to resume.")
    epochs: int = cli.setting(
        50, help="Epochs to train, in all (a resumed run counts the ones done).", at_least=1)
    batch_size: int = cli.setting(
        dataset.DEFAULT_BATCH_SIZE, at_least=1,
        help="Images per batch: the global batch, split evenly over the replicas of --strategy=mirrored.")
    steps_per_epoch: int | None = cli.setting(
        None, help="Batches per epoch. Default: one pass over the train split.", at_least=1)
    validation_steps: int | None = cli.setting(
        None, help="Validation batches per epoch. Default: the whole validation split.", at_least=1)
    learning_rate: float = cli.setting(cnn.DEFAULT_LEARNING_RATE, help="Adam learning rate.", above=0)
    augment: bool = cli.setting(True, help="The notebook's augmentation (flips, rotation, zoom, shift).")
    augment_on: AugmentOn = cli.setting(
        AugmentOn.AUTO,
        help="host: in tf.data on the CPU; device: as the model's first layer, on the GPU; "
             "auto: device when a GPU is found, else host.")
    image_size: int = cli.setting(
        dataset.DEFAULT_IMAGE_SIZE[0], help="Square input size.", at_least=cnn.MIN_IMAGE_SIZE)
    cache: bool = cli.setting(True, help="Keep decoded images in memory after the first epoch.")
    mixed_precision: bool = cli.setting(False, help="float16 compute on GPU (bfloat16 on CPU).")
    jit_compile: bool = cli.setting(False, help="Compile the train step with XLA.")
    save_h5: bool = cli.setting(False, help="Also save model.h5, as the notebook did.")
    export: bool = cli.setting(
        True, help="Also write MODEL_DIR/export: a SavedModel that takes encoded images.")
    pictures: bool = cli.setting(
        True,
        help="Draw input_batch.png, augmented_variants.png, training_curves.png (after every epoch) and the "
             "test split's confusion_matrix.png and mistakes.png (a few seconds of CPU a run).")
    strategy: Strategy = cli.setting(
        Strategy.DEFAULT,
        help="default: one device; mirrored: every local GPU, one replica each (--batch_size is the global batch).")
    data_service: str | None = cli.setting(
        None,
        help="grpc://HOST:PORT of a tf.data service dispatcher whose workers prepare the training batches "
             "(start them with data_service.py; validation stays here). Default: prepare them in this process.")
    input_timeout: int = cli.setting(
        600, at_least=1,
        help="With --data_service: seconds without a training batch (a lost worker or dispatcher) after which "
             "the run ends with one line and exit status 75, its last backup kept.")
    profile_batches: tuple[int, int] | None = cli.setting(
        None, help="Write a TensorBoard profiler trace of training batches A to B (e.g. 10,20) to <model_dir>/logs.")
    seed: int = cli.setting(0, help="Seed of weights, shuffles and augmentation.")
    backup_every_steps: int | None = cli.setting(
        None, at_least=1,
        help="Also back up every N batches of an epoch, to resume there after a kill. Default: at epoch ends "
             "(and on SIGTERM or Ctrl-C).")
    deterministic: bool = cli.setting(
        False,
        help="TensorFlow op determinism, for the whole process: a resumed run ends with the very weights of "
             "an uninterrupted one (it sees the same batches either way). Slower.")
    verbose: int = cli.setting(
        2, help="Keras progress output: 0 silent, 1 bar, 2 a line per epoch.", at_least=0, at_most=2)

    def __post_init__(self):
        cli.check_settings(self)
        if self.backup_every_steps and self.data_service:
            raise cli.SettingError("--backup_every_steps needs the input made in this process: "
                             "a run on tf.data service resumes at the epoch")
        if self.profile_batches is not None and not 1 <= self.profile_batches[0] <= self.profile_batches[1]:
            raise cli.SettingError(f"--profile_batches must be A,B with 1 <= A <= B, got {self.profile_batches}")

    def path(self, *names: str) -> str:
        """A path inside model_dir."""
        return os.path.join(self.model_dir, *names)


def resolve_augment_on(config: TrainConfig, found: hardware.Hardware) -> TrainConfig:
    """`config` with AugmentOn.AUTO replaced by DEVICE on a GPU, else HOST."""
    if config.augment_on is not AugmentOn.AUTO:
        return config
    return dataclasses.replace(config, augment_on=AugmentOn.DEVICE if found.gpus else AugmentOn.HOST)
