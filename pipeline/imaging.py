"""Decodes and normalizes one source image for storage (converter side).

Runs in converter worker processes, so it uses Pillow only: no TensorFlow.
"""

from __future__ import annotations

import dataclasses
import io

from PIL import Image, UnidentifiedImageError

DEFAULT_JPEG_QUALITY = 95


class ImageDecodeError(ValueError):
    """A file that cannot be used as an image; the message is the reason."""


@dataclasses.dataclass(frozen=True)
class StoredImage:
    """An image as the converter stores it: RGB JPEG bytes and their size."""

    encoded: bytes
    height: int
    width: int
    image_format: str  # always "jpeg"


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


def load_for_storage(
    path: str,
    stored_size: tuple[int, int] | None = None,
    jpeg_quality: int = DEFAULT_JPEG_QUALITY,
) -> StoredImage:
    """Fully decodes one image file and returns what the records store.

    RGB JPEGs kept at their size are stored byte for byte (no generation
    loss); every other image (PNG, GIF, BMP, grayscale or CMYK JPEG, or any
    image when `stored_size` is set) is converted to RGB and encoded as JPEG.

    Args:
      path: the image file.
      stored_size: (height, width) to resize to with Pillow's antialiased
        bilinear filter, or None to keep the original size.
      jpeg_quality: quality of the JPEGs this function encodes.

    Raises:
      ImageDecodeError: the file is empty, truncated or not an image.
    """
    with open(path, "rb") as f:
        data = f.read()
    if not data:
        raise ImageDecodeError("empty file")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # the full decode: raises on truncated data
            if image.format == "JPEG" and image.mode == "RGB" and stored_size is None:
                return StoredImage(
                    encoded=data,
                    height=image.height,
                    width=image.width,
                    image_format="jpeg",
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
                image_format="jpeg",
            )
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageDecodeError(f"cannot decode: {e}") from None
