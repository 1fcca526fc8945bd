"""The images the converter stores (pipeline.converter.imaging, through convert_folder): RGB JPEGs
of every format, at the stored size. Each pixel mode against TensorFlow's decode: test_pixel_modes.py."""

from __future__ import annotations

import io

import numpy as np
import tensorflow as tf
from PIL import Image

from support.images import PALETTE, check_colour, decode_jpeg, mean_colour, save_image
from support.records import convert, read_records
from pipeline import schema


def test_image_size_resizes_every_stored_image(split_tree, tmp_path):
    summary = convert(split_tree.root, tmp_path / "records", image_size=(20, 28))
    manifest = schema.read_manifest(str(tmp_path / "records"))
    assert manifest.stored_size == (20, 28)
    for split in ("train", "validation", "test"):
        records = read_records(tmp_path / "records", split)
        assert len(records) == summary.manifest.splits[split].num_examples
        expected = split_tree.by_relpath(split)
        for record in records:
            assert (record[schema.HEIGHT_KEY], record[schema.WIDTH_KEY]) == (20, 28)
            image = decode_jpeg(record[schema.IMAGE_KEY])
            assert image.shape == (20, 28, 3)
            check_colour(image, expected[record[schema.FILENAME_KEY]].colour)


def test_other_formats_are_stored_as_rgb_jpegs(tmp_path):
    src = tmp_path / "formats"
    folder = src / "things"
    colour = np.array(PALETTE[57], np.uint8)
    flat = np.broadcast_to(colour, (20, 24, 3)).copy()
    expected = {}
    for name, fmt, mode in [
        ("a.png", "PNG", None),
        ("b.gif", "GIF", None),
        ("c.bmp", "BMP", None),
        ("d_gray.jpg", "JPEG", "L"),
        ("e_cmyk.jpg", "JPEG", "CMYK"),
        ("f_palette.png", "PNG", "P"),
    ]:
        save_image(flat, folder / name, fmt, mode)
        with Image.open(folder / name) as source:
            assert source.format == fmt
            if mode:
                assert source.mode == mode
            expected[f"things/{name}"] = mean_colour(np.asarray(source.convert("RGB")))
    # Transparent pixels keep the colour under them: alpha is dropped, as
    # TensorFlow's decoders drop it (tests/test_pixel_modes.py). (The edge is on
    # a 16-pixel JPEG block boundary, so little ringing crosses it; the
    # decoder's chroma upsampling still blends the pixels next to it.)
    under = np.array(PALETTE[3], np.uint8)
    rgba = np.zeros((16, 32, 4), np.uint8)
    rgba[:, :16, :3] = colour
    rgba[:, 16:, :3] = under
    rgba[:, :16, 3] = 255
    Image.fromarray(rgba, "RGBA").save(folder / "g_alpha.png")
    save_image(flat, src / "others" / "x.jpg")  # a second class: one is refused

    summary = convert(src, tmp_path / "records")
    assert not summary.skipped
    records = {r[schema.FILENAME_KEY]: r for r in read_records(tmp_path / "records", "train")}
    del records["others/x.jpg"]
    assert sorted(records) == sorted([*expected, "things/g_alpha.png"])
    for name, record in records.items():
        encoded = record[schema.IMAGE_KEY]
        assert encoded[:2] == b"\xff\xd8", name
        with Image.open(io.BytesIO(encoded)) as stored:
            assert (stored.format, stored.mode) == ("JPEG", "RGB"), name
        # Decoding as stored (channels=0) gives three channels.
        image = tf.io.decode_jpeg(encoded, channels=0).numpy()
        size = (16, 32) if name == "things/g_alpha.png" else (20, 24)
        assert image.shape == (*size, 3), name
        assert (record[schema.HEIGHT_KEY], record[schema.WIDTH_KEY]) == size
        if name in expected:
            check_colour(image, expected[name])
    alpha = tf.io.decode_jpeg(records["things/g_alpha.png"][schema.IMAGE_KEY]).numpy()
    check_colour(alpha[:, :14], colour)
    check_colour(alpha[:, 18:], under)
