"""Decodes and normalizes one source image for storage (converter side).

Runs in converter worker processes, so it uses Pillow only: no TensorFlow for
a local file. A file at a URL is read with tf.io.gfile in the worker
(`fileio.read_bytes`); the local pool is forked before the converter touches
any filesystem through TensorFlow (see `conversion.convert_folder`), so each
worker opens its own connections.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import stat
from collections.abc import Iterator

from PIL import Image, UnidentifiedImageError

from pipeline import fileio
from pipeline.converter import duplicates

DEFAULT_JPEG_QUALITY = 95
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


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB; transparent pixels become white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (
        image.mode == "P" and "transparency" in image.info
    ):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")  # L, CMYK, YCbCr, P, I;16, ...


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
def _pixel_limit(max_pixels: int) -> Iterator[None]:
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


def load_for_storage(
    path: str,
    stored_size: tuple[int, int] | None = None,
    jpeg_quality: int = DEFAULT_JPEG_QUALITY,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    fingerprint: bool = False,
) -> StoredImage:
    """Fully decodes one image file and returns what the records store.

    RGB JPEGs kept at their size are stored byte for byte (no generation
    loss); every other image (PNG, GIF, BMP, grayscale or CMYK JPEG, or any
    image when `stored_size` is set) is converted to RGB and encoded as JPEG.

    Args:
      path: the image file: a local path or a URL.
      stored_size: (height, width) to resize to with Pillow's antialiased
        bilinear filter, or None to keep the original size.
      jpeg_quality: quality of the JPEGs this function encodes.
      max_pixels: images of more pixels (width x height, read from the
        header) are refused without being decoded.
      fingerprint: also take the source's `duplicates.Fingerprint`, from
        its bytes and the pixels decoded here (before any conversion).

    Raises:
      ImageDecodeError: the file is empty, truncated, not an image, not a
        regular file, or too large.
      OSError: the file cannot be read.
    """
    data = _read_regular_file(path)
    if not data:
        raise ImageDecodeError("empty file")
    with _pixel_limit(max_pixels):
        return _decode(data, stored_size, jpeg_quality, max_pixels, fingerprint)


def _decode(
    data: bytes, stored_size: tuple[int, int] | None, jpeg_quality: int, max_pixels: int, fingerprint: bool
) -> StoredImage:
    """`load_for_storage` of a file's bytes."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            _check_pixels(image, max_pixels)
            image.load()  # the full decode: raises on truncated data
            print_ = duplicates.fingerprint(data, image) if fingerprint else None
            if image.format == "JPEG" and image.mode == "RGB" and stored_size is None:
                return StoredImage(
                    encoded=data,
                    height=image.height,
                    width=image.width,
                    fingerprint=print_,
                )
            rgb = _to_rgb(image)
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
