"""The notebook's ImageDataGenerator augmentation as one affine warp per image.

ImageDataGenerator(rotation_range=20, width_shift_range=0.1, zoom_range=0.1,
horizontal_flip=True, vertical_flip=True) warps each image with scipy, once per
channel, in one Python thread. Here the rotation, shift, zoom and both flips
are composed into one 2x3 matrix per image, drawn with the same distributions,
and applied by one warp:

* on the host, in tf.data (`augment_batch_on_host`): OpenCV's SIMD
  `warpAffine`, called once per batch (`HostWarp.OPENCV`, the faster one), or
  TensorFlow's own C++ kernel ImageProjectiveTransformV3
  (`HostWarp.TENSORFLOW`), a plain graph op that a tf.data service worker can
  run from the serialized dataset graph;
* on the device: a gather-based bilinear sampler in Keras ops, inside the
  model (`DeviceAugmentation`, a Keras layer), on any Keras backend: XLA
  compiles it (TensorFlow's jit_compile, JAX's jit), where
  ImageProjectiveTransformV3 has no XLA kernel. Its draws come from the
  layer's `keras.random.SeedGenerator`, its ranges and matrices from the same
  `affine_from_draws` as the host's.

Matrices map output pixel coordinates (x = column, y = row, pixel centres at
integers) to input coordinates, the convention of all three warps.
Interpolation is bilinear and pixels from outside the image repeat the nearest
edge pixel (`fill_mode='nearest'`), as in ImageDataGenerator.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import types

import cv2
import keras
import numpy as np
import tensorflow as tf

# Each warp call is one image: tf.data already runs several calls at once.
cv2.setNumThreads(1)


@dataclasses.dataclass(frozen=True)
class AugmentationConfig:
    """ImageDataGenerator's geometric arguments (defaults: the notebook's).

    Attributes:
      rotation_range: degrees; the angle is uniform in [-range, range].
      width_shift_range: fraction of the width, uniform in [-range, range].
      height_shift_range: fraction of the height, uniform in [-range, range].
      zoom_range: zoom factors for x and y are drawn independently from
        [1 - range, 1 + range]; above 1 shows more of the image (zooms out).
      horizontal_flip: flip left-right with probability 1/2.
      vertical_flip: flip upside-down with probability 1/2.
    """

    rotation_range: float = 20.0
    width_shift_range: float = 0.1
    height_shift_range: float = 0.0
    zoom_range: float = 0.1
    horizontal_flip: bool = True
    vertical_flip: bool = True


NOTEBOOK_AUGMENTATION = AugmentationConfig()


# The uniform draws behind one image's transform: angle, two shifts, two zooms, two flips.
DRAWS_PER_IMAGE = 7


class HostWarp(enum.Enum):
    """What warps the batches in tf.data."""

    OPENCV = "opencv"  # SIMD warpAffine through tf.numpy_function: Python, so in-process only
    TENSORFLOW = "tensorflow"  # a TensorFlow C++ kernel: the dataset graph can be shipped to other processes


def compose_affine(
    angle: tf.Tensor,
    shift_x: tf.Tensor,
    shift_y: tf.Tensor,
    zoom_x: tf.Tensor,
    zoom_y: tf.Tensor,
    flip_x: tf.Tensor,
    flip_y: tf.Tensor,
    height: int,
    width: int,
    ops: types.ModuleType = tf,
) -> tf.Tensor:
    """Composes per-image transform parameters into output->input matrices.

    The order is ImageDataGenerator's: the output is flipped last, so its
    pixels first go through the flips, then zoom, shift and rotation about
    the image centre: input = C R S Z C^-1 F output.

    Args:
      angle: float32 [B], radians.
      shift_x, shift_y: float32 [B], pixels; the input is sampled that far
        right / down of the output position.
      zoom_x, zoom_y: float32 [B], input pixels per output pixel.
      flip_x, flip_y: bool [B].
      height, width: image size in pixels.
      ops: `tf` (tf.data, any backend) or `keras.ops` (inside a model):
        the two share the names used here.

    Returns:
      float32 [B, 2, 3] matrices [[a, b, c], [d, e, f]]: an output pixel at
      (x, y) samples the input at (a x + b y + c, d x + e y + f).
    """
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    cos, sin = ops.cos(angle), ops.sin(angle)
    # Flips mirror the output about the centre: x -> sx (x - cx) + cx.
    sx = ops.where(flip_x, -1.0, 1.0)
    sy = ops.where(flip_y, -1.0, 1.0)
    # Linear part R Z diag(sx, sy), then offsets so that the centre maps to
    # centre + R (shift).
    a, b = cos * zoom_x * sx, -sin * zoom_y * sy
    d, e = sin * zoom_x * sx, cos * zoom_y * sy
    tx = cos * shift_x - sin * shift_y
    ty = sin * shift_x + cos * shift_y
    c = cx + tx - a * cx - b * cy
    f = cy + ty - d * cx - e * cy
    return ops.reshape(ops.stack([a, b, c, d, e, f], axis=-1), [-1, 2, 3])


def affine_from_draws(draws, height: int, width: int, config: AugmentationConfig, ops: types.ModuleType = tf):
    """ImageDataGenerator's random transforms from uniform draws in [0, 1).

    ImageDataGenerator quirk kept on purpose: its `width_shift_range` (scaled
    by the width) moves the image along the rows and `height_shift_range`
    (scaled by the height) along the columns, so the notebook's
    width_shift_range=0.1 shifts images vertically. Users who tuned the
    notebook get the augmentation they tuned.

    Args:
      draws: float32 [B, DRAWS_PER_IMAGE], uniform in [0, 1): a `tf.Tensor`,
        or a backend tensor with `ops=keras.ops`.
      height, width: image size.
      config: the ranges.
      ops: `tf` or `keras.ops`, see `compose_affine`.

    Returns:
      float32 [B, 2, 3], see `compose_affine`, of `ops`' tensor type.
    """
    rotation = math.radians(config.rotation_range)
    low = np.array([
        -rotation, -config.height_shift_range * height, -config.width_shift_range * width,
        1.0 - config.zoom_range, 1.0 - config.zoom_range,
    ], np.float32)
    high = np.array([
        rotation, config.height_shift_range * height, config.width_shift_range * width,
        1.0 + config.zoom_range, 1.0 + config.zoom_range,
    ], np.float32)
    ranged = len(low)  # the columns before the two flips
    scaled = draws[:, :ranged] * (high - low) + low
    angle, shift_x, shift_y, zoom_x, zoom_y = (scaled[:, i] for i in range(ranged))
    # A flip that is off compares its draw with 0: never below.
    flip_x = draws[:, ranged] < (0.5 if config.horizontal_flip else 0.0)
    flip_y = draws[:, ranged + 1] < (0.5 if config.vertical_flip else 0.0)
    return compose_affine(angle, shift_x, shift_y, zoom_x, zoom_y, flip_x, flip_y, height, width, ops)


def random_affine(
    batch_size: tf.Tensor | int,
    height: int,
    width: int,
    config: AugmentationConfig,
    seed: tf.Tensor,
) -> tf.Tensor:
    """Draws ImageDataGenerator's random transforms for a batch, statelessly (TensorFlow ops).

    Args:
      batch_size: B.
      height, width: image size.
      config: the ranges.
      seed: int32/int64 [2], a stateless RNG seed.

    Returns:
      float32 [B, 2, 3], see `compose_affine`.
    """
    # One draw per batch: few ops, since tf.data pays a fixed cost for each.
    draws = tf.random.stateless_uniform([batch_size, DRAWS_PER_IMAGE], seed)
    return affine_from_draws(draws, height, width, config)


def random_affine_keras(
    batch_size, height: int, width: int, config: AugmentationConfig, seed: keras.random.SeedGenerator
):
    """`random_affine` with Keras ops on any backend, drawn from a seed generator (moves it on).

    Args:
      batch_size: B, an int or a scalar integer tensor.
      height, width: image size.
      config: the ranges.
      seed: the generator; each call draws new transforms.

    Returns:
      float32 [B, 2, 3] backend tensor, see `compose_affine`.
    """
    draws = keras.random.uniform((batch_size, DRAWS_PER_IMAGE), dtype="float32", seed=seed)
    return affine_from_draws(draws, height, width, config, keras.ops)


def _warp_batch_opencv(images: np.ndarray, matrices: np.ndarray) -> np.ndarray:
    out = np.empty_like(images)
    height, width = images.shape[1:3]
    for image, matrix, target in zip(images, matrices, out):
        # OpenCV's vectorised bilinear remap is ~1.7x faster on 4 channels
        # than on 3, more than the two colour conversions cost.
        warped = cv2.warpAffine(
            cv2.cvtColor(image, cv2.COLOR_RGB2RGBA), matrix, (width, height),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REPLICATE,
        )
        cv2.cvtColor(warped, cv2.COLOR_RGBA2RGB, dst=target)
    return out


def warp_on_host(images: tf.Tensor, matrices: tf.Tensor) -> tf.Tensor:
    """Warps a batch with OpenCV (host CPU, releases the GIL while it works).

    Args:
      images: `tf.uint8` [B, H, W, 3].
      matrices: float32 [B, 2, 3], output->input, see `compose_affine`.

    Returns:
      `tf.uint8` [B, H, W, 3].
    """
    warped = tf.numpy_function(_warp_batch_opencv, [images, matrices], tf.uint8, stateful=False)
    warped.set_shape(images.shape)
    return warped


def warp_on_device(images, matrices):
    """Warps a batch with Keras ops and plain gathers: any backend, any device, XLA.

    ImageProjectiveTransformV3 (behind Keras' RandomRotation and, on the
    TensorFlow backend, `keras.ops.image.affine_transform`) has no XLA kernel,
    so a model that holds it cannot be trained with `jit_compile=True`; this
    bilinear sampler can, and JAX jits it. Clamping sample positions to the
    image repeats the edge pixels: `fill_mode='nearest'`.

    Args:
      images: float [B, H, W, C] with static H, W, C (float16, bfloat16,
        float32...); B may be dynamic.
      matrices: float32 [B, 2, 3], output->input, see `compose_affine`.

    Returns:
      [B, H, W, C] in the dtype of `images`; blended in float32.
    """
    ops = keras.ops
    height, width, channels = images.shape[1:]
    ys, xs = ops.meshgrid(ops.arange(height, dtype="float32"), ops.arange(width, dtype="float32"), indexing="ij")
    rows = ops.cast(matrices, "float32")[:, :, :, None, None]  # [B, 2, 3, 1, 1] against [H, W]
    src_x = ops.clip(rows[:, 0, 0] * xs + rows[:, 0, 1] * ys + rows[:, 0, 2], 0.0, width - 1.0)
    src_y = ops.clip(rows[:, 1, 0] * xs + rows[:, 1, 1] * ys + rows[:, 1, 2], 0.0, height - 1.0)
    x0, y0 = ops.floor(src_x), ops.floor(src_y)
    wx, wy = (src_x - x0)[..., None], (src_y - y0)[..., None]  # [B, H, W, 1]
    x0, y0 = ops.cast(x0, "int32"), ops.cast(y0, "int32")
    x1, y1 = ops.minimum(x0 + 1, width - 1), ops.minimum(y0 + 1, height - 1)
    # One gather from the whole batch: image b's pixels start at b * H * W.
    flat = ops.reshape(images, (-1, channels))
    offset = ops.reshape(ops.arange(ops.shape(images)[0], dtype="int32") * (height * width), (-1, 1, 1))

    def pixels(y, x):
        return ops.cast(ops.take(flat, offset + y * width + x, axis=0), "float32")

    top = pixels(y0, x0) * (1.0 - wx) + pixels(y0, x1) * wx
    bottom = pixels(y1, x0) * (1.0 - wx) + pixels(y1, x1) * wx
    return ops.cast(top * (1.0 - wy) + bottom * wy, images.dtype)


def warp_uint8_with_tensorflow(images: tf.Tensor, matrices: tf.Tensor) -> tf.Tensor:
    """Warps a uint8 batch with TensorFlow's ImageProjectiveTransformV3 kernel (host CPU).

    A plain graph op, so a tf.data service worker runs it from the serialized
    dataset graph. Same sampling as `warp_on_device`: pixel centres at
    integers, bilinear, sample positions clamped to the image
    (fill_mode="NEAREST"); it computes each output value in one pass where the
    gather sampler writes a dozen intermediate tensors (2.3x faster here, see
    docs/performance.md). It has no XLA kernel: the device layer keeps the
    gather sampler.

    Args:
      images: `tf.uint8` [B, H, W, C].
      matrices: float32 [B, 2, 3], output->input, see `compose_affine`.

    Returns:
      `tf.uint8` [B, H, W, C], rounded.
    """
    # The kernel's transform rows (a0, a1, a2, b0, b1, b2, c0, c1) map output
    # (x, y) to input ((a0 x + a1 y + a2) / k, (b0 x + b1 y + b2) / k), with
    # k = c0 x + c1 y + 1: our matrix rows, and c = 0 (affine).
    flat = tf.reshape(tf.cast(matrices, tf.float32), [-1, 6])
    transforms = tf.concat([flat, tf.zeros_like(flat[:, :2])], axis=1)
    # On float32: on uint8 the kernel truncates its result instead of
    # rounding, and runs no faster.
    warped = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(images, tf.float32), transforms=transforms, output_shape=tf.shape(images)[1:3],
        fill_value=tf.constant(0.0), interpolation="BILINEAR", fill_mode="NEAREST",
    )
    # A bilinear blend stays within [0, 255]: adding 0.5 and truncating rounds.
    return tf.cast(warped + 0.5, tf.uint8)


def augment_batch_on_host(
    images: tf.Tensor,
    seed: tf.Tensor,
    config: AugmentationConfig = NOTEBOOK_AUGMENTATION,
    warp: HostWarp = HostWarp.OPENCV,
) -> tf.Tensor:
    """Random notebook augmentation of a uint8 batch, in tf.data.

    Args:
      images: `tf.uint8` [B, H, W, 3], H and W static.
      seed: int64 [2] stateless seed, a different one for every batch.
      config: the augmentation ranges.
      warp: OpenCV (faster) or TensorFlow's kernel (serializable).

    Returns:
      `tf.uint8` [B, H, W, 3].
    """
    height, width = images.shape[1], images.shape[2]
    matrices = random_affine(tf.shape(images)[0], height, width, config, seed)
    if warp is HostWarp.TENSORFLOW:
        return warp_uint8_with_tensorflow(images, matrices)
    return warp_on_host(images, matrices)


def augmented_variants(
    image: tf.Tensor, count: int, seed: int, config: AugmentationConfig = NOTEBOOK_AUGMENTATION
) -> tf.Tensor:
    """`count` random augmentations of one image, as the training batches get.

    Args:
      image: `tf.uint8` [H, W, 3].
      count: how many variants.
      seed: fixes the variants.
      config: the augmentation ranges.

    Returns:
      `tf.uint8` [count, H, W, 3].
    """
    batch = tf.repeat(image[tf.newaxis], count, axis=0)
    return augment_batch_on_host(batch, tf.constant([seed, 0], tf.int64), config)


@keras.saving.register_keras_serializable(package="pipeline")
class DeviceAugmentation(keras.layers.Layer):
    """The notebook augmentation as the model's first layer (on the accelerator, any backend).

    Active only in training; at inference it passes its input through.
    Input and output: float [B, H, W, C] in any range, the output in the
    layer's compute dtype (the input's, under a mixed-precision policy).
    """

    def __init__(self, config: AugmentationConfig = NOTEBOOK_AUGMENTATION, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.seed = seed
        self._seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=None):
        if not training:
            return images
        height, width = images.shape[1], images.shape[2]
        matrices = random_affine_keras(keras.ops.shape(images)[0], height, width, self.config, self._seed_generator)
        return warp_on_device(images, matrices)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), **dataclasses.asdict(self.config), "seed": self.seed}

    @classmethod
    def from_config(cls, config):
        fields = {f.name for f in dataclasses.fields(AugmentationConfig)}
        augmentation = AugmentationConfig(**{k: config.pop(k) for k in list(config) if k in fields})
        return cls(config=augmentation, **config)
