"""Trains the CNN on a records folder: the library behind train.py.

    model_dir/
      model.keras            # the trained model (model.h5 too, on request)
      history.json           # one entry per epoch, kept across resumes
      training_curves.png    # accuracy and loss, training and validation
      input_batch.png        # a 4x5 grid of one training batch
      augmented_variants.png # 20 augmentations of one training image
      results.json           # test-split metrics and input throughput
      checkpoints/epoch_001.keras ...
      backup/                # BackupAndRestore state: a rerun resumes here
      logs/                  # TensorBoard
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from model import cnn
from pipeline import augment
from pipeline import dataset
from pipeline import plots
from pipeline import schema


class AugmentOn(enum.Enum):
    """Where the notebook augmentation runs."""

    HOST = "host"  # in tf.data, on the CPU (OpenCV warp)
    DEVICE = "device"  # as the model's first layer, on the accelerator


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """train.py's flags, with the notebook's defaults."""

    records: str
    model_dir: str = "runs/cnn"
    epochs: int = 50
    batch_size: int = 20
    steps_per_epoch: int | None = None  # default: one pass over train
    validation_steps: int | None = None  # default: all of validation
    learning_rate: float = 1e-4
    augment: bool = True
    augment_on: AugmentOn = AugmentOn.HOST
    image_size: tuple[int, int] = dataset.DEFAULT_IMAGE_SIZE
    cache: bool = True
    mixed_precision: bool = False
    jit_compile: bool = False
    save_h5: bool = False
    seed: int = 0
    verbose: int = 2


class EpochThroughput(keras.callbacks.Callback):
    """Adds `images_per_second` (training batches only) to each epoch's logs."""

    def __init__(self, batch_size: int):
        super().__init__()
        self.batch_size = batch_size

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._last = self._start
        self._batches = 0

    def on_train_batch_end(self, batch, logs=None):
        self._batches += 1
        self._last = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = max(self._last - self._start, 1e-9)
        rate = self._batches * self.batch_size / seconds
        if logs is not None:
            logs["images_per_second"] = rate
        logging.info("epoch %d: %.0f training images/s", epoch + 1, rate)


class HistoryFile(keras.callbacks.Callback):
    """Keeps history.json and the curves PNG current after every epoch.

    Entries are keyed by epoch, so a resumed run replaces the epochs it
    repeats and keeps the ones before.
    """

    def __init__(self, history_path: str, plot_path: str):
        super().__init__()
        self.history_path = history_path
        self.plot_path = plot_path
        self.entries = {entry["epoch"]: entry for entry in read_history(history_path)}

    def on_epoch_end(self, epoch, logs=None):
        self.entries[epoch] = {"epoch": epoch, **{k: float(v) for k, v in (logs or {}).items()}}
        history = [self.entries[e] for e in sorted(self.entries) if e <= epoch]
        _write_json(self.history_path, history)
        plots.plot_history(history, self.plot_path)


def read_history(path: str) -> list[dict]:
    """The epochs recorded in history.json, or [] when there is none."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _write_json(path: str, data) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def input_configs(config: TrainConfig, num_classes: int) -> tuple[dataset.InputConfig, dataset.InputConfig]:
    """The training and evaluation InputConfigs of a TrainConfig."""
    class_mode = "binary" if num_classes == 2 else "categorical"
    host_augmentation = (
        augment.NOTEBOOK_AUGMENTATION
        if config.augment and config.augment_on is AugmentOn.HOST
        else None
    )
    common = dict(image_size=config.image_size, batch_size=config.batch_size, class_mode=class_mode, seed=config.seed)
    train = dataset.InputConfig(training=True, augmentation=host_augmentation, cache=config.cache, **common)
    evaluation = dataset.InputConfig(training=False, cache=config.cache, **common)
    return train, evaluation


def save_input_pictures(records: str, train_config: dataset.InputConfig, class_names, model_dir: str) -> None:
    """Writes input_batch.png and augmented_variants.png, as in the notebook."""
    batch_config = dataclasses.replace(train_config, cache=False, batch_size=20)
    images, labels = next(iter(dataset.build_dataset(records, "train", batch_config)))
    label_ids = np.argmax(labels, axis=-1) if labels.ndim == 2 else np.asarray(labels).astype(int)
    plots.plot_image_grid(
        images.numpy(), [class_names[i] for i in label_ids],
        os.path.join(model_dir, "input_batch.png"), suptitle="One training batch",
    )
    plain = dataclasses.replace(batch_config, augmentation=None, training=False)
    image = next(iter(dataset.build_dataset(records, "train", plain)))[0][:1]
    uint8 = tf.cast(tf.round(tf.repeat(image, 20, axis=0) * 255.0), tf.uint8)
    variants = augment.augment_batch_on_host(uint8, tf.constant([train_config.seed or 0, 7], tf.int64))
    plots.plot_image_grid(
        variants.numpy() / 255.0, [f"variant {i + 1}" for i in range(20)],
        os.path.join(model_dir, "augmented_variants.png"), suptitle="20 augmentations of one image",
    )


def train_and_evaluate(config: TrainConfig) -> dict:
    """Trains (or resumes training), saves everything listed in the module doc.

    Returns:
      The contents of results.json: final epoch logs, test metrics when the
      records have a test split, and the file paths written.
    """
    manifest = schema.read_manifest(config.records)
    if "train" not in manifest.splits:
        raise ValueError(f"{config.records} has no train split")
    os.makedirs(config.model_dir, exist_ok=True)
    keras.utils.set_random_seed(config.seed)
    if config.mixed_precision:
        gpu = bool(tf.config.list_physical_devices("GPU"))
        keras.mixed_precision.set_global_policy("mixed_float16" if gpu else "mixed_bfloat16")

    train_config, eval_config = input_configs(config, manifest.num_classes)
    save_input_pictures(config.records, train_config, manifest.class_names, config.model_dir)
    train_ds = dataset.build_dataset(config.records, "train", train_config)
    if config.steps_per_epoch:
        train_ds = train_ds.repeat()
    val_ds = None
    if "validation" in manifest.splits:
        val_ds = dataset.build_dataset(config.records, "validation", eval_config)
        if config.validation_steps:
            val_ds = val_ds.repeat()

    device_augmentation = (
        augment.NOTEBOOK_AUGMENTATION if config.augment and config.augment_on is AugmentOn.DEVICE else None
    )
    model = cnn.compile_cnn(
        cnn.build_cnn(config.image_size, manifest.num_classes, device_augmentation, seed=config.seed),
        learning_rate=config.learning_rate,
        jit_compile=config.jit_compile,
    )
    path = lambda name: os.path.join(config.model_dir, name)  # noqa: E731
    os.makedirs(path("checkpoints"), exist_ok=True)
    callbacks = [
        keras.callbacks.BackupAndRestore(path("backup"), delete_checkpoint=False),
        EpochThroughput(config.batch_size),
        HistoryFile(path("history.json"), path("training_curves.png")),
        keras.callbacks.ModelCheckpoint(os.path.join(path("checkpoints"), "epoch_{epoch:03d}.keras")),
        keras.callbacks.TensorBoard(path("logs")),
    ]
    model.fit(
        train_ds,
        epochs=config.epochs,
        steps_per_epoch=config.steps_per_epoch,
        validation_data=val_ds,
        validation_steps=config.validation_steps if val_ds is not None else None,
        callbacks=callbacks,
        verbose=config.verbose,
        shuffle=False,  # the datasets shuffle themselves
    )
    model.save(path("model.keras"))
    files = {"model": path("model.keras")}
    if config.save_h5:
        model.save(path("model.h5"))
        files["model_h5"] = path("model.h5")

    history = read_history(path("history.json"))
    results = {"epochs_done": len(history), "last_epoch": history[-1] if history else None, "files": files}
    if "test" in manifest.splits:
        test_ds = dataset.build_dataset(config.records, "test", dataclasses.replace(eval_config, cache=False))
        results["test"] = model.evaluate(test_ds, verbose=0, return_dict=True)
        logging.info("test: %s", results["test"])
    _write_json(path("results.json"), results)
    return results
