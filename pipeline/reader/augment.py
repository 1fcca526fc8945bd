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
* on the device: a gather-based bilinear sampler that XLA compiles, inside
  the model (`DeviceAugmentation`, a Keras layer); ImageProjectiveTransformV3
  has no XLA kernel.

Matrices map output pixel coordinates (x = column, y = row, pixel centres at
integers) to input coordinates, the convention of all three warps.
Interpolation is bilinear and pixels from outside the image repeat the nearest
edge pixel (`fill_mode='nearest'`), as in ImageDataGenerator.
"""

from __future__ import annotations

import dataclasses
import enum
import math

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

    Returns:
      float32 [B, 2, 3] matrices [[a, b, c], [d, e, f]]: an output pixel at
      (x, y) samples the input at (a x + b y + c, d x + e y + f).
    """
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    cos, sin = tf.cos(angle), tf.sin(angle)
    # Flips mirror the output about the centre: x -> sx (x - cx) + cx.
    sx = tf.where(flip_x, -1.0, 1.0)
    sy = tf.where(flip_y, -1.0, 1.0)
    # Linear part R Z diag(sx, sy), then offsets so that the centre maps to
    # centre + R (shift).
    a, b = cos * zoom_x * sx, -sin * zoom_y * sy
    d, e = sin * zoom_x * sx, cos * zoom_y * sy
    tx = cos * shift_x - sin * shift_y
    ty = sin * shift_x + cos * shift_y
    c = cx + tx - a * cx - b * cy
    f = cy + ty - d * cx - e * cy
    return tf.reshape(tf.stack([a, b, c, d, e, f], axis=-1), [-1, 2, 3])


def random_affine(
    batch_size: tf.Tensor | int,
    height: int,
    width: int,
    config: AugmentationConfig,
    seed: tf.Tensor,
) -> tf.Tensor:
    """Draws ImageDataGenerator's random transforms for a batch, statelessly.

    ImageDataGenerator quirk kept on purpose: its `width_shift_range` (scaled
    by the width) moves the image along the rows and `height_shift_range`
    (scaled by the height) along the columns, so the notebook's
    width_shift_range=0.1 shifts images vertically. Users who tuned the
    notebook get the augmentation they tuned.

    Args:
      batch_size: B.
      height, width: image size.
      config: the ranges.
      seed: int32/int64 [2], a stateless RNG seed.

    Returns:
      float32 [B, 2, 3], see `compose_affine`.
    """
    # One draw per batch: few ops, since tf.data pays a fixed cost for each.
    rotation = math.radians(config.rotation_range)
    low = tf.constant([
        -rotation, -config.height_shift_range * height, -config.width_shift_range * width,
        1.0 - config.zoom_range, 1.0 - config.zoom_range, 0.0, 0.0,
    ])
    high = tf.constant([
        rotation, config.height_shift_range * height, config.width_shift_range * width,
        1.0 + config.zoom_range, 1.0 + config.zoom_range, 1.0, 1.0,
    ])
    draws = tf.random.stateless_uniform([batch_size, 7], seed) * (high - low) + low
    angle, shift_x, shift_y, zoom_x, zoom_y, flip_x, flip_y = tf.unstack(draws, axis=1)
    flip_x = tf.logical_and(config.horizontal_flip, flip_x < 0.5)
    flip_y = tf.logical_and(config.vertical_flip, flip_y < 0.5)
    return compose_affine(angle, shift_x, shift_y, zoom_x, zoom_y, flip_x, flip_y, height, width)


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


def warp_with_tensorflow(images: tf.Tensor, matrices: tf.Tensor) -> tf.Tensor:
    """Warps a batch with plain gathers: any device, XLA, graph-serializable.

    TensorFlow's ImageProjectiveTransformV3 (behind Keras' RandomRotation and
    `keras.ops.image.affine_transform`) has no XLA kernel, so a model that
    holds it cannot be trained with `jit_compile=True`; this bilinear sampler
    can. Clamping sample positions to the image repeats the edge pixels:
    `fill_mode='nearest'`.

    Args:
      images: [B, H, W, C] with static H, W; any real dtype.
      matrices: float32 [B, 2, 3], output->input, see `compose_affine`.

    Returns:
      float32 [B, H, W, C].
    """
    height, width = images.shape[1], images.shape[2]
    batch = tf.shape(images)[0]
    ys, xs = tf.meshgrid(tf.range(height, dtype=tf.float32), tf.range(width, dtype=tf.float32), indexing="ij")
    grid = tf.stack([xs, ys, tf.ones_like(xs)], axis=-1)  # [H, W, 3]
    source = tf.einsum("hwk,bjk->bhwj", grid, tf.cast(matrices, tf.float32))  # [B, H, W, 2]
    src_x = tf.clip_by_value(source[..., 0], 0.0, width - 1.0)
    src_y = tf.clip_by_value(source[..., 1], 0.0, height - 1.0)
    x0, y0 = tf.floor(src_x), tf.floor(src_y)
    wx, wy = (src_x - x0)[..., None], (src_y - y0)[..., None]
    x0, y0 = tf.cast(x0, tf.int32), tf.cast(y0, tf.int32)
    x1, y1 = tf.minimum(x0 + 1, width - 1), tf.minimum(y0 + 1, height - 1)
    flat = tf.reshape(tf.cast(images, tf.float32), [-1, images.shape[-1]])
    offset = tf.reshape(tf.range(batch) * (height * width), [-1, 1, 1])

    def pixels(y, x):
        return tf.gather(flat, offset + y * width + x)

    top = pixels(y0, x0) * (1.0 - wx) + pixels(y0, x1) * wx
    bottom = pixels(y1, x0) * (1.0 - wx) + pixels(y1, x1) * wx
    return top * (1.0 - wy) + bottom * wy


def warp_uint8_with_tensorflow(images: tf.Tensor, matrices: tf.Tensor) -> tf.Tensor:
    """Warps a uint8 batch with TensorFlow's ImageProjectiveTransformV3 kernel (host CPU).

    A plain graph op, so a tf.data service worker runs it from the serialized
    dataset graph. Same sampling as `warp_with_tensorflow`: pixel centres at
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
    """The notebook augmentation as the model's first layer (runs on the GPU).

    Active only in training; at inference it passes its input through.
    Input and output: float [B, H, W, C] in any range.
    """

    def __init__(self, config: AugmentationConfig = NOTEBOOK_AUGMENTATION, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.seed = seed
        self._seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=None):
        if not training:
            return images
        seed = keras.random.randint([2], 0, 2**31 - 1, seed=self._seed_generator)
        height, width = images.shape[1], images.shape[2]
        matrices = random_affine(tf.shape(images)[0], height, width, self.config, seed)
        return tf.cast(warp_with_tensorflow(images, matrices), images.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), **dataclasses.asdict(self.config), "seed": self.seed}

    @classmethod
    def from_config(cls, config):
        fields = {f.name for f in dataclasses.fields(AugmentationConfig)}
        augmentation = AugmentationConfig(**{k: config.pop(k) for k in list(config) if k in fields})
        return cls(config=augmentation, **config)
