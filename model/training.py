"""Trains the CNN on a records folder: the library behind train.py.

    model_dir/
      model.keras            # the trained model (model.h5 too, on request)
      history.json           # one entry per epoch, kept across resumes
      training_curves.png    # accuracy and loss, training and validation
      input_batch.png        # a 4x5 grid of one training batch
      augmented_variants.png # 20 augmentations of one training image
      results.json           # test-split metrics and the last epoch's logs
      checkpoints/epoch_001.keras ...
      run.json               # the settings that define the run (model/run_dir.py)
      backup/                # the last complete epoch's state: a rerun resumes here
      logs/                  # TensorBoard

A rerun with the same model_dir resumes; one with other settings is refused.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import os

import keras
import numpy as np
import psutil
import tensorflow as tf
from absl import logging

from model import callbacks
from model import cnn
from model import hardware
from model import run_dir
from pipeline import augment
from pipeline import dataset
from pipeline import fileio
from pipeline import plots
from pipeline import schema
from pipeline import service

_PICTURE_COUNT = 20  # the notebook's 4x5 grids
INPUT_PICTURES = ("input_batch.png", "augmented_variants.png")
# The cache may take this share of the memory available at start; beyond it
# the run streams from the records (a cache that does not fit kills the run).
CACHE_MEMORY_SHARE = 0.5
# Lower bounds of the numeric settings; train.py's flags use the same.
LOWER_BOUNDS = {
    "epochs": 1,
    "batch_size": 1,
    "steps_per_epoch": 1,
    "validation_steps": 1,
    "image_size": cnn.MIN_IMAGE_SIZE,
    "verbose": 0,
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
      strategy: one device, or mirrored over the local devices.
      data_service: a tf.data service dispatcher, grpc://HOST:PORT, whose
        workers prepare the training batches (validation stays local); None
        to prepare them in this process.
      profile_batches: (first, last) training batch of a TensorBoard profiler
        trace, or None for no trace.
      seed: seed of weights, shuffles and augmentation.
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
    strategy: Strategy = Strategy.DEFAULT
    data_service: str | None = None
    profile_batches: tuple[int, int] | None = None
    seed: int = 0
    verbose: int = 2

    def __post_init__(self):
        for name, bound in LOWER_BOUNDS.items():
            value = getattr(self, name)
            if value is not None and value < bound:
                raise ValueError(f"--{name} must be at least {bound}, got {value}")
        if not self.learning_rate > 0:
            raise ValueError(f"--learning_rate must be positive, got {self.learning_rate}")
        if self.profile_batches is not None and not 1 <= self.profile_batches[0] <= self.profile_batches[1]:
            raise ValueError(f"--profile_batches must be A,B with 1 <= A <= B, got {self.profile_batches}")

    def path(self, *names: str) -> str:
        """A path inside model_dir."""
        return os.path.join(self.model_dir, *names)


def run_settings(config: TrainConfig, manifest: schema.Manifest) -> dict:
    """The settings that define a run: RUN_DEFINING_FIELDS, the records' identity and classes."""
    records = {k: v for k, v in manifest.to_json().items() if k != "source"}  # the folder may move
    fingerprint = hashlib.sha256(json.dumps(records, sort_keys=True).encode()).hexdigest()[:16]
    settings = {name: getattr(config, name) for name in RUN_DEFINING_FIELDS}
    settings["augment_on"] = config.augment_on.value
    return {**settings, "records": fingerprint, "class_names": list(manifest.class_names)}


def cache_fits(num_images: int, image_size: int, available_bytes: int) -> bool:
    """Whether `num_images` decoded uint8 images fit in CACHE_MEMORY_SHARE of the memory."""
    return num_images * image_size * image_size * 3 <= CACHE_MEMORY_SHARE * available_bytes


def decide_cache(
    config: TrainConfig, manifest: schema.Manifest, available_bytes: int | None = None
) -> tuple[bool, str]:
    """Whether to cache the train and validation images: asked, and they fit.

    Returns:
      (cache on, the reason in words).
    """
    if not config.cache:
        return False, "off (--nocache): every epoch decodes the records"
    num_images = sum(split.num_examples for name, split in manifest.splits.items() if name != "test")
    available = psutil.virtual_memory().available if available_bytes is None else available_bytes
    sizes = f"{num_images} decoded images take {num_images * config.image_size**2 * 3 / 1e6:,.0f} MB"
    if cache_fits(num_images, config.image_size, available):
        return True, f"on: {sizes} of {available / 1e6:,.0f} MB available"
    return False, (
        f"off: {sizes}, more than {CACHE_MEMORY_SHARE:.0%} of the {available / 1e6:,.0f} MB "
        "available; streaming from the records instead"
    )


def resolve_augment_on(config: TrainConfig, found: hardware.Hardware) -> TrainConfig:
    """`config` with AugmentOn.AUTO replaced by DEVICE on a GPU, else HOST."""
    if config.augment_on is not AugmentOn.AUTO:
        return config
    return dataclasses.replace(config, augment_on=AugmentOn.DEVICE if found.gpus else AugmentOn.HOST)


def make_strategy(config: TrainConfig) -> tf.distribute.Strategy:
    """The tf.distribute strategy of a run: the default one, or mirrored over
    the local GPUs (the logical CPU devices where there is no GPU)."""
    if config.strategy is Strategy.DEFAULT:
        return tf.distribute.get_strategy()
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    return tf.distribute.MirroredStrategy([device.name for device in devices])


def describe_setup(
    config: TrainConfig, found: hardware.Hardware, strategy: tf.distribute.Strategy, cache_reason: str
) -> dict[str, str]:
    """What the run uses, as logged at start and kept in results.json."""
    if not config.augment:
        augmentation = "off"
    elif config.augment_on is AugmentOn.DEVICE:
        augmentation = "device (the model's first layer)"
    else:
        augmentation = "host (tf.data, OpenCV warp)"
    return {
        "devices": found.describe(),
        "strategy": (
            f"{config.strategy.value}: {strategy.num_replicas_in_sync} replica(s), "
            f"global batch {config.batch_size}"
        ),
        "precision": keras.mixed_precision.global_policy().name,
        "xla": "on" if config.jit_compile else "off",
        "augmentation": augmentation,
        "cache": cache_reason,
        "input": (
            f"tf.data service at {config.data_service} (dynamic sharding: each example once per epoch)"
            if config.data_service else "tf.data in this process"
        ),
    }


def input_configs(
    config: TrainConfig, num_classes: int, cache: bool | None = None
) -> tuple[dataset.InputConfig, dataset.InputConfig]:
    """The training and evaluation InputConfigs of a run (`cache`: default config.cache).

    Training batches made on tf.data service workers are warped with
    TensorFlow ops (the only ones a worker can run) and not cached (each
    epoch hands the shards out to the workers anew).
    """
    config = resolve_augment_on(config, hardware.detect())
    host = config.augment and config.augment_on is AugmentOn.HOST
    evaluation = dataset.InputConfig(
        image_size=(config.image_size, config.image_size),
        batch_size=config.batch_size,
        class_mode="binary" if num_classes == 2 else "categorical",
        cache=config.cache if cache is None else cache,
        seed=config.seed,
    )
    train = dataclasses.replace(evaluation, augmentation=augment.NOTEBOOK_AUGMENTATION if host else None)
    if config.data_service:
        train = dataclasses.replace(train, cache=False, host_warp=augment.HostWarp.TENSORFLOW, distributed=True)
    return train, evaluation


def training_input(config: TrainConfig, manifest: schema.Manifest, cache: bool) -> tf.data.Dataset:
    """The batches a run trains on: made here, or by the tf.data service's workers."""
    train_config, _ = input_configs(config, manifest.num_classes, cache)
    train_ds = dataset.train_dataset(config.records, train_config)
    if config.data_service:
        train_ds = dataset.scale_on_trainer(service.distribute(train_ds, service.Address.parse(config.data_service)))
    return train_ds.repeat() if config.steps_per_epoch else train_ds


def build_model(config: TrainConfig, num_classes: int) -> keras.Model:
    """The compiled CNN of a run (sets the global precision policy first)."""
    if config.mixed_precision:
        gpu = bool(tf.config.list_physical_devices("GPU"))
        keras.mixed_precision.set_global_policy("mixed_float16" if gpu else "mixed_bfloat16")
    else:
        keras.mixed_precision.set_global_policy("float32")
    config = resolve_augment_on(config, hardware.detect())
    device = config.augment and config.augment_on is AugmentOn.DEVICE
    model = cnn.build_cnn(
        (config.image_size, config.image_size),
        num_classes,
        augment.NOTEBOOK_AUGMENTATION if device else None,
        seed=config.seed,
    )
    return cnn.compile_cnn(model, config.learning_rate, jit_compile=config.jit_compile)


def save_input_pictures(config: TrainConfig, manifest: schema.Manifest) -> None:
    """Writes the INPUT_PICTURES, as in the notebook: one training batch, augmentations of one image."""
    batch_png, variants_png = (config.path(name) for name in INPUT_PICTURES)
    train_config, eval_config = input_configs(config, manifest.num_classes)
    pictures = dataclasses.replace(train_config, cache=False, batch_size=_PICTURE_COUNT)
    images, labels = next(iter(dataset.train_dataset(config.records, pictures)))
    label_ids = np.argmax(labels, axis=-1) if labels.ndim == 2 else np.asarray(labels).astype(int)
    plots.plot_image_grid(
        images.numpy(), [manifest.class_names[i] for i in label_ids],
        batch_png, suptitle="One training batch",
    )
    first = next(iter(dataset.eval_dataset(config.records, "train", dataclasses.replace(eval_config, cache=False))))
    image = tf.cast(tf.round(first[0][0] * 255.0), tf.uint8)
    variants = augment.augmented_variants(image, _PICTURE_COUNT, config.seed)
    plots.plot_image_grid(
        variants.numpy() / 255.0, [f"variant {i + 1}" for i in range(_PICTURE_COUNT)],
        variants_png, suptitle=f"{_PICTURE_COUNT} augmentations of one image",
    )


def _callbacks(config: TrainConfig, train_ds: tf.data.Dataset) -> list[keras.callbacks.Callback]:
    # The backup comes last: its commit says the epoch's history and checkpoint are written.
    return [
        # With --data_service a probe of the input would start a new service job
        # (another distributed epoch) after every epoch: the training rate only.
        callbacks.EpochThroughput(config.batch_size, input_data=None if config.data_service else train_ds),
        callbacks.HistoryFile(config.path("history.json"), config.path("training_curves.png")),
        run_dir.EpochCheckpoint(config.path("checkpoints")),
        keras.callbacks.TensorBoard(config.path("logs"), profile_batch=config.profile_batches or 0),
        run_dir.Backup(config.path("backup")),
    ]


def train_and_evaluate(config: TrainConfig) -> dict:
    """Trains (or resumes training), saves everything listed in the module doc.

    Returns:
      The contents of results.json: final epoch logs, test metrics when the
      records have a test split, and the file paths written; "already_complete"
      is true when the model_dir held a finished run of `config.epochs` or more.

    Raises:
      ValueError: no records, records without a train split, or (as
        run_dir.RunMismatchError) a model_dir that holds another run.
      FileNotFoundError: the records folder has no manifest.
    """
    if not config.records:
        raise ValueError("--records is required: a folder written by convert.py")
    if config.data_service:
        service.Address.parse(config.data_service)  # a bad address fails before any work
    manifest = schema.read_manifest(config.records)
    manifest.split("train", config.records)
    found = hardware.detect()
    config = resolve_augment_on(config, found)
    tf.io.gfile.makedirs(config.model_dir)
    run_dir.record_settings(config.model_dir, run_settings(config, manifest))
    done = run_dir.completed_epochs(config.path("backup"))
    if done >= config.epochs and tf.io.gfile.exists(config.path("results.json")):
        logging.info("%s already holds a finished run of %d epochs", config.model_dir, done)
        return {**fileio.read_json(config.path("results.json")), "already_complete": True}
    keras.utils.set_random_seed(config.seed)

    cache, cache_reason = decide_cache(config, manifest)
    _, eval_config = input_configs(config, manifest.num_classes, cache)
    strategy = make_strategy(config)
    with strategy.scope():
        model = build_model(config, manifest.num_classes)
    setup = describe_setup(config, found, strategy, cache_reason)
    logging.info("setup:\n%s", "\n".join(f"  {key:<13} {value}" for key, value in setup.items()))
    for warning in hardware.cpu_only_warnings(found, config.mixed_precision, config.jit_compile):
        logging.warning("%s", warning)
    # A resumed run has the same settings (record_settings refused any other),
    # so the pictures its first run drew still hold.
    if done == 0 or not all(tf.io.gfile.exists(config.path(name)) for name in INPUT_PICTURES):
        save_input_pictures(config, manifest)
    train_ds = training_input(config, manifest, cache)
    val_ds = None
    if "validation" in manifest.splits:
        val_ds = dataset.eval_dataset(config.records, "validation", eval_config)
        if config.validation_steps:
            val_ds = val_ds.repeat()

    model.fit(
        train_ds,
        epochs=config.epochs,
        steps_per_epoch=config.steps_per_epoch,
        validation_data=val_ds,
        validation_steps=config.validation_steps if val_ds is not None else None,
        callbacks=_callbacks(config, train_ds),
        verbose=config.verbose,
        shuffle=False,  # the datasets shuffle themselves
    )
    files = {"model": config.path("model.keras")}
    if config.save_h5:
        files["model_h5"] = config.path("model.h5")
    for path in files.values():
        run_dir.save_model(model, path)

    history = callbacks.read_history(config.path("history.json"))
    results = {
        "epochs_done": len(history), "last_epoch": history[-1] if history else None, "files": files, "setup": setup,
    }
    if "test" in manifest.splits:
        test_ds = dataset.eval_dataset(config.records, "test", dataclasses.replace(eval_config, cache=False))
        results["test"] = model.evaluate(test_ds, verbose=0, return_dict=True)
        logging.info("test: %s", results["test"])
    fileio.write_json(config.path("results.json"), results)
    return results
