"""pipeline.reader.augment: the ImageDataGenerator augmentation as one affine warp."""

from __future__ import annotations

import copy
import dataclasses
import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras.src.legacy.preprocessing.image import ImageDataGenerator
from scipy import ndimage

from pipeline.reader import augment

NO_AUGMENTATION = augment.AugmentationConfig(
    rotation_range=0.0, width_shift_range=0.0, height_shift_range=0.0, zoom_range=0.0,
    horizontal_flip=False, vertical_flip=False,
)


def _smooth_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth random uint8 RGB image: no symmetry, interpolates gently."""
    coarse = np.random.default_rng(seed).uniform(0, 255, (8, 8, 3))
    fine = ndimage.zoom(coarse, (height / 8, width / 8, 1), order=3)
    return np.round(np.clip(fine, 0, 255)).astype(np.uint8)


def _matrices(params: dict, height: int, width: int, batch: int = 1) -> tf.Tensor:
    """compose_affine for ImageDataGenerator.apply_transform's parameters."""

    def vector(value, dtype=tf.float32):
        return tf.constant([value] * batch, dtype)

    return augment.compose_affine(
        vector(math.radians(params.get("theta", 0.0))),
        vector(float(params.get("tx", 0.0))),
        vector(float(params.get("ty", 0.0))),
        vector(float(params.get("zx", 1.0))),
        vector(float(params.get("zy", 1.0))),
        vector(bool(params.get("flip_horizontal", False)), tf.bool),
        vector(bool(params.get("flip_vertical", False)), tf.bool),
        height,
        width,
    )


def _decompose(matrices: np.ndarray, height: int, width: int):
    """(angle, shift_x, shift_y, zoom_x, zoom_y, flip_x, flip_y) of matrices
    built by compose_affine with |angle| < 90 degrees."""
    a, b, c = matrices[:, 0, 0], matrices[:, 0, 1], matrices[:, 0, 2]
    d, e, f = matrices[:, 1, 0], matrices[:, 1, 1], matrices[:, 1, 2]
    # Linear part R(angle) diag(zoom_x sx, zoom_y sy); cos > 0 fixes the signs.
    sx, sy = np.sign(a), np.sign(e)
    zoom_x, zoom_y = np.hypot(a, d), np.hypot(b, e)
    angle = np.arctan2(d * sx, a * sx)
    # The centre maps to centre + R(angle) shift.
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    tx = a * cx + b * cy + c - cx
    ty = d * cx + e * cy + f - cy
    shift_x = np.cos(angle) * tx + np.sin(angle) * ty
    shift_y = -np.sin(angle) * tx + np.cos(angle) * ty
    return angle, shift_x, shift_y, zoom_x, zoom_y, sx < 0, sy < 0


# --------------------------------------------------------------------------
# Identity.


def test_identity_parameters_give_the_identity_matrix_and_warp():
    image = _smooth_image(20, 28)
    matrices = _matrices({}, 20, 28, batch=2)
    np.testing.assert_array_equal(
        matrices.numpy(), np.tile(np.array([[1, 0, 0], [0, 1, 0]], np.float32), (2, 1, 1))
    )
    batch = np.stack([image, image[::-1]])
    host = augment.warp_on_host(tf.constant(batch), matrices)
    assert host.dtype == tf.uint8
    np.testing.assert_array_equal(host.numpy(), batch)
    device = augment.warp_on_device(tf.constant(batch, tf.float32), matrices)
    assert device.dtype == tf.float32
    np.testing.assert_array_equal(device.numpy(), batch.astype(np.float32))
    kernel = augment.warp_uint8_with_tensorflow(tf.constant(batch), matrices)
    assert kernel.dtype == tf.uint8
    np.testing.assert_array_equal(kernel.numpy(), batch)


def test_zero_ranges_augment_nothing():
    batch = np.stack([_smooth_image(16, 16, s) for s in range(3)])
    matrices = augment.random_affine(3, 16, 16, NO_AUGMENTATION, tf.constant([1, 2]))
    np.testing.assert_allclose(
        matrices.numpy(), np.tile(np.array([[1, 0, 0], [0, 1, 0]], np.float32), (3, 1, 1)),
        atol=1e-6,
    )
    out = augment.augment_batch_on_host(tf.constant(batch), tf.constant([1, 2], tf.int64), NO_AUGMENTATION)
    np.testing.assert_array_equal(out.numpy(), batch)


def test_flat_image_stays_flat_under_any_warp():
    flat = np.full((3, 12, 12, 3), (40, 180, 90), np.uint8)
    out = augment.augment_batch_on_host(tf.constant(flat), tf.constant([3, 4], tf.int64))
    np.testing.assert_array_equal(out.numpy(), flat)


# --------------------------------------------------------------------------
# Agreement with Keras' ImageDataGenerator.apply_transform.

KERAS_CASES = [
    {"theta": 15.0},
    {"theta": -20.0},
    {"tx": 4.0},
    {"ty": -3.5},
    {"zx": 0.9, "zy": 1.1},
    {"flip_horizontal": True},
    {"flip_vertical": True},
    {"theta": -12.0, "tx": 2.5, "ty": -4.0, "zx": 1.07, "zy": 0.93,
     "flip_horizontal": True, "flip_vertical": True},
    {"theta": 7.0, "ty": 5.0, "zx": 1.1, "zy": 1.1, "flip_vertical": True},
]


@pytest.fixture(scope="module")
def keras_generator():
    return ImageDataGenerator()


@pytest.mark.parametrize("params", KERAS_CASES, ids=lambda p: ",".join(p))
def test_host_and_device_warps_match_keras(keras_generator, params):
    size = 40  # square: Keras centres its matrices as (h, w) in (x, y) order
    image = _smooth_image(size, size)
    matrices = _matrices(params, size, size)

    expected = keras_generator.apply_transform(image.astype(np.float64), params)
    for warp in (augment.warp_on_host, augment.warp_uint8_with_tensorflow):
        host = warp(tf.constant(image[None]), matrices).numpy()[0].astype(np.float64)
        assert np.abs(host - expected).mean() < 1.0, warp.__name__
        assert np.abs(host - expected).max() <= 2.0, warp.__name__

    unit = image.astype(np.float64) / 255.0
    expected_unit = keras_generator.apply_transform(unit, params)
    device = augment.warp_on_device(tf.constant(unit[None], tf.float32), matrices).numpy()[0]
    assert np.abs(device - expected_unit).max() < 1e-3
    # The warp did something (the comparison is not between two copies).
    assert np.abs(expected - image).mean() > 1.0


@pytest.mark.parametrize(
    "params",
    [{"tx": 3.0}, {"ty": -5.0}, {"flip_horizontal": True}, {"flip_vertical": True, "tx": -2.0}],
    ids=lambda p: ",".join(p),
)
def test_shifts_and_flips_match_keras_on_non_square_images(keras_generator, params):
    """Keras' `tx` (from height_shift_range) moves along the columns: kept."""
    image = _smooth_image(24, 36, seed=3)
    matrices = _matrices(params, 24, 36)
    expected = keras_generator.apply_transform(image.astype(np.float64), params)
    for warp in (augment.warp_on_host, augment.warp_uint8_with_tensorflow):
        host = warp(tf.constant(image[None]), matrices).numpy()[0]
        np.testing.assert_allclose(host, expected, atol=1.0, err_msg=warp.__name__)
    device = augment.warp_on_device(tf.constant(image[None], tf.float32), matrices).numpy()[0]
    np.testing.assert_allclose(device, expected, atol=1e-3)


def test_tensorflow_host_warp_matches_keras_inside_dataset_map(keras_generator):
    """The kernel in a traced tf.data function, as workers run it: every KERAS_CASES warp in one batch."""
    size = 40
    image = _smooth_image(size, size)
    matrices = tf.concat([_matrices(params, size, size) for params in KERAS_CASES], axis=0)
    batch = np.repeat(image[None], len(KERAS_CASES), axis=0)
    ds = tf.data.Dataset.from_tensors((batch, matrices)).map(augment.warp_uint8_with_tensorflow)
    assert ds.element_spec.dtype == tf.uint8 and ds.element_spec.shape == batch.shape
    warped = next(iter(ds)).numpy().astype(np.float64)
    for params, host in zip(KERAS_CASES, warped):
        expected = keras_generator.apply_transform(image.astype(np.float64), params)
        assert np.abs(host - expected).mean() < 1.0, params
        assert np.abs(host - expected).max() <= 2.0, params
    np.testing.assert_array_equal(warped, augment.warp_uint8_with_tensorflow(batch, matrices).numpy())


@pytest.mark.parametrize("size", [(32, 32), (24, 36)], ids=["square", "non-square"])
def test_tensorflow_host_warp_is_the_gather_sampler_rounded(size):
    """ImageProjectiveTransformV3 and the gather sampler share the pixel-centre convention and the edge rule."""
    height, width = size
    batch = np.stack([_smooth_image(height, width, s) for s in range(6)])
    config = dataclasses.replace(augment.NOTEBOOK_AUGMENTATION, rotation_range=45.0, zoom_range=0.3)
    matrices = augment.random_affine(6, height, width, config, tf.constant([8, 9]))
    kernel = augment.warp_uint8_with_tensorflow(tf.constant(batch), matrices).numpy().astype(np.float32)
    gather = augment.warp_on_device(tf.constant(batch, tf.float32), matrices).numpy()
    assert np.abs(kernel - gather).max() <= 0.5 + 1e-3  # rounding only
    assert np.abs(kernel - batch).mean() > 5  # warped: not two copies of the input


def test_half_turn_about_the_centre_is_both_flips_on_non_square_images():
    image = _smooth_image(18, 30, seed=4)[None]
    turned = _matrices({"theta": 180.0}, 18, 30)
    flipped = _matrices({"flip_horizontal": True, "flip_vertical": True}, 18, 30)
    np.testing.assert_allclose(turned.numpy(), flipped.numpy(), atol=1e-4)
    for warp in (augment.warp_on_host, augment.warp_uint8_with_tensorflow):
        np.testing.assert_array_equal(warp(tf.constant(image), flipped).numpy(), image[:, ::-1, ::-1])
    np.testing.assert_allclose(
        augment.warp_on_device(tf.constant(image, tf.float32), turned).numpy(),
        image[:, ::-1, ::-1].astype(np.float32), atol=1e-2,
    )


def test_host_and_device_warps_agree_on_random_transforms():
    batch = np.stack([_smooth_image(32, 32, s) for s in range(8)])
    matrices = augment.random_affine(8, 32, 32, augment.NOTEBOOK_AUGMENTATION, tf.constant([5, 6]))
    host = augment.warp_on_host(tf.constant(batch), matrices).numpy().astype(np.float32)
    device = augment.warp_on_device(tf.constant(batch, tf.float32), matrices).numpy()
    assert np.abs(host - device).mean() < 1.0
    assert np.abs(host - device).max() <= 2.0


# --------------------------------------------------------------------------
# The draws, host (stateless TensorFlow) and device (Keras seed generator), within the configured ranges.


def _host_draws(n: int, height: int, width: int, config: augment.AugmentationConfig, seed: int) -> np.ndarray:
    """float32 [n, 2, 3] from `random_affine` (tf.data's draws)."""
    return augment.random_affine(n, height, width, config, tf.constant([seed, seed + 1])).numpy()


def _device_draws(n: int, height: int, width: int, config: augment.AugmentationConfig, seed: int) -> np.ndarray:
    """float32 [n, 2, 3] from `random_affine_keras` (the layer's draws, on the session's backend)."""
    generator = keras.random.SeedGenerator(seed)
    return keras.ops.convert_to_numpy(augment.random_affine_keras(n, height, width, config, generator))


DRAWS = [pytest.param(_host_draws, id="host"), pytest.param(_device_draws, id="device", marks=pytest.mark.backends)]


@pytest.mark.parametrize("draw", DRAWS)
def test_random_affine_stays_within_notebook_ranges(draw):
    n, height, width = 4000, 150, 150
    config = augment.NOTEBOOK_AUGMENTATION
    matrices = draw(n, height, width, config, 11)
    assert matrices.shape == (n, 2, 3) and matrices.dtype == np.float32

    det = matrices[:, 0, 0] * matrices[:, 1, 1] - matrices[:, 0, 1] * matrices[:, 1, 0]
    eps = 1e-5
    assert np.all(np.abs(det) >= (1 - config.zoom_range) ** 2 - eps)
    assert np.all(np.abs(det) <= (1 + config.zoom_range) ** 2 + eps)

    angle, shift_x, shift_y, zoom_x, zoom_y, flip_x, flip_y = _decompose(matrices, height, width)
    degrees = np.degrees(angle)
    assert np.all(np.abs(degrees) <= 20.0 + 1e-3)
    assert degrees.min() < -19.0 and degrees.max() > 19.0  # the whole range is used
    for zoom in (zoom_x, zoom_y):
        assert np.all((zoom >= 0.9 - eps) & (zoom <= 1.1 + eps))
        assert zoom.min() < 0.905 and zoom.max() > 1.095
    # The notebook quirk: width_shift_range * width moves along the rows.
    np.testing.assert_allclose(shift_x, 0.0, atol=1e-3)
    assert np.all(np.abs(shift_y) <= 0.1 * width + 1e-3)
    assert np.abs(shift_y).max() > 0.095 * width
    # Both flips, each about half of the time, independently.
    for flips in (flip_x, flip_y):
        assert 0.45 < flips.mean() < 0.55
    assert 0.2 < (flip_x & flip_y).mean() < 0.3


@pytest.mark.parametrize("draw", DRAWS)
def test_random_affine_respects_other_ranges_on_non_square_images(draw):
    n, height, width = 3000, 40, 100
    config = augment.AugmentationConfig(
        rotation_range=5.0, width_shift_range=0.2, height_shift_range=0.05, zoom_range=0.3,
        horizontal_flip=False, vertical_flip=True,
    )
    matrices = draw(n, height, width, config, 0)
    angle, shift_x, shift_y, zoom_x, zoom_y, flip_x, flip_y = _decompose(matrices, height, width)
    assert np.all(np.abs(np.degrees(angle)) <= 5.0 + 1e-3)
    assert np.abs(np.degrees(angle)).max() > 4.8
    assert np.all(np.abs(shift_x) <= 0.05 * height + 1e-3)  # height_shift_range * height
    assert np.abs(shift_x).max() > 0.045 * height
    assert np.all(np.abs(shift_y) <= 0.2 * width + 1e-3)  # width_shift_range * width
    assert np.abs(shift_y).max() > 0.19 * width
    for zoom in (zoom_x, zoom_y):
        assert np.all((zoom >= 0.7 - 1e-5) & (zoom <= 1.3 + 1e-5))
    assert not flip_x.any()
    assert 0.45 < flip_y.mean() < 0.55


def test_random_affine_same_seed_same_draws():
    config = augment.NOTEBOOK_AUGMENTATION
    first = augment.random_affine(6, 32, 32, config, tf.constant([7, 8]))
    again = augment.random_affine(6, 32, 32, config, tf.constant([7, 8]))
    other = augment.random_affine(6, 32, 32, config, tf.constant([7, 9]))
    np.testing.assert_array_equal(first.numpy(), again.numpy())
    assert np.abs(first.numpy() - other.numpy()).max() > 1e-3
    # Each image of a batch gets its own transform.
    assert np.abs(first.numpy()[0] - first.numpy()[1]).max() > 1e-3


@pytest.mark.parametrize("warp", list(augment.HostWarp))
def test_augment_batch_on_host_seeded(warp):
    batch = np.stack([_smooth_image(24, 24, s) for s in range(4)])
    config = augment.NOTEBOOK_AUGMENTATION
    first = augment.augment_batch_on_host(tf.constant(batch), tf.constant([1, 2], tf.int64), config, warp)
    again = augment.augment_batch_on_host(tf.constant(batch), tf.constant([1, 2], tf.int64), config, warp)
    other = augment.augment_batch_on_host(tf.constant(batch), tf.constant([1, 3], tf.int64), config, warp)
    assert first.dtype == tf.uint8 and first.shape == batch.shape
    np.testing.assert_array_equal(first.numpy(), again.numpy())
    assert not np.array_equal(first.numpy(), other.numpy())
    assert not np.array_equal(first.numpy(), batch)


@pytest.mark.parametrize("warp", list(augment.HostWarp))
def test_augment_batch_on_host_inside_dataset_map(warp):
    batch = np.stack([_smooth_image(24, 24, s) for s in range(4)])
    config = augment.NOTEBOOK_AUGMENTATION
    ds = tf.data.Dataset.from_tensors(batch).map(
        lambda x: augment.augment_batch_on_host(x, tf.constant([1, 2], tf.int64), config, warp)
    )
    assert ds.element_spec.shape == (4, 24, 24, 3)
    eager = augment.augment_batch_on_host(tf.constant(batch), tf.constant([1, 2], tf.int64), config, warp)
    np.testing.assert_array_equal(next(iter(ds)).numpy(), eager.numpy())


def test_the_two_host_warps_agree_to_rounding():
    batch = tf.constant(np.stack([_smooth_image(30, 40, s) for s in range(6)]))
    seed = tf.constant([4, 5], tf.int64)
    opencv = augment.augment_batch_on_host(batch, seed, warp=augment.HostWarp.OPENCV).numpy().astype(int)
    graph = augment.augment_batch_on_host(batch, seed, warp=augment.HostWarp.TENSORFLOW).numpy().astype(int)
    assert np.abs(opencv - graph).mean() < 0.5
    assert np.abs(opencv - graph).max() <= 2
    assert np.abs(opencv - batch.numpy()).mean() > 5  # both warped: not two copies of the input


# --------------------------------------------------------------------------
# The device sampler (Keras ops) against the TF-ops sampler it replaced.


def warp_with_tensorflow(images: tf.Tensor, matrices: tf.Tensor) -> tf.Tensor:
    """The device layer's TF-ops gather sampler before issue #31: the reference for `warp_on_device`.

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


def _xla(function):
    """`function` compiled by XLA on the session's backend: jax.jit, or tf.function(jit_compile=True)."""
    if keras.backend.backend() == "jax":
        import jax  # installed with the `.[jax]` extra; imported in the JAX session only

        return jax.jit(function)
    return tf.function(function, jit_compile=True)


@pytest.mark.backends
def test_device_sampler_equals_the_tensorflow_warp():
    """The same images and matrices (a quarter of the samples outside the image: edges repeat), eager and XLA."""
    height, width = 24, 36
    images = np.stack([_smooth_image(height, width, s) for s in range(6)]).astype(np.float32) / 255.0
    config = augment.AugmentationConfig(
        rotation_range=45.0, width_shift_range=0.2, height_shift_range=0.2, zoom_range=0.3)
    matrices = _host_draws(6, height, width, config, 8)
    expected = warp_with_tensorflow(tf.constant(images), tf.constant(matrices)).numpy()
    for warp in (augment.warp_on_device, _xla(augment.warp_on_device)):
        warped = keras.ops.convert_to_numpy(warp(images, matrices))
        assert warped.dtype == np.float32
        # The positions are summed in another order (einsum there): float32 rounding moves them
        # by a few 1e-6 pixel, values in [0, 1] by less (1.3e-6 at most here, on both backends).
        np.testing.assert_allclose(warped, expected, rtol=0, atol=1e-5)
    assert np.abs(expected - images).mean() > 0.02  # warped: not two copies of the input


# --------------------------------------------------------------------------
# DeviceAugmentation, on the session's backend.


def _unit_batch(n=4, size=24) -> np.ndarray:
    return np.stack([_smooth_image(size, size, s) for s in range(n)]).astype(np.float32) / 255.0


def _numpy(tensor) -> np.ndarray:
    """A backend tensor as float32 numpy (bfloat16 has no numpy dtype of its own)."""
    return keras.ops.convert_to_numpy(keras.ops.cast(tensor, "float32"))


@pytest.mark.backends
def test_device_augmentation_only_in_training():
    layer = augment.DeviceAugmentation(seed=1)
    images = _unit_batch()
    for training in (False, None):
        np.testing.assert_array_equal(_numpy(layer(images, training=training)), images)
    augmented = layer(images, training=True)
    assert tuple(augmented.shape) == images.shape
    assert keras.backend.standardize_dtype(augmented.dtype) == "float32"
    augmented = _numpy(augmented)
    diff = np.abs(augmented - images).mean(axis=(1, 2, 3))
    assert np.all(diff > 1e-3)  # every image changed
    # Interpolation and edge repetition stay within the input range.
    assert augmented.min() >= images.min() - 1e-6
    assert augmented.max() <= images.max() + 1e-6
    # New transforms on every call.
    assert not np.array_equal(_numpy(layer(images, training=True)), augmented)


@pytest.mark.backends
def test_device_augmentation_seed():
    images = _unit_batch()

    def augmented(seed: int) -> np.ndarray:
        return _numpy(augment.DeviceAugmentation(seed=seed)(images, training=True))

    first = augmented(5)
    np.testing.assert_array_equal(first, augmented(5))
    assert not np.array_equal(first, augmented(6))


@dataclasses.dataclass(frozen=True)
class _OneStep:
    """One compiled fit step of DeviceAugmentation then `features`, a seeded conv-pool-dense.

    Attributes:
      before, after: the model's weights around the step.
      loss: the step's loss (the augmented batch's, before the update).
      plain_loss: the loss of the batch unaugmented, before the update.
      model, features: the trained model and its layers after the augmentation.
    """

    before: list[np.ndarray]
    after: list[np.ndarray]
    loss: float
    plain_loss: float
    model: keras.Model
    features: keras.Model


def _fit_one_step(augmentation_seed: int) -> _OneStep:
    """Trains on one batch of 4 float32 [24, 24, 3] images, binary labels, with XLA."""
    features = keras.Sequential([
        keras.Input((24, 24, 3)),
        keras.layers.Conv2D(4, 3, kernel_initializer=keras.initializers.GlorotUniform(seed=0)),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(1, activation="sigmoid", kernel_initializer=keras.initializers.GlorotUniform(seed=1)),
    ])
    inputs = keras.Input((24, 24, 3))
    model = keras.Model(inputs, features(augment.DeviceAugmentation(seed=augmentation_seed)(inputs)))
    model.compile(keras.optimizers.SGD(0.5), "binary_crossentropy", jit_compile=True)
    images, labels = _unit_batch(), np.array([[0.0], [1.0], [0.0], [1.0]])
    before = model.get_weights()
    plain_loss = float(np.mean(_numpy(keras.losses.binary_crossentropy(labels, features(images)))))
    history = model.fit(images, labels, batch_size=4, epochs=1, shuffle=False, verbose=0)
    return _OneStep(before, model.get_weights(), history.history["loss"][0], plain_loss, model, features)


@pytest.mark.backends
def test_device_augmentation_in_a_compiled_fit():
    """fit's XLA step (jit_compile on TensorFlow, jax.jit on JAX) trains through the layer, seeded; predict skips it."""
    step = _fit_one_step(1)
    assert all(np.isfinite(w).all() for w in step.after)
    assert all(not np.array_equal(a, b) for a, b in zip(step.after, step.before))  # every weight trained
    # The step saw other images than its input (about 1e-3 here; compiled against eager alone, 1e-7).
    assert abs(step.loss - step.plain_loss) > 1e-4
    for again, weights in zip(_fit_one_step(1).after, step.after):
        np.testing.assert_array_equal(again, weights)
    images = _unit_batch()
    np.testing.assert_allclose(step.model.predict(images, verbose=0), _numpy(step.features(images)), atol=1e-6)


@pytest.mark.backends
@pytest.mark.parametrize("policy, step", [("mixed_bfloat16", 2.0**-8), ("mixed_float16", 2.0**-11)])
def test_device_augmentation_keeps_the_dtype_under_mixed_precision(policy, step):
    """Float32 or already-cast input: out in the compute dtype, the float32 warp to its precision."""
    images = _unit_batch()
    exact = _numpy(augment.DeviceAugmentation(seed=4, dtype="float32")(images, training=True))
    compute = augment.DeviceAugmentation(dtype=policy).compute_dtype
    for given in (images, keras.ops.cast(images, compute)):
        out = augment.DeviceAugmentation(seed=4, dtype=policy)(given, training=True)  # the same draws
        assert keras.backend.standardize_dtype(out.dtype) == compute
        # Two roundings (the input's, the output's) of values in [0, 1]: at most a step.
        np.testing.assert_allclose(_numpy(out), exact, rtol=0, atol=2 * step)


# The layer's entry in the config.json of a model.keras that train.py saved
# (--augment_on=device --mixed_precision, Keras 3.15.1) before the layer moved to Keras ops.
SAVED_BEFORE_KERAS_OPS = {
    "module": "pipeline.reader.augment",
    "class_name": "DeviceAugmentation",
    "config": {
        "name": "augmentation",
        "trainable": True,
        "dtype": {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "mixed_bfloat16"},
                  "registered_name": None},
        "rotation_range": 20.0,
        "width_shift_range": 0.1,
        "height_shift_range": 0.0,
        "zoom_range": 0.1,
        "horizontal_flip": True,
        "vertical_flip": True,
        "seed": 0,
    },
    "registered_name": "pipeline>DeviceAugmentation",
    "build_config": {"input_shape": [None, 32, 32, 3]},
}


@pytest.mark.backends
def test_device_augmentation_loads_a_config_saved_before_keras_ops():
    layer = keras.saving.deserialize_keras_object(copy.deepcopy(SAVED_BEFORE_KERAS_OPS))
    assert isinstance(layer, augment.DeviceAugmentation)
    assert layer.config == augment.NOTEBOOK_AUGMENTATION and layer.seed == 0
    assert layer.name == "augmentation" and layer.dtype_policy.name == "mixed_bfloat16"
    assert layer.get_config() == SAVED_BEFORE_KERAS_OPS["config"]  # saved again, the same format
    images = _unit_batch(size=32)
    out = layer(images, training=True)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    assert np.abs(_numpy(out) - images).mean() > 1e-3


def test_device_augmentation_config_round_trip():
    config = augment.AugmentationConfig(rotation_range=7.0, zoom_range=0.2, vertical_flip=False)
    layer = augment.DeviceAugmentation(config, seed=9, name="aug")
    restored = augment.DeviceAugmentation.from_config(layer.get_config())
    assert restored.config == config
    assert restored.seed == 9 and restored.name == "aug"
    assert dataclasses.asdict(restored.config) == dataclasses.asdict(config)


def test_device_augmentation_survives_save_and_load(tmp_path):
    config = augment.AugmentationConfig(rotation_range=10.0, zoom_range=0.05)
    inputs = keras.Input((24, 24, 3))
    x = augment.DeviceAugmentation(config, seed=3, name="augmentation")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(2)(x)
    model = keras.Model(inputs, outputs)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)

    layer = loaded.get_layer("augmentation")
    assert isinstance(layer, augment.DeviceAugmentation)
    assert layer.config == config and layer.seed == 3
    images = tf.constant(_unit_batch())
    np.testing.assert_allclose(
        loaded(images, training=False).numpy(), model(images, training=False).numpy(), atol=1e-6
    )
    np.testing.assert_array_equal(layer(images, training=False).numpy(), images.numpy())
    assert np.abs(layer(images, training=True).numpy() - images.numpy()).mean() > 1e-3
