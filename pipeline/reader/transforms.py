"""Per-example and per-batch stages of the reader, each a small pure function.

Every function works eagerly and inside `tf.data.Dataset.map`.
"""

from __future__ import annotations

import tensorflow as tf

from pipeline import schema

# DCT scaling factors libjpeg can decode at: decoding at 1/2, 1/4 or 1/8 of the
# size skips most of the inverse-DCT and colour-conversion work.
_JPEG_RATIOS = (1, 2, 4, 8)
CLASS_MODES = ("binary", "categorical", "sparse")


def jpeg_ratio_index(height: tf.Tensor, width: tf.Tensor, target_size: tuple[int, int]) -> tf.Tensor:
    """Index into _JPEG_RATIOS of the largest ratio still >= `target_size`.

    Args:
      height, width: stored image size, int64 scalars.
      target_size: (height, width) the image is resized to next.

    Returns:
      An int32 scalar in [0, 3].
    """
    target_h, target_w = target_size
    index = tf.constant(0, tf.int32)
    for i, ratio in enumerate(_JPEG_RATIOS[1:], start=1):
        fits = tf.logical_and(height // ratio >= target_h, width // ratio >= target_w)
        index = tf.where(fits, tf.constant(i, tf.int32), index)
    return index


def decode_image(
    encoded: tf.Tensor,
    height: tf.Tensor | None = None,
    width: tf.Tensor | None = None,
    target_size: tuple[int, int] | None = None,
) -> tf.Tensor:
    """Decodes a JPEG, at a reduced DCT scale when that stays above the target.

    Args:
      encoded: scalar `tf.string`, a JPEG.
      height, width: the image's size from the record (int64 scalars). With
        `target_size`, they choose the DCT scale; without, the full size is
        decoded.
      target_size: (height, width) the caller resizes to afterwards.

    Returns:
      `tf.uint8` [h, w, 3]: the full image, or one of 1/2, 1/4, 1/8 of its
      size that is still at least `target_size`.
    """
    if target_size is None or height is None or width is None:
        return tf.io.decode_jpeg(encoded, channels=3)
    branches = [
        (lambda r=ratio: tf.io.decode_jpeg(encoded, channels=3, ratio=r))
        for ratio in _JPEG_RATIOS
    ]
    return tf.switch_case(jpeg_ratio_index(height, width, target_size), branches)


def resize_image(image: tf.Tensor, size: tuple[int, int], dtype: tf.DType = tf.uint8) -> tf.Tensor:
    """Bilinear resize to `size`, ignoring aspect ratio (as flow_from_directory).

    Args:
      image: `tf.uint8` [h, w, 3].
      size: (height, width).
      dtype: `tf.uint8` rounds the result, for stages that keep images
        compact (the cache, the host warp: a quarter of float32's bytes);
        `tf.float32` keeps the interpolated values.

    Returns:
      [height, width, 3] of `dtype`, values in [0, 255].
    """
    resized = tf.image.resize(image, size, method="bilinear")
    if dtype == tf.float32:
        return resized
    return tf.saturate_cast(tf.round(resized), dtype)


def scale_image(image: tf.Tensor) -> tf.Tensor:
    """`tf.uint8` [..., 3] in [0, 255] -> `tf.float32` in [0, 1] (rescale=1/255)."""
    return tf.cast(image, tf.float32) * (1.0 / 255.0)


def encode_label(label: tf.Tensor, num_classes: int, class_mode: str) -> tf.Tensor:
    """Formats integer labels as flow_from_directory's `class_mode` does.

    Args:
      label: int64 [...], class indices.
      num_classes: number of classes.
      class_mode: "binary" -> float32 [...] of 0/1; "categorical" -> float32
        [..., num_classes] one-hot; "sparse" -> int32 [...].
    """
    if class_mode == "binary":
        return tf.cast(label, tf.float32)
    if class_mode == "categorical":
        return tf.one_hot(label, num_classes, dtype=tf.float32)
    if class_mode == "sparse":
        return tf.cast(label, tf.int32)
    raise ValueError(f"class_mode must be one of {', '.join(CLASS_MODES)}, got {class_mode!r}")


def decode_any(encoded: tf.Tensor, target_size: tuple[int, int] | None = None) -> tf.Tensor:
    """Decodes an image file's bytes as the records' images are decoded.

    A JPEG (RGB, grayscale or CMYK) goes through `decode_image` with its
    header's size, so a stored-as-is JPEG decodes exactly as its record does;
    PNG, GIF (first frame), BMP and WebP through `tf.io.decode_image` and
    `three_channels`. EXIF orientation is ignored. The converter maps every
    Pillow mode to these pixels (`converter/imaging.py`, its pixel rule).

    Args:
      encoded: scalar `tf.string`, the file's bytes.
      target_size: see `decode_image`.

    Returns:
      `tf.uint8` [h, w, 3].
    """

    def jpeg():
        shape = tf.cast(tf.image.extract_jpeg_shape(encoded), tf.int64)
        return decode_image(encoded, shape[0], shape[1], target_size)

    def other():
        # The file's own channels: decode_webp refuses channels=3 for a WebP with alpha.
        return three_channels(tf.io.decode_image(encoded, channels=0, expand_animations=False))

    return tf.cond(tf.io.is_jpeg(encoded), jpeg, other)


def three_channels(image: tf.Tensor) -> tf.Tensor:
    """`tf.uint8` [h, w, c], c in 1..4 -> [h, w, 3]: grey repeated, alpha dropped.

    What `tf.io.decode_image(channels=3)` does to a PNG (measured equal on
    grey, grey+alpha and RGBA), also for a WebP with alpha.
    """
    out = tf.cond(tf.shape(image)[-1] < 3, lambda: tf.repeat(image[..., :1], 3, axis=-1), lambda: image[..., :3])
    out.set_shape([None, None, 3])
    return out


def _decode_as_pillow(encoded: tf.Tensor) -> tf.Tensor:
    """An image file's bytes -> `tf.uint8` [h, w, 3], its full size, as the converter's Pillow decodes it.

    A JPEG with libjpeg's accurate integer IDCT, which Pillow uses: with
    TensorFlow's default (the fast one) real photos came out up to 15 levels away.
    """
    return tf.cond(tf.io.is_jpeg(encoded),
                   lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE"),
                   lambda: decode_any(encoded))


def _resize_as_pillow(image: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    """Pillow's `resize(BILINEAR)`: antialiased, the width first, rounded to uint8 between the passes.

    `tf.uint8` [h, w, 3] -> [height, width, 3]: Pillow's pixels up to 12.x.
    Pillow 13.0 takes the height first for some sizes (most portrait photos
    made square): those, like one pass, leave about a tenth of the pixels a level away.
    """
    wide = tf.image.resize(image, tf.stack([tf.shape(image)[0], size[1]]), method="bilinear", antialias=True)
    stored = tf.image.resize(tf.round(wide), size, method="bilinear", antialias=True)
    return tf.saturate_cast(tf.round(stored), tf.uint8)


def as_stored(encoded: tf.Tensor, stored_size: tuple[int, int], target_size: tuple[int, int]) -> tf.Tensor:
    """An image file's bytes -> what `decode_image` gives for its record stored at `stored_size`.

    As the converter: Pillow's decode and resize, then a JPEG at its quality
    (TensorFlow's libjpeg encodes the same pixels to a JPEG that decodes to
    the same pixels as Pillow's); then the reader's decode of that JPEG, at
    the DCT scale it picks for a record of that size.

    Args:
      encoded: scalar `tf.string`: JPEG, PNG, GIF, BMP or WebP.
      stored_size: (height, width) of the records' images (`schema.Manifest.stored_size`).
      target_size: (height, width) the caller resizes to next.

    Returns:
      `tf.uint8` [h, w, 3]: `stored_size`, or 1/2, 1/4 or 1/8 of it.
    """
    stored = _resize_as_pillow(_decode_as_pillow(encoded), stored_size)
    jpeg = tf.io.encode_jpeg(stored, quality=schema.STORED_JPEG_QUALITY)
    height, width = (tf.constant(side, tf.int64) for side in stored_size)
    return decode_image(jpeg, height, width, target_size)


def preprocess_encoded(
    encoded: tf.Tensor, image_size: tuple[int, int], stored_size: tuple[int, int] | None = None
) -> tf.Tensor:
    """An image file's bytes -> the model's input, as evaluation reads its record.

    Args:
      encoded: scalar `tf.string`: JPEG, PNG, GIF, BMP or WebP.
      image_size: (height, width).
      stored_size: the size the records' images were stored at, or None for
        originals: the file goes through `as_stored` first, as the converter
        and the reader took it.

    Returns:
      `tf.float32` [height, width, 3] in [0, 1].
    """
    if stored_size is None:
        image = decode_any(encoded, image_size)
    else:
        image = as_stored(encoded, stored_size, image_size)
    return scale_image(resize_image(image, image_size, tf.float32))
