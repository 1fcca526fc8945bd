"""Decodes and normalizes one source image for storage (converter side).

Runs in converter worker processes, so it uses Pillow only: no TensorFlow for
a local file. A file at a URL is read with tf.io.gfile in the worker
(`fileio.read_bytes`); the local pool is forked before the converter touches
any filesystem through TensorFlow (see `conversion.convert_folder`), so each
worker opens its own connections.

The pixel rule (`rgb_pixels`): every mode becomes the uint8 RGB that
TensorFlow's decoders give predict.py and the export for the same file
(`reader.transforms.decode_any`), so serving needs no decoder of its own:

  RGBA, RGBX, LA, P, PA       alpha dropped: the colour under it is kept (P
                                and PA through their palette, tRNS or not)
  L, LA, 1                    grey repeated in R, G and B; 1-bit as 0/255
  GIF with transparency       transparent pixels black (TF's GIF decoder)
  16-bit grey: I;16*, or I    the high byte, v >> 8, as TF's PNG decoder
    from a PNG or PGM           (libpng's strip_16); Pillow itself reads
                                16-bit RGB and RGBA PNGs so
  CMYK                        TF's JPEG formula, R = (255-C)(255-K) // 255;
                                a JPEG without an Adobe marker R = C K // 255
  I (32-bit), F               refused: no 8-bit range to map them to
  YCbCr, LAB, HSV, ...        Pillow's own conversion (TF decodes none)
  EXIF orientation            ignored, as TF and Keras's load_img do; the
                                JPEGs encoded here carry no EXIF

A source that varies but would be stored as one colour is refused
(`_check_not_flattened`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import stat
from collections.abc import Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline import fileio
from pipeline import schema
from pipeline.converter import duplicates

DEFAULT_MAX_PIXELS = 100_000_000


class ImageDecodeError(ValueError):
    """A file that cannot be used as an image; the message is the reason."""


@dataclasses.dataclass(frozen=True)
class StoredImage:
    """An image as the converter stores it: RGB JPEG bytes and their size; the source's fingerprint."""

    encoded: bytes
    height: int
    width: int
    fingerprint: duplicates.Fingerprint | None = None  # None unless asked for


# Modes whose rule selects channels or looks a palette up: nothing to clip.
_SELECTED_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
# Formats whose 16-bit greys Pillow opens as mode I, scaled to 0..65535.
_SIXTEEN_BIT_I_FORMATS = frozenset({"PNG", "PPM"})
_NO_RANGE = {"I": "32-bit integer pixels", "F": "32-bit float pixels"}


def rgb_pixels(image: Image.Image) -> np.ndarray:
    """A loaded Pillow image -> uint8 [h, w, 3] by the pixel rule (module docstring).

    Raises:
      ImageDecodeError: a mode with no 8-bit range (I, F), or a source that
        varies but whose rule gives a single colour (`_check_not_flattened`).
    """
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES or (mode == "I" and image.format in _SIXTEEN_BIT_I_FORMATS):
        rgb = _grey(_high_byte(np.asarray(image)))
    elif mode in _NO_RANGE:
        raise ImageDecodeError(f"{_NO_RANGE[mode]} (mode {mode}): no 8-bit range to map them to")
    elif mode == "CMYK":
        rgb = _cmyk_to_rgb(np.asarray(image), inverted=_is_plain_cmyk_jpeg(image))
    elif mode in ("1", "L", "LA"):
        rgb = _grey(np.asarray(image.getchannel(0).convert("L")))
    elif mode in ("P", "PA"):
        rgb = np.asarray(image.convert("RGBA"))[..., :3]  # via RGBA: the colours under tRNS
    elif mode in ("RGB", "RGBA", "RGBX"):
        rgb = np.asarray(image)[..., :3]
    else:  # YCbCr, LAB, HSV, RGBa...: no format TensorFlow decodes opens as these
        rgb = np.asarray(image.convert("RGB"))
    if image.format == "GIF" and "transparency" in image.info and mode in ("P", "L"):
        rgb = np.where((np.asarray(image) == image.info["transparency"])[..., None], np.uint8(0), rgb)
    _check_not_flattened(image, rgb)
    return rgb


def _grey(plane: np.ndarray) -> np.ndarray:
    """uint8 [h, w] -> uint8 [h, w, 3], the plane in each channel."""
    return np.repeat(plane[..., None], 3, axis=-1)


def _high_byte(values: np.ndarray) -> np.ndarray:
    """16-bit values [h, w] (uint16, or int32 in 0..65535) -> uint8 [h, w]: v >> 8.

    TensorFlow's PNG decoder strips 16-bit samples to their high byte
    (measured on all 65,536 values), not round(v * 255 / 65535).
    """
    return (values >> 8).astype(np.uint8)


def _is_plain_cmyk_jpeg(image: Image.Image) -> bool:
    """A CMYK JPEG without an Adobe marker: TensorFlow reads its samples inverted.

    Pillow inverts every CMYK JPEG's samples (Adobe's convention), so its C,
    M, Y, K are the inks there; TF inverts only with the marker.
    """
    return image.format in ("JPEG", "MPO") and "adobe" not in image.info


def _cmyk_to_rgb(cmyk: np.ndarray, inverted: bool) -> np.ndarray:
    """uint8 [h, w, 4] CMYK -> uint8 [h, w, 3], TensorFlow's JPEG formula (integer division).

    R = (255 - C)(255 - K) // 255, likewise G from M and B from Y; with
    `inverted`, R = C K // 255. (Pillow's own conversion rounds instead.)
    """
    values = cmyk.astype(np.uint16)
    if not inverted:
        values = 255 - values
    product = values[..., :3] * values[..., 3:]  # at most 65025: uint16 holds it
    # x // 255 for every x in 0..65025, without numpy's slow integer division.
    return ((product + 1 + (product >> 8)) >> 8).astype(np.uint8)


def _check_not_flattened(image: Image.Image, rgb: np.ndarray) -> None:
    """Refuses a source whose colours vary but whose rule made one colour of them.

    A clipped conversion would store a blank image; here it can also be the
    file's own range (a 16-bit image within one 8-bit level, CMYK with K
    full everywhere), which TensorFlow would serve blank too: either way
    the records must not hold it unnoticed. Constant sources are kept.
    """
    if image.mode in _SELECTED_MODES or (rgb[::61, ::67] != rgb[0, 0]).any():  # a sample varies: done
        return
    if any(low != high for low, high in Image.fromarray(rgb).getextrema()):
        return
    extrema = image.getextrema()
    bands = [extrema] if len(image.getbands()) == 1 else list(extrema)
    spans = [
        f"{band} {low}..{high}" for band, (low, high) in zip(image.getbands(), bands)
        if low != high and band not in ("A", "a")
    ]
    if spans:
        raise ImageDecodeError(
            f"mode {image.mode} pixels vary ({', '.join(spans)}) but all become the one colour "
            f"{tuple(int(v) for v in rgb[0, 0])}: the image would be blank"
        )


def _read_regular_file(path: str) -> bytes:
    """The bytes of `path`, which must (still) be a regular file (any file at a URL)."""
    if fileio.is_url(path):  # no FIFOs there
        return fileio.read_bytes(path)
    # The scan lists regular files only; should one become a FIFO since,
    # O_NONBLOCK keeps open() from waiting for a writer, and fstat refuses it.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with open(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ImageDecodeError("not a regular file")
        return f.read()


@contextlib.contextmanager
def pixel_limit(max_pixels: int) -> Iterator[None]:
    """Makes `max_pixels` the one pixel limit while this block runs.

    Pillow's own limit (MAX_IMAGE_PIXELS) warns above 89 million pixels and
    raises above twice that, whatever --max_pixels says; it is switched off
    here and restored after, and `_check_pixels` applies ours instead.
    """
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _check_pixels(image: Image.Image, max_pixels: int) -> None:
    """Refuses an image larger than `max_pixels`, from its header: before decoding."""
    if image.width * image.height > max_pixels:
        raise ImageDecodeError(
            f"{image.width}x{image.height} pixels, over --max_pixels={max_pixels}"
        )


def header_problem(path: str, max_pixels: int | None) -> str | None:
    """The decoders' reason for skipping `path` that its header already gives, or None.

    `load_for_storage`'s steps and reasons up to the decode, for the scan
    (`walk.header_problems`); call it inside `pixel_limit`.
    """
    try:
        data = _read_regular_file(path)  # the whole file at a URL: fileio reads no part
    except ImageDecodeError as e:
        return str(e)
    except OSError as e:  # permissions, vanished, ...
        return f"cannot read: {e.strerror or e}"
    try:
        with Image.open(io.BytesIO(data)) as image:
            if max_pixels is not None:
                _check_pixels(image, max_pixels)
    except ImageDecodeError as e:
        return str(e)
    except UnidentifiedImageError:
        return "not an image"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        return f"cannot decode: {e}"
    return None


def load_for_storage(
    path: str,
    stored_size: tuple[int, int] | None = None,
    jpeg_quality: int = schema.STORED_JPEG_QUALITY,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    fingerprint: bool = False,
) -> StoredImage:
    """Fully decodes one image file and returns what the records store.

    RGB JPEGs kept at their size are stored byte for byte (no generation
    loss); every other image (PNG, GIF, BMP, WebP, TIFF, grayscale or CMYK
    JPEG, or any image when `stored_size` is set) becomes RGB by the pixel
    rule (module docstring, `rgb_pixels`) and is encoded as JPEG.

    Args:
      path: the image file: a local path or a URL.
      stored_size: (height, width) to resize to with Pillow's antialiased
        bilinear filter, or None to keep the original size.
      jpeg_quality: quality of the JPEGs this function encodes.
      max_pixels: images of more pixels (width x height, read from the
        header) are refused without being decoded.
      fingerprint: also take the source's `duplicates.Fingerprint`, from
        its bytes and its pixels as the rule makes them RGB (before any
        resize): a 16-bit image's pHash is taken on what the records hold.

    Raises:
      ImageDecodeError: the file is empty, truncated, not an image, not a
        regular file, too large, or its pixels have no 8-bit rule or would
        all become one colour (`rgb_pixels`).
      OSError: the file cannot be read.
    """
    data = _read_regular_file(path)
    if not data:
        raise ImageDecodeError("empty file")
    with pixel_limit(max_pixels):
        return _decode(data, stored_size, jpeg_quality, max_pixels, fingerprint)


def _decode(
    data: bytes, stored_size: tuple[int, int] | None, jpeg_quality: int, max_pixels: int, fingerprint: bool
) -> StoredImage:
    """`load_for_storage` of a file's bytes."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            _check_pixels(image, max_pixels)
            image.load()  # the full decode: raises on truncated data
            if image.format == "JPEG" and image.mode == "RGB" and stored_size is None:
                return StoredImage(
                    encoded=data,
                    height=image.height,
                    width=image.width,
                    fingerprint=duplicates.fingerprint(data, image) if fingerprint else None,
                )
            # Pillow's own RGB spared a copy; EXIF is not rotated, nor written.
            rgb = image if image.mode == "RGB" else Image.fromarray(rgb_pixels(image))
            print_ = duplicates.fingerprint(data, rgb) if fingerprint else None
            if stored_size is not None:
                height, width = stored_size
                rgb = rgb.resize((width, height), Image.Resampling.BILINEAR)
            out = io.BytesIO()
            rgb.save(out, format="JPEG", quality=jpeg_quality)
            return StoredImage(
                encoded=out.getvalue(),
                height=rgb.height,
                width=rgb.width,
                fingerprint=print_,
            )
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageDecodeError(f"cannot decode: {e}") from None
