"""pipeline.reader.augment: the ImageDataGenerator augmentation as one affine warp."""

from __future__ import annotations

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
    device = augment.warp_with_tensorflow(tf.constant(batch), matrices)
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
    device = augment.warp_with_tensorflow(tf.constant(unit[None], tf.float32), matrices).numpy()[0]
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
    device = augment.warp_with_tensorflow(tf.constant(image[None]), matrices).numpy()[0]
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
    gather = augment.warp_with_tensorflow(tf.constant(batch), matrices).numpy()
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
        augment.warp_with_tensorflow(tf.constant(image), turned).numpy(),
        image[:, ::-1, ::-1].astype(np.float32), atol=1e-2,
    )


def test_host_and_device_warps_agree_on_random_transforms():
    batch = np.stack([_smooth_image(32, 32, s) for s in range(8)])
    matrices = augment.random_affine(8, 32, 32, augment.NOTEBOOK_AUGMENTATION, tf.constant([5, 6]))
    host = augment.warp_on_host(tf.constant(batch), matrices).numpy().astype(np.float32)
    device = augment.warp_with_tensorflow(tf.constant(batch), matrices).numpy()
    assert np.abs(host - device).mean() < 1.0
    assert np.abs(host - device).max() <= 2.0


# --------------------------------------------------------------------------
# random_affine draws within the configured ranges.


def test_random_affine_stays_within_notebook_ranges():
    n, height, width = 4000, 150, 150
    config = augment.NOTEBOOK_AUGMENTATION
    matrices = augment.random_affine(n, height, width, config, tf.constant([11, 12])).numpy()
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


def test_random_affine_respects_other_ranges_on_non_square_images():
    n, height, width = 3000, 40, 100
    config = augment.AugmentationConfig(
        rotation_range=5.0, width_shift_range=0.2, height_shift_range=0.05, zoom_range=0.3,
        horizontal_flip=False, vertical_flip=True,
    )
    matrices = augment.random_affine(n, height, width, config, tf.constant([0, 1])).numpy()
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


def test_warp_with_tensorflow_compiles_with_xla():
    batch = tf.constant(np.stack([_smooth_image(16, 16, s) for s in range(2)]), tf.float32)
    matrices = augment.random_affine(2, 16, 16, augment.NOTEBOOK_AUGMENTATION, tf.constant([2, 3]))
    compiled = tf.function(augment.warp_with_tensorflow, jit_compile=True)
    np.testing.assert_allclose(
        compiled(batch, matrices).numpy(),
        augment.warp_with_tensorflow(batch, matrices).numpy(),
        atol=1e-3,
    )


# --------------------------------------------------------------------------
# DeviceAugmentation.


def _unit_batch(n=4, size=24) -> np.ndarray:
    return np.stack([_smooth_image(size, size, s) for s in range(n)]).astype(np.float32) / 255.0


def test_device_augmentation_only_in_training():
    layer = augment.DeviceAugmentation(seed=1)
    images = tf.constant(_unit_batch())
    for training in (False, None):
        np.testing.assert_array_equal(layer(images, training=training).numpy(), images.numpy())
    augmented = layer(images, training=True)
    assert augmented.shape == images.shape and augmented.dtype == tf.float32
    diff = np.abs(augmented.numpy() - images.numpy()).mean(axis=(1, 2, 3))
    assert np.all(diff > 1e-3)  # every image changed
    # Interpolation and edge repetition stay within the input range.
    assert augmented.numpy().min() >= images.numpy().min() - 1e-6
    assert augmented.numpy().max() <= images.numpy().max() + 1e-6
    # New transforms on every call.
    assert not np.array_equal(layer(images, training=True).numpy(), augmented.numpy())


def test_device_augmentation_seed():
    images = tf.constant(_unit_batch())
    first = augment.DeviceAugmentation(seed=5)(images, training=True).numpy()
    again = augment.DeviceAugmentation(seed=5)(images, training=True).numpy()
    other = augment.DeviceAugmentation(seed=6)(images, training=True).numpy()
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


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
