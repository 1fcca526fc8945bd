"""The notebook's cats-vs-dogs CNN, for two or more classes."""

from __future__ import annotations

import keras

from pipeline.reader import augment
from pipeline.reader import dataset

DEFAULT_LEARNING_RATE = 1e-4  # the notebook's learning rate
_CONV_FILTERS = (32, 64, 128)  # each a 3x3 valid convolution, then a 2x2 max-pool


def _min_input_size() -> int:
    """The smallest square input that leaves the last pool at least 1x1."""
    size = 1
    for _ in _CONV_FILTERS:
        size = 2 * size + 2  # undo a pool (floor), then a 3x3 valid conv
    return size


MIN_IMAGE_SIZE = _min_input_size()


def build_cnn(
    image_size: tuple[int, int] = dataset.DEFAULT_IMAGE_SIZE,
    num_classes: int = 2,
    device_augmentation: augment.AugmentationConfig | None = None,
    seed: int | None = None,
) -> keras.Model:
    """Conv(32)-Pool-Conv(64)-Pool-Conv(128)-Pool-Flatten-Dropout(0.5)-Dense.

    Args:
      image_size: (height, width) of the input images.
      num_classes: 2 gives one sigmoid unit (binary labels); more give a
        softmax over the classes (one-hot labels).
      device_augmentation: when set, the model starts with the notebook's
        augmentation as a layer, so it runs on the accelerator, in training
        only.
      seed: seed of the dropout and device augmentation.

    Returns:
      An uncompiled model: float32 [B, height, width, 3] in [0, 1] ->
      float32 [B, 1] (binary) or [B, num_classes]. Under a mixed-precision
      policy the last layer still outputs float32, for a stable loss.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    if min(image_size) < MIN_IMAGE_SIZE:
        raise ValueError(f"the CNN needs images of at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE}, got {image_size}")
    inputs = keras.Input(shape=(*image_size, 3), name="image")
    x = inputs
    if device_augmentation is not None:
        x = augment.DeviceAugmentation(device_augmentation, seed=seed, name="augmentation")(x)
    for filters in _CONV_FILTERS:
        x = keras.layers.Conv2D(filters, 3, activation="relu")(x)
        x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dropout(0.5, seed=seed)(x)
    if num_classes == 2:
        outputs = keras.layers.Dense(1, activation="sigmoid", dtype="float32", name="probability")(x)
    else:
        outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="cats_vs_dogs_cnn")


def compile_cnn(
    model: keras.Model, learning_rate: float = DEFAULT_LEARNING_RATE, jit_compile: bool | str = "auto",
    weighted: bool = False,
) -> keras.Model:
    """Adam, cross-entropy (binary for one output unit) and accuracy, as the notebook.

    `weighted`: the accuracy reads the sample weights of batches that carry them
    (`shares.weighted_eval_dataset`), as the loss always does; without weights it is the same.
    """
    binary = model.output_shape[-1] == 1
    metrics = {"weighted_metrics" if weighted else "metrics": ["accuracy"]}
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="binary_crossentropy" if binary else "categorical_crossentropy",
        jit_compile=jit_compile,
        **metrics,
    )
    return model
