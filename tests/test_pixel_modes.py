"""One pixel rule: what the converter stores for each Pillow mode is what predict.py and the export decode.

For each mode a small noisy gradient is written as a file; the converter's
`imaging.load_for_storage` of it, decoded as the reader decodes records, is
compared with `transforms.decode_any` of the same file's bytes (TensorFlow's
decoders, as predict.py and the SavedModel use them). RGB JPEGs are stored
byte for byte and agree exactly; re-encoded images agree within the JPEG
bound below. `imaging.rgb_pixels` itself (before any JPEG) is held to
TensorFlow's decode exactly.
"""

from __future__ import annotations

import dataclasses
import io
import re
import struct
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from support import cli
from support.images import decode_jpeg, noisy_gradient
from support.records import read_records
from pipeline import schema
from pipeline.converter import imaging
from pipeline.converter.commands import CONVERT
from pipeline.reader import transforms

SIZE = (40, 56)  # (height, width): not square, so a rotation would show
# How far a quality-95 JPEG the converter encodes may be from TensorFlow's decode of the
# source, in grey levels, on this noisy pattern. Measured worst over the cases: mean 5.3,
# max 69 (a saturated colour edge under Pillow's 4:2:0 chroma subsampling), signed mean
# -1.2. A clipped image or one put on white is off by 50 to 255 on average.
JPEG_MEAN_BOUND = 8.0  # 0.031 in [0, 1]
JPEG_MAX_BOUND = 96  # 0.38
JPEG_BIAS_BOUND = 2.0  # |mean of stored - served|: JPEG error averages out
EXIF_ORIENTATION = 0x0112
ROTATED_90_CW = 6


@dataclasses.dataclass(frozen=True)
class Case:
    """A file of one pixel mode: how to write it and what the converter must do with it."""

    name: str
    suffix: str
    write: Callable[[Path], None]
    stored_as_is: bool = False  # an RGB JPEG: the record holds the file's bytes
    tf_decodes: bool = True  # False for TIFF: TensorFlow decodes none
    expected: Callable[[], np.ndarray] | None = None  # uint8 [h, w, 3], where TF decodes nothing


def _pattern() -> np.ndarray:
    return noisy_gradient(SIZE)


def _grey() -> np.ndarray:
    return _pattern()[..., 0]


def _grey16() -> np.ndarray:
    """uint16 [h, w]: the grey pattern in the high byte, noise in the low byte (rounding shows)."""
    low = np.random.default_rng(1).integers(0, 256, SIZE)
    return (_grey().astype(np.uint16) << 8) | low.astype(np.uint16)


def _keyed16() -> tuple[np.ndarray, int]:
    """(`_grey16` with its left half one grey, that grey): for a tRNS colour key."""
    key = 0x6A55
    grey = _grey16()
    grey[:, : SIZE[1] // 2] = key
    return grey, key


def _rgb16() -> np.ndarray:
    """uint16 [h, w, 3]: the pattern in the high bytes, noise in the low bytes."""
    low = np.random.default_rng(2).integers(0, 256, (*SIZE, 3))
    return (_pattern().astype(np.uint16) << 8) | low.astype(np.uint16)


def _half_transparent() -> np.ndarray:
    """uint8 [h, w] alpha: the left half fully transparent, a band half transparent."""
    alpha = np.full(SIZE, 255, np.uint8)
    alpha[:, : SIZE[1] // 2] = 0
    alpha[:4] = 128
    return alpha


def _save(image: Image.Image, **options) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        image.save(path, **options)

    return write


def _cv2_write(array: np.ndarray) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        assert cv2.imwrite(str(path), array)

    return write


def _palette(transparent_colour: tuple[int, int, int]) -> tuple[Image.Image, int]:
    """The pattern as a 64-colour palette image whose left half is index 63, of
    `transparent_colour`: (the image, 63)."""
    quantized = Image.fromarray(_pattern()).quantize(63)
    indices = np.asarray(quantized).copy()
    indices[:, : SIZE[1] // 2] = 63
    image = Image.fromarray(indices, "P")
    palette = quantized.getpalette()[: 63 * 3] + list(transparent_colour)
    image.putpalette(palette)
    return image, 63


def _cmyk() -> Image.Image:
    """C, M, Y from the pattern, K rising along the rows to 200: every formula term in play."""
    pattern = _pattern()
    k = np.linspace(0, 200, SIZE[0])[:, None].repeat(SIZE[1], 1).astype(np.uint8)
    cmyk = np.dstack([255 - pattern, k])
    return Image.frombytes("CMYK", (SIZE[1], SIZE[0]), cmyk.tobytes())


def _jpeg_without(data: bytes, marker: bytes) -> bytes:
    """JPEG bytes without the first segment of `marker` (e.g. APP14, Adobe's)."""
    start = data.index(marker)
    (length,) = struct.unpack(">H", data[start + 2 : start + 4])
    return data[:start] + data[start + 2 + length :]


def _cmyk_without_adobe(path: Path) -> None:
    buffer = io.BytesIO()
    _cmyk().save(buffer, format="JPEG", quality=95)
    path.write_bytes(_jpeg_without(buffer.getvalue(), b"\xff\xee"))


def _exif_rotated(image: Image.Image) -> Callable[[Path], None]:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = ROTATED_90_CW
    return _save(image, format="JPEG", quality=95, exif=exif.tobytes())


def _deep_integers() -> np.ndarray:
    """int32 [h, w] in 0..2.2 billion: a 32-bit TIFF's pixels."""
    return np.arange(SIZE[0] * SIZE[1], dtype=np.int32).reshape(SIZE) * 1000


def _repeat(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, -1)


_RGB = Image.fromarray(_pattern())
_L = Image.fromarray(_grey())
_P, _P_TRANSPARENT = _palette((200, 60, 40))
_RGBA_CUTOUT = Image.fromarray(np.dstack([np.where(_half_transparent()[..., None] == 0, 0, _pattern()),
                                          _half_transparent()]))

CASES = [
    Case("RGB JPEG", ".jpg", _save(_RGB, format="JPEG", quality=95), stored_as_is=True),
    Case("RGB JPEG, EXIF rotated", ".jpg", _exif_rotated(_RGB), stored_as_is=True),
    Case("YCbCr written as JPEG", ".jpg", _save(_RGB.convert("YCbCr"), format="JPEG", quality=95), stored_as_is=True),
    Case("L JPEG", ".jpg", _save(_L, format="JPEG", quality=95)),
    Case("L JPEG, EXIF rotated", ".jpg", _exif_rotated(_L)),
    Case("CMYK JPEG (Adobe)", ".jpg", _save(_cmyk(), format="JPEG", quality=95)),
    Case("CMYK JPEG without Adobe marker", ".jpg", _cmyk_without_adobe),
    Case("1-bit PNG", ".png", _save(_L.convert("1"), format="PNG")),
    Case("L PNG", ".png", _save(_L, format="PNG")),
    Case("LA PNG", ".png", _save(Image.fromarray(np.dstack([_grey(), _half_transparent()]), "LA"), format="PNG")),
    Case("P PNG", ".png", _save(_P, format="PNG")),
    Case("P PNG with tRNS", ".png", _save(_P, format="PNG", transparency=_P_TRANSPARENT)),
    Case("RGB PNG", ".png", _save(_RGB, format="PNG")),
    Case("RGBA PNG, black under the cut-out", ".png", _save(_RGBA_CUTOUT, format="PNG")),
    Case("16-bit grey PNG (I;16)", ".png", _save(Image.fromarray(_grey16()), format="PNG")),
    Case("16-bit grey PNG with tRNS", ".png", _save(Image.fromarray(_keyed16()[0]), format="PNG",
                                                    transparency=_keyed16()[1])),
    Case("16-bit RGB PNG", ".png", _cv2_write(_rgb16())),
    Case("16-bit RGBA PNG", ".png", _cv2_write(np.dstack([_rgb16(), _grey16()[:, ::-1]]))),
    Case("GIF", ".gif", _save(_P, format="GIF")),
    Case("GIF with transparency", ".gif", _save(_P, format="GIF", transparency=_P_TRANSPARENT)),
    Case("BMP", ".bmp", _save(_RGB, format="BMP")),
    Case("RGBA BMP", ".bmp", _save(_RGBA_CUTOUT, format="BMP")),
    Case("WebP", ".webp", _save(_RGB, format="WEBP", quality=90)),
    Case("RGBA WebP", ".webp", _save(_RGBA_CUTOUT, format="WEBP", lossless=True, exact=True)),
    Case("16-bit grey TIFF (I;16)", ".tif", _save(Image.fromarray(_grey16()), format="TIFF"), tf_decodes=False,
         expected=lambda: _repeat(_grey())),
    Case("YCbCr TIFF", ".tif", _save(_RGB.convert("YCbCr"), format="TIFF"), tf_decodes=False,
         expected=lambda: np.asarray(_RGB.convert("YCbCr").convert("RGB"))),  # Pillow's own conversion
]


def _case(name: str) -> Case:
    return next(case for case in CASES if case.name == name)


def _written(case: Case, folder: Path) -> Path:
    path = folder / f"image{case.suffix}"
    case.write(path)
    return path


def _served(path: Path) -> np.ndarray:
    """uint8 [h, w, 3]: predict.py's and the export's decode of the file."""
    return transforms.decode_any(tf.constant(path.read_bytes())).numpy()


def _reference(case: Case, path: Path) -> np.ndarray:
    """What the rule must give before any JPEG: TensorFlow's decode, a JPEG's with the
    accurate inverse DCT that Pillow uses too; the stated pixels where TF decodes nothing."""
    if not case.tf_decodes:
        return case.expected()
    data = path.read_bytes()
    if case.suffix == ".jpg":
        return tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE").numpy()
    return _served(path)


def _assert_within_jpeg_bounds(stored: np.ndarray, served: np.ndarray) -> None:
    """uint8 [h, w, 3] each: a stored JPEG's pixels against the served ones."""
    gap = stored.astype(np.int64) - served.astype(np.int64)
    figures = (np.abs(gap).mean(), np.abs(gap).max(), gap.mean())
    assert figures[0] <= JPEG_MEAN_BOUND and figures[1] <= JPEG_MAX_BOUND, figures
    assert abs(figures[2]) <= JPEG_BIAS_BOUND, figures


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_the_rule_gives_tensorflows_own_pixels(case, tmp_path):
    path = _written(case, tmp_path)
    with Image.open(path) as image:
        image.load()
        pixels = imaging.rgb_pixels(image)
    assert pixels.dtype == np.uint8 and pixels.shape == (*SIZE, 3)
    np.testing.assert_array_equal(pixels, _reference(case, path))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_the_converter_stores_what_predict_decodes(case, tmp_path):
    path = _written(case, tmp_path)
    stored = imaging.load_for_storage(str(path))
    assert (stored.height, stored.width) == SIZE
    if case.stored_as_is:
        assert stored.encoded == path.read_bytes()
        np.testing.assert_array_equal(decode_jpeg(stored.encoded), _served(path))
        return
    _assert_within_jpeg_bounds(decode_jpeg(stored.encoded), _served(path) if case.tf_decodes else case.expected())
    with Image.open(io.BytesIO(stored.encoded)) as written:
        assert EXIF_ORIENTATION not in written.getexif()  # nothing downstream rotates it


def test_a_cut_out_keeps_the_colour_under_its_transparency(tmp_path):
    """Issue #29: white there put the stored image 0.5 (in [0, 1]) away from the served one."""
    path = _written(_case("RGBA PNG, black under the cut-out"), tmp_path)
    stored = decode_jpeg(imaging.load_for_storage(str(path)).encoded)
    assert stored[6:, 2 : SIZE[1] // 2 - 4].max() <= 8  # black, give or take JPEG ringing


def test_a_resized_exif_rotated_photo_is_not_rotated(tmp_path):
    path = _written(_case("RGB JPEG, EXIF rotated"), tmp_path)
    stored = imaging.load_for_storage(str(path), stored_size=(20, 28))
    with Image.open(io.BytesIO(stored.encoded)) as written:
        assert EXIF_ORIENTATION not in written.getexif()
        assert (written.height, written.width) == (20, 28)
    served = tf.image.resize(_served(path), (20, 28), antialias=True)
    _assert_within_jpeg_bounds(decode_jpeg(stored.encoded), tf.round(served).numpy())


@pytest.mark.parametrize("mode, array, reason", [
    ("I", _deep_integers(), "32-bit integer pixels (mode I): no 8-bit range"),
    ("F", _deep_integers().astype(np.float32) / 7, "32-bit float pixels (mode F): no 8-bit range"),
])
def test_pixels_without_an_8_bit_range_are_refused(mode, array, reason, tmp_path):
    path = tmp_path / "deep.tif"
    Image.fromarray(array, mode).save(path)
    with pytest.raises(imaging.ImageDecodeError, match="^" + re.escape(reason)):
        imaging.load_for_storage(str(path))


def test_a_16_bit_image_within_one_8_bit_level_is_refused_a_constant_one_kept(tmp_path):
    faint = tmp_path / "faint.png"  # 0..255 of 65535: every pixel's high byte is 0
    Image.fromarray(_grey().astype(np.uint16)).save(faint)
    blank = r"^mode I;16 pixels vary \(I \d+\.\.\d+\) but all become the one colour \(0, 0, 0\): .* blank$"
    with pytest.raises(imaging.ImageDecodeError, match=blank):
        imaging.load_for_storage(str(faint))
    flat = tmp_path / "flat.png"
    Image.fromarray(np.full(SIZE, 30000, np.uint16)).save(flat)
    stored = decode_jpeg(imaging.load_for_storage(str(flat)).encoded)
    assert np.abs(stored.astype(int) - (30000 >> 8)).max() <= 1


def test_convert_py_stores_a_16_bit_png_as_tensorflow_decodes_it(tmp_path):
    """End to end: the records of convert.py hold the high bytes, not the white of a clip."""
    src = tmp_path / "src"
    deep = src / "deep" / "grey16.png"
    deep.parent.mkdir(parents=True)
    Image.fromarray(_grey16()).save(deep)
    (src / "flat").mkdir()
    _RGB.save(src / "flat" / "rgb.jpg", quality=95)
    deep_tiff = src / "deep" / "int32.tif"
    Image.fromarray(_deep_integers(), "I").save(deep_tiff)
    out = tmp_path / "records"

    done = cli.run(CONVERT, f"--src={src}", f"--out={out}", "--workers=1", "--nodata_report")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{deep_tiff}: 32-bit integer pixels (mode I): no 8-bit range" in done.stdout
    records = {r[schema.FILENAME_KEY]: r for r in read_records(out, "train")}
    _assert_within_jpeg_bounds(decode_jpeg(records["deep/grey16.png"][schema.IMAGE_KEY]), _served(deep))
