"""The loaders the pipeline is compared with, and its decode ceiling.

Each can be iterated again and again, one epoch per `iter()`, as by Keras.
Both Keras loaders take their augmentation from an `augment.AugmentationConfig`,
whose fields are ImageDataGenerator's argument names.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import io
from collections.abc import Iterator
from typing import Any

import keras
import tensorflow as tf

from pipeline.reader import augment
from pipeline.reader import dataset
from pipeline.reader import read
from benchmark import BenchmarkError


def image_data_generator_class() -> tuple[type, str]:
    """Keras' legacy ImageDataGenerator, wherever this Keras keeps it, and that module."""
    for module_name in (
        "keras.preprocessing.image",  # exported by early Keras 3
        "keras.src.legacy.preprocessing.image",  # later Keras 3: unexported
        "tf_keras.preprocessing.image",  # the Keras 2 package
    ):
        with contextlib.suppress(ImportError):
            module = importlib.import_module(module_name)
            if hasattr(module, "ImageDataGenerator"):
                return module.ImageDataGenerator, module_name
    raise BenchmarkError("this Keras has no ImageDataGenerator (install tf-keras)")


class GeneratorEpochs:
    """A `flow_from_directory` iterator read by index, as `model.fit` reads it."""

    def __init__(self, flow: Any):
        self.flow = flow

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        self.flow.on_epoch_end()  # a new shuffled order
        for index in range(len(self.flow)):
            yield self.flow[index]


def idg_loader(
    split_dir: str, image_size: tuple[int, int], batch_size: int, class_mode: str,
    augmentation: augment.AugmentationConfig | None,
) -> GeneratorEpochs:
    """The notebook's `ImageDataGenerator(rescale=1/255, **augmentation).flow_from_directory(...)`."""
    generator_class, _ = image_data_generator_class()
    extra = dataclasses.asdict(augmentation) if augmentation else {}
    with contextlib.redirect_stdout(io.StringIO()):  # "Found N images ..."
        flow = generator_class(rescale=1.0 / 255, **extra).flow_from_directory(
            split_dir, target_size=image_size, batch_size=batch_size, class_mode=class_mode)
    return GeneratorEpochs(flow)


def keras_augmentation_layers(config: augment.AugmentationConfig) -> list[keras.layers.Layer]:
    """Keras' random layers closest to ImageDataGenerator with `config`."""
    flip = {(True, True): "horizontal_and_vertical", (True, False): "horizontal", (False, True): "vertical"}.get(
        (config.horizontal_flip, config.vertical_flip))
    return ([keras.layers.RandomFlip(flip)] if flip else []) + [
        keras.layers.RandomRotation(config.rotation_range / 360, fill_mode="nearest"),
        keras.layers.RandomZoom(config.zoom_range, fill_mode="nearest"),
        keras.layers.RandomTranslation(config.height_shift_range, config.width_shift_range, fill_mode="nearest"),
    ]


def keras_directory_loader(
    split_dir: str, image_size: tuple[int, int], batch_size: int, label_mode: str,
    augmentation: augment.AugmentationConfig | None,
) -> tf.data.Dataset:
    """`image_dataset_from_directory`, then [random layers and] the rescale in one parallel `map`."""
    with contextlib.redirect_stdout(io.StringIO()):  # "Found N files ..."
        ds = keras.utils.image_dataset_from_directory(
            split_dir, image_size=image_size, batch_size=batch_size, label_mode=label_mode)
    layers = keras_augmentation_layers(augmentation) if augmentation else []

    def prepare(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        for layer in layers:  # before the rescale, as in ImageDataGenerator
            images = layer(images, training=True)
        return images * (1.0 / 255.0), labels

    return ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def decode_ceiling(
    records_dir: str, split: str, image_size: tuple[int, int], batch_size: int, dct_scaling: bool,
    autotune: bool = False,
) -> tf.data.Dataset:
    """The pipeline's own read, parse, decode and resize, batched, and nothing else.

    What the pipeline's cold epoch can reach at best on this machine.
    """
    records = read.read_records(records_dir, split)
    decode = lambda record: dataset.decode_example(record, image_size, dct_scaling)  # noqa: E731
    return (records.map(decode, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(tf.data.AUTOTUNE)
            .with_options(dataset.input_options(deterministic=True, autotune=autotune)))
