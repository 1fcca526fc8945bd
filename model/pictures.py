"""The input pictures a run draws, as the notebook did: one training batch, and
augmentations of one image (each a 4x5 grid)."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow as tf

from pipeline import plots
from pipeline import schema
from pipeline.reader import augment
from pipeline.reader import dataset

PICTURE_COUNT = 20  # the notebook's 4x5 grids
INPUT_PICTURES = ("input_batch.png", "augmented_variants.png")


def save_input_pictures(
    model_dir: str,
    records: str,
    manifest: schema.Manifest,
    train_config: dataset.InputConfig,
    eval_config: dataset.InputConfig,
    seed: int,
) -> None:
    """Writes the INPUT_PICTURES into `model_dir`, read from `records` (`manifest`: theirs) as the run reads them.

    Both are read in this process, also for a run on tf.data service (whose
    workers' batches stay uint8 until the trainer scales them).
    """
    batch_png, variants_png = (os.path.join(model_dir, name) for name in INPUT_PICTURES)
    batch = dataclasses.replace(train_config, cache=False, batch_size=PICTURE_COUNT, distributed=False)
    images, labels = next(iter(dataset.train_dataset(records, batch, manifest=manifest)))
    label_ids = np.argmax(labels, axis=-1) if labels.ndim == 2 else np.asarray(labels).astype(int)
    plots.plot_image_grid(
        images.numpy(), [manifest.class_names[i] for i in label_ids],
        batch_png, suptitle="One training batch",
    )
    first = next(iter(dataset.eval_dataset(records, "train", dataclasses.replace(eval_config, cache=False), manifest)))
    image = tf.cast(tf.round(first[0][0] * 255.0), tf.uint8)
    variants = augment.augmented_variants(image, PICTURE_COUNT, seed)
    plots.plot_image_grid(
        variants.numpy() / 255.0, [f"variant {i + 1}" for i in range(PICTURE_COUNT)],
        variants_png, suptitle=f"{PICTURE_COUNT} augmentations of one image",
    )
