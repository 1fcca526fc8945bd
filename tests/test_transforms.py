"""pipeline.reader.transforms, each stage eagerly and inside tf.data.Dataset.map."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from support.images import gradient_array
from pipeline.reader import transforms

RATIOS = (1, 2, 4, 8)


def _jpeg(array: np.ndarray, mode: str | None = None) -> bytes:
    image = Image.fromarray(array)
    if mode:
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _in_map(fn, *tensors):
    """Runs fn on one element of a dataset made of `tensors`."""
    ds = tf.data.Dataset.from_tensors(tuple(tf.convert_to_tensor(t) for t in tensors))
    return next(iter(ds.map(fn)))


def _expected_ratio_index(height: int, width: int, target) -> int:
    best = 0
    for i, ratio in enumerate(RATIOS):
        if height // ratio >= target[0] and width // ratio >= target[1]:
            best = i
    return best


# --------------------------------------------------------------------------
# jpeg_ratio_index


@pytest.mark.parametrize(
    "height, width, target, expected",
    [
        (150, 150, (150, 150), 0),
        (299, 400, (150, 150), 0),  # 299 // 2 = 149 < 150
        (300, 300, (150, 150), 1),
        (599, 1000, (150, 150), 1),
        (600, 600, (150, 150), 2),
        (1200, 1200, (150, 150), 3),
        (5000, 5000, (150, 150), 3),  # no ratio beyond 8
        (1200, 300, (150, 150), 1),  # the narrow side decides
        (100, 100, (150, 150), 0),  # smaller than the target: full size
        (400, 1600, (100, 200), 2),
    ],
)
def test_jpeg_ratio_index_cases(height, width, target, expected):
    h = tf.constant(height, tf.int64)
    w = tf.constant(width, tf.int64)
    eager = transforms.jpeg_ratio_index(h, w, target)
    assert eager.dtype == tf.int32
    assert int(eager) == expected
    mapped = _in_map(lambda a, b: transforms.jpeg_ratio_index(a, b, target), h, w)
    assert int(mapped) == expected


def test_jpeg_ratio_index_is_the_largest_ratio_that_stays_above_target():
    sizes = np.arange(1, 700, 7, dtype=np.int64)
    heights, widths = np.meshgrid(sizes, sizes[::-1], indexing="ij")
    target = (37, 50)
    got = transforms.jpeg_ratio_index(
        tf.constant(heights.ravel()), tf.constant(widths.ravel()), target
    ).numpy()
    for h, w, index in zip(heights.ravel(), widths.ravel(), got):
        ratio = RATIOS[index]
        assert index == _expected_ratio_index(h, w, target), (h, w)
        if index > 0:
            assert h // ratio >= target[0] and w // ratio >= target[1]
        if index < 3:
            bigger = RATIOS[index + 1]
            assert h // bigger < target[0] or w // bigger < target[1]


# --------------------------------------------------------------------------
# decode_image


@pytest.fixture(scope="module")
def gradient_jpeg():
    array = gradient_array((200, 120), 77)
    return array, _jpeg(array)


def test_decode_image_full_size(gradient_jpeg):
    array, encoded = gradient_jpeg
    for image in (
        transforms.decode_image(tf.constant(encoded)),
        _in_map(transforms.decode_image, encoded),
    ):
        assert image.dtype == tf.uint8
        assert image.shape == (200, 120, 3)
        diff = np.abs(image.numpy().astype(float) - array)
        assert diff.mean() < 2.0


@pytest.mark.parametrize(
    "target, expected_shape",
    [
        ((50, 30), (50, 30, 3)),  # 1/4
        ((25, 15), (25, 15, 3)),  # 1/8
        ((60, 30), (100, 60, 3)),  # 200 // 4 < 60: 1/2
        ((101, 20), (200, 120, 3)),  # 200 // 2 < 101: full size
        ((10, 10), (25, 15, 3)),  # never beyond 1/8
    ],
)
def test_decode_image_reduced_dct_scale(gradient_jpeg, target, expected_shape):
    array, encoded = gradient_jpeg
    h, w = tf.constant(200, tf.int64), tf.constant(120, tf.int64)
    eager = transforms.decode_image(tf.constant(encoded), h, w, target)
    mapped = _in_map(lambda e, a, b: transforms.decode_image(e, a, b, target), encoded, h, w)
    for image in (eager, mapped):
        assert image.dtype == tf.uint8
        assert tuple(image.shape) == expected_shape
        assert image.shape[0] >= min(target[0], 200) and image.shape[1] >= min(target[1], 120)
        # The reduced decode is the image, smaller: close to a resize of the source.
        reference = np.asarray(
            Image.fromarray(array).resize(expected_shape[1::-1], Image.Resampling.BOX), float
        )
        assert np.abs(image.numpy() - reference).mean() < 3.0


def test_decode_image_in_map_has_three_static_channels(gradient_jpeg):
    _, encoded = gradient_jpeg
    ds = tf.data.Dataset.from_tensors(
        (tf.constant(encoded), tf.constant(200, tf.int64), tf.constant(120, tf.int64))
    )
    mapped = ds.map(lambda e, a, b: transforms.decode_image(e, a, b, (50, 30)))
    assert mapped.element_spec.dtype == tf.uint8
    assert mapped.element_spec.shape.rank == 3
    assert mapped.element_spec.shape[-1] == 3


def test_decode_image_makes_grayscale_rgb():
    gray = np.broadcast_to(np.array([90, 90, 90], np.uint8), (16, 24, 3)).copy()
    encoded = _jpeg(gray, "L")
    assert tf.io.decode_jpeg(encoded, channels=0).shape[-1] == 1  # really grayscale
    for image in (
        transforms.decode_image(tf.constant(encoded)),
        _in_map(transforms.decode_image, encoded),
    ):
        assert image.shape == (16, 24, 3)
        assert np.abs(image.numpy().astype(int) - 90).max() <= 2


# --------------------------------------------------------------------------
# resize_image


def test_resize_image_dtype_size_and_values():
    array = gradient_array((40, 64), 200)
    for size in [(20, 32), (50, 30), (7, 7)]:
        reference = tf.cast(
            tf.clip_by_value(tf.round(tf.image.resize(array, size, method="bilinear")), 0, 255),
            tf.uint8,
        ).numpy()
        for image in (
            transforms.resize_image(tf.constant(array), size),
            _in_map(lambda x: transforms.resize_image(x, size), array),
        ):
            assert image.dtype == tf.uint8
            assert tuple(image.shape) == (*size, 3)
            np.testing.assert_array_equal(image.numpy(), reference)


def test_resize_image_to_float32_keeps_the_interpolated_values():
    array = gradient_array((40, 64), 200)
    reference = tf.image.resize(array, (20, 30), method="bilinear").numpy()
    for image in (
        transforms.resize_image(tf.constant(array), (20, 30), tf.float32),
        _in_map(lambda x: transforms.resize_image(x, (20, 30), tf.float32), array),
    ):
        assert image.dtype == tf.float32
        np.testing.assert_allclose(image.numpy(), reference, atol=1e-4)
    rounded = transforms.resize_image(tf.constant(array), (20, 30)).numpy()
    assert np.abs(rounded - reference).max() <= 0.5 + 1e-4
    assert not np.array_equal(rounded.astype(np.float32), reference)


def test_resize_image_keeps_a_flat_colour_and_the_extremes():
    flat = np.zeros((13, 17, 3), np.uint8)
    flat[..., 0] = 255
    flat[..., 1] = 3
    out = transforms.resize_image(tf.constant(flat), (30, 9)).numpy()
    assert (out == np.array([255, 3, 0], np.uint8)).all()


def test_resize_image_with_dynamic_input_shape():
    array = gradient_array((33, 21), 5)
    ds = tf.data.Dataset.from_generator(
        lambda: iter([array]), output_signature=tf.TensorSpec([None, None, 3], tf.uint8)
    ).map(lambda x: transforms.resize_image(x, (8, 12)))
    assert ds.element_spec.shape == (8, 12, 3)
    assert next(iter(ds)).shape == (8, 12, 3)


# --------------------------------------------------------------------------
# scale_image


def test_scale_image_range_and_dtype():
    values = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, -1)
    for image in (
        transforms.scale_image(tf.constant(values)),
        _in_map(transforms.scale_image, values),
    ):
        image = image.numpy()
        assert image.dtype == np.float32
        assert image.min() == 0.0 and image.max() == 1.0
        np.testing.assert_allclose(image, values / 255.0, atol=1e-7)


def test_scale_image_batch():
    batch = np.full((2, 4, 4, 3), 51, np.uint8)
    out = transforms.scale_image(tf.constant(batch))
    assert out.shape == (2, 4, 4, 3)
    np.testing.assert_allclose(out.numpy(), 0.2, atol=1e-7)


# --------------------------------------------------------------------------
# encode_label


LABELS = np.array([0, 2, 1, 2], np.int64)


@pytest.mark.parametrize(
    "mode, dtype, expected",
    [
        ("binary", tf.float32, np.array([0.0, 2.0, 1.0, 2.0])),
        ("sparse", tf.int32, np.array([0, 2, 1, 2])),
        ("categorical", tf.float32, np.eye(3)[LABELS]),
    ],
)
def test_encode_label_modes(mode, dtype, expected):
    for out in (
        transforms.encode_label(tf.constant(LABELS), 3, mode),
        _in_map(lambda y: transforms.encode_label(y, 3, mode), LABELS),
    ):
        assert out.dtype == dtype
        assert out.shape == expected.shape
        np.testing.assert_array_equal(out.numpy(), expected)


def test_encode_label_binary_two_classes_and_scalar():
    out = transforms.encode_label(tf.constant([1, 0, 1], tf.int64), 2, "binary")
    np.testing.assert_array_equal(out.numpy(), [1.0, 0.0, 1.0])
    scalar = transforms.encode_label(tf.constant(1, tf.int64), 2, "categorical")
    np.testing.assert_array_equal(scalar.numpy(), [0.0, 1.0])


def test_encode_label_rejects_unknown_mode():
    with pytest.raises(ValueError, match="class_mode"):
        transforms.encode_label(tf.constant([0], tf.int64), 2, "input")
