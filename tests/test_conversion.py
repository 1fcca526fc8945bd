"""pipeline.converter.conversion.convert_folder and the convert.py command line."""

from __future__ import annotations

import errno
import io
import os
import re
import signal
import socket
import struct
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, PngImagePlugin

from support import processes
from support.cli import cases as cli_cases
from support.images import COLOUR_TOLERANCE, PALETTE, decode_jpeg, make_image_tree, mean_colour, save_image
from support.records import convert, count_records, files, read_records
from pipeline import schema
from pipeline.converter import conversion
from pipeline.converter import decoders
from pipeline.converter import out_dir
from pipeline.converter import sharding
from pipeline.converter import shards
from pipeline.converter import sources
from pipeline.converter import tfds_metadata
from pipeline.converter.commands import CONVERT

SHARD_RE = re.compile(r"^(?P<name>[a-z0-9_]+)-(?P<split>\w+)\.tfrecord-(?P<i>\d{5})-of-(?P<n>\d{5})$")


def _shard_files(records_dir) -> list[str]:
    return sorted(name for name in os.listdir(records_dir) if ".tfrecord-" in name)


def _partial_folders(parent) -> list[str]:
    return [name for name in os.listdir(parent) if "-partial-" in name]


def _check_colour(image: np.ndarray, colour) -> None:
    """Every pixel of a decoded flat image is within tolerance of `colour`."""
    diff = np.abs(image.astype(np.int16) - np.array(colour, np.int16))
    assert diff.max() <= COLOUR_TOLERANCE, (diff.max(), colour, mean_colour(image))


def _reasons(skipped, root) -> dict[str, str]:
    """{path relative to `root`: reason} of skipped entries."""
    return {os.path.relpath(s.path, root): s.reason for s in skipped}


def _add_bad_files(folder: Path) -> dict[str, str]:
    """A zero-byte JPEG, a truncated JPEG and a text file named .jpg.

    Returns: file name -> a word the skip reason must contain.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.jpg").write_bytes(b"")
    noise = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="JPEG", quality=95)
    data = buffer.getvalue()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "notes.jpg").write_text("this is not an image\n")
    return {"empty.jpg": "empty", "truncated.jpg": "decode", "notes.jpg": "not an image"}


# --------------------------------------------------------------------------
# Round trip: folder -> records -> the source pixels and labels.


def test_records_hold_every_source_image_with_its_pixels_and_label(split_tree, split_records):
    records_dir, summary = split_records
    manifest = schema.read_manifest(str(records_dir))
    assert manifest.class_names == ("cats", "dogs")
    for split in ("train", "validation", "test"):
        records = read_records(records_dir, split)
        expected = split_tree.by_relpath(split)
        assert sorted(r[schema.FILENAME_KEY] for r in records) == sorted(expected)
        for record in records:
            source = expected[record[schema.FILENAME_KEY]]
            assert record["class_name"] == source.class_name
            assert record[schema.LABEL_KEY] == manifest.class_names.index(source.class_name)
            assert record[schema.IMAGE_KEY][:2] == b"\xff\xd8"  # a JPEG
            assert (record[schema.HEIGHT_KEY], record[schema.WIDTH_KEY]) == source.size
            # RGB JPEGs kept at their size are stored byte for byte.
            assert record[schema.IMAGE_KEY] == source.path.read_bytes()
            image = decode_jpeg(record[schema.IMAGE_KEY])
            assert image.shape == (*source.size, 3)
            _check_colour(image, source.colour)


def test_manifest_counts_match_the_shards_and_the_sources(split_tree, split_records):
    records_dir, summary = split_records
    manifest = schema.read_manifest(str(records_dir))
    assert manifest.to_json() == summary.manifest.to_json()
    assert manifest.dataset_name == "pets"
    assert manifest.stored_size is None
    assert manifest.source == os.path.abspath(split_tree.root)
    assert manifest.skipped == () and not summary.skipped
    assert set(manifest.splits) == {"train", "validation", "test"}

    listed = []
    for split, info in manifest.splits.items():
        sources_of_split = split_tree.split(split)
        in_files = 0
        for shard in info.shards:
            path = records_dir / shard.filename
            listed.append(shard.filename)
            match = SHARD_RE.match(shard.filename)
            assert match, shard.filename
            assert match["name"] == "pets" and match["split"] == split
            assert int(match["n"]) == len(info.shards)
            assert shard.num_bytes == path.stat().st_size
            actual = count_records(path)
            assert shard.num_examples == actual
            in_files += actual
        assert info.num_examples == in_files == len(sources_of_split)
        assert info.class_counts == dict(Counter(im.class_name for im in sources_of_split))
        # Shards numbered 0..n-1 in manifest order.
        assert [int(SHARD_RE.match(s.filename)["i"]) for s in info.shards] == list(range(len(info.shards)))
    # Shards of 4+ images: DEFAULT_MIN_SHARDS of them.
    assert len(manifest.splits["train"].shards) == sharding.DEFAULT_MIN_SHARDS
    assert sorted(listed) == _shard_files(records_dir)
    assert summary.num_images == len(split_tree.images)
    assert summary.num_bytes == sum(s.num_bytes for s in manifest.splits.values())
    assert not _partial_folders(records_dir.parent)


def test_every_shard_holds_both_classes(split_records):
    records_dir, _ = split_records
    records = read_records(records_dir, "train")
    by_shard: dict[str, set] = {}
    for record in records:
        by_shard.setdefault(record["shard"], set()).add(record["class_name"])
    assert len(by_shard) == sharding.DEFAULT_MIN_SHARDS
    for shard, classes in by_shard.items():
        assert classes == {"cats", "dogs"}, shard


def test_summary_format_reports_splits_and_classes(split_records):
    _, summary = split_records
    text = summary.format()
    assert text.splitlines()[0].startswith("Wrote 34 images to ")
    assert re.search(r"train\s+24 images in 4 shards .*\[cats: 12, dogs: 12\]", text)
    assert re.search(r"validation\s+6 images", text)
    assert re.search(r"skipped\s+0 files", text)


def test_verify_full_decodes_every_image_again(split_tree, tmp_path, monkeypatch):
    asked, verify_records = [], conversion.verify.verify_records

    def recorded(records_dir, decode=False):
        asked.append(decode)
        return verify_records(records_dir, decode=decode)

    monkeypatch.setattr(conversion.verify, "verify_records", recorded)
    records = convert(split_tree.root, tmp_path / "records", num_shards=1)
    full = convert(split_tree.root, tmp_path / "full", num_shards=1, verify="full")
    assert asked == [False, True]
    assert "verified (checksums, counts, labels, sizes) in" in records.format()
    assert "verified (checksums, counts, labels, sizes, images) in" in full.format()
    with pytest.raises(conversion.ConversionError, match="--verify must be records or full, got 'all'"):
        conversion.ConversionConfig(str(split_tree.root), verify="all")


def test_the_last_shards_written_in_pieces_are_the_same_bytes(split_tree, tmp_path, monkeypatch):
    """9 shards for 2 workers: the last goes out as 2 pieces, joined into the same bytes."""
    whole = convert(split_tree.root, tmp_path / "whole", num_shards=3)
    joined, join_pieces = [], shards.join_pieces

    def recorded(folder, filename, pieces):
        joined.append((filename, len(pieces)))
        return join_pieces(folder, filename, pieces)

    monkeypatch.setattr(shards, "join_pieces", recorded)
    monkeypatch.setattr(decoders, "fork_pool", lambda workers: None)  # the pieces, in turn, in this process
    pieces = convert(split_tree.root, tmp_path / "pieces", num_shards=3, workers=2)
    assert joined == [(whole.manifest.splits["test"].shards[-1].filename, 2)]
    assert files(tmp_path / "pieces") == files(tmp_path / "whole")
    assert pieces.manifest == whole.manifest


def test_classes_argument_sets_the_labels(split_tree, tmp_path):
    summary = convert(split_tree.root, tmp_path / "records", classes=["dogs", "cats"], num_shards=1)
    assert summary.manifest.class_names == ("dogs", "cats")
    assert schema.read_manifest(str(tmp_path / "records")).class_names == ("dogs", "cats")
    for split in ("train", "test"):
        for record in read_records(tmp_path / "records", split):
            expected = {"dogs": 0, "cats": 1}[record["class_name"]]
            assert record[schema.LABEL_KEY] == expected
    assert summary.manifest.splits["train"].class_counts == {"dogs": 12, "cats": 12}


def test_flat_layout_converts_to_train_with_deterministic_validation(tmp_path):
    tree = make_image_tree(tmp_path / "flat_pets", "flat", {"cats": 8, "dogs": 6}, (16, 16))
    first = convert(tree.root, tmp_path / "a", validation_fraction=0.25, seed=3)
    again = convert(tree.root, tmp_path / "b", validation_fraction=0.25, seed=3)
    plain = convert(tree.root, tmp_path / "c")

    assert set(plain.manifest.splits) == {"train"}
    assert plain.manifest.splits["train"].num_examples == 14

    assert set(first.manifest.splits) == {"train", "validation"}
    assert first.manifest.splits["validation"].class_counts == {"cats": 2, "dogs": 2}
    assert first.manifest.splits["train"].class_counts == {"cats": 6, "dogs": 4}
    held_a = sorted(r[schema.FILENAME_KEY] for r in read_records(tmp_path / "a", "validation"))
    held_b = sorted(r[schema.FILENAME_KEY] for r in read_records(tmp_path / "b", "validation"))
    train_a = sorted(r[schema.FILENAME_KEY] for r in read_records(tmp_path / "a", "train"))
    assert held_a == held_b
    assert not set(held_a) & set(train_a)
    assert sorted(held_a + train_a) == sorted(im.relpath for im in tree.images)
    # The records hold the same files the scan holds out.
    scan = sources.scan_image_folder(str(tree.root), validation_fraction=0.25, seed=3)
    assert held_a == sorted(im.relpath for im in scan.splits["validation"])
    # The manifests agree too, shard for shard (same seed, same shuffle).
    assert first.manifest.splits["train"].shards == again.manifest.splits["train"].shards


@pytest.mark.parametrize("fraction", [0.1, 0.6])
def test_hold_out_that_empties_a_split_does_not_crash(tmp_path, fraction):
    """One image per class: the hold-out takes none (0.1) or all (0.6) of them.

    An empty split must not reach the shard writer: the conversion should
    succeed with the non-empty split only, as splits without files are dropped
    elsewhere.
    """
    tree = make_image_tree(tmp_path / "tiny", "flat", {"cats": 1, "dogs": 1}, (8, 8))
    summary = convert(tree.root, tmp_path / "records", validation_fraction=fraction)
    splits = summary.manifest.splits
    assert all(info.num_examples > 0 for info in splits.values())
    assert sum(info.num_examples for info in splits.values()) == 2


def test_explicit_num_shards_and_cap_at_the_image_count(split_tree, tmp_path):
    summary = convert(split_tree.root, tmp_path / "records", num_shards=3)
    assert len(summary.manifest.splits["train"].shards) == 3
    assert len(summary.manifest.splits["test"].shards) == 3
    summary = convert(split_tree.root, tmp_path / "more", num_shards=50)
    # No empty shard: at most one per image.
    assert len(summary.manifest.splits["test"].shards) == 4
    assert all(s.num_examples == 1 for s in summary.manifest.splits["test"].shards)
    assert _shard_files(tmp_path / "more") == sorted(
        s.filename for info in summary.manifest.splits.values() for s in info.shards
    )


def test_shard_mb_sets_the_number_of_shards(split_tree, tmp_path):
    train_bytes = sum(im.path.stat().st_size for im in split_tree.split("train"))
    summary = convert(split_tree.root, tmp_path / "records", shard_mb=train_bytes / 10 / 2**20)
    assert len(summary.manifest.splits["train"].shards) >= 10
    assert summary.manifest.splits["train"].num_examples == 24


# --------------------------------------------------------------------------
# Stored size.


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
            _check_colour(image, expected[record[schema.FILENAME_KEY]].colour)


# --------------------------------------------------------------------------
# Other formats, bad files.


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
            _check_colour(image, expected[name])
    alpha = tf.io.decode_jpeg(records["things/g_alpha.png"][schema.IMAGE_KEY]).numpy()
    _check_colour(alpha[:, :14], colour)
    _check_colour(alpha[:, 18:], under)


def test_bad_files_are_skipped_and_reported(tmp_path):
    tree = make_image_tree(tmp_path / "src", "flat", {"cats": 4, "dogs": 4}, (16, 16))
    reasons = _add_bad_files(tree.root / "cats")
    summary = convert(tree.root, tmp_path / "records")

    skipped = {Path(s.path).name: s for s in summary.skipped}
    assert sorted(skipped) == sorted(reasons)
    for name, word in reasons.items():
        entry = skipped[name]
        assert entry.split == "train"
        assert word in entry.reason, entry
        assert entry.path == os.path.abspath(tree.root / "cats" / name)
    manifest = schema.read_manifest(str(tmp_path / "records"))
    assert manifest.skipped == summary.skipped  # as on disk
    info = manifest.splits["train"]
    assert info.num_examples == 8
    assert sum(count_records(tmp_path / "records" / s.filename) for s in info.shards) == 8
    assert info.class_counts == {"cats": 4, "dogs": 4}
    text = summary.format()
    assert re.search(r"skipped\s+3 files", text)
    for entry in summary.skipped:
        assert f"{entry.path}: {entry.reason}" in text


def test_a_split_with_only_bad_files_is_left_out(tmp_path):
    counts = {"train": {"cats": 2, "dogs": 2}}
    tree = make_image_tree(tmp_path / "src", "split", counts, (16, 16))
    _add_bad_files(tree.root / "test" / "cats")
    summary = convert(tree.root, tmp_path / "records")
    assert set(summary.manifest.splits) == {"train"}
    assert {s.split for s in summary.skipped} == {"test"}
    assert not [f for f in _shard_files(tmp_path / "records") if "-test." in f]


def test_strict_fails_on_a_bad_file_and_leaves_nothing(tmp_path):
    tree = make_image_tree(tmp_path / "src", "flat", {"cats": 3, "dogs": 3}, (16, 16))
    _add_bad_files(tree.root / "dogs")
    out = tmp_path / "out" / "records"
    with pytest.raises(conversion.ConversionError, match=r"--strict: .*dogs.*\.jpg"):
        convert(tree.root, out, strict=True)
    assert not out.exists()
    assert not _partial_folders(out.parent)


def test_no_decodable_image_is_an_error(tmp_path):
    _add_bad_files(tmp_path / "src" / "cats")
    _add_bad_files(tmp_path / "src" / "dogs")
    out = tmp_path / "records"
    with pytest.raises(conversion.ConversionError, match="could be converted: 6 skipped, e.g. "):
        convert(tmp_path / "src", out)
    assert not out.exists()
    assert not _partial_folders(tmp_path)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_shards": 0}, "num_shards"),
        ({"image_size": (0, 8)}, "image_size"),
        ({"shard_mb": 0}, "shard_mb"),
        ({"workers": -1}, "workers"),
        ({"max_file_mb": 0}, "max_file_mb"),
        ({"max_pixels": 0}, "max_pixels"),
    ],
)
def test_bad_arguments_are_errors(split_tree, tmp_path, kwargs, match):
    with pytest.raises(conversion.ConversionError, match=match):
        convert(split_tree.root, tmp_path / "records", **kwargs)
    assert not (tmp_path / "records").exists()


def test_an_out_that_is_a_file_is_an_error(split_tree, tmp_path):
    out = tmp_path / "records"
    out.write_text("not a folder")
    with pytest.raises(conversion.ConversionError, match="is a file"):
        convert(split_tree.root, out, overwrite=True)
    assert out.read_text() == "not a folder"
    assert not _partial_folders(tmp_path)


def write_huge_png(path: Path, width: int = 12000, height: int = 12000) -> None:
    """A valid black PNG of width x height 1-bit pixels, a few KB on disk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = (b"\0" + bytes((width + 7) // 8)) * height  # filter byte + row
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 9))
        + chunk(b"IEND", b"")
    )


def test_scan_and_decode_skips_reach_the_summary_and_manifest(tmp_path, monkeypatch):
    tree = make_image_tree(tmp_path / "src", "flat", {"cats": 3, "dogs": 3}, [(16, 16), (16, 24)])
    outside = make_image_tree(tmp_path / "elsewhere", "flat", {"birds": 1}, (16, 16))
    cats, dogs = tree.root / "cats", tree.root / "dogs"
    os.symlink(".", cats / "loop")  # 3 images became 123 records
    os.symlink("gone.jpg", cats / "dangling.jpg")  # crashed the run
    os.symlink(outside.images[0].path, cats / "bird.jpg")  # was followed without a word
    write_huge_png(dogs / "huge.png")
    (dogs / "notes.jpg").write_text("not an image")

    decoded_sizes = []
    load = PngImagePlugin.PngImageFile.load

    def recording_load(image):  # the pixel limit must act before any decode
        decoded_sizes.append(image.size)
        return load(image)

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", recording_load)
    summary = convert(tree.root, tmp_path / "records", num_shards=1)
    assert (12000, 12000) not in decoded_sizes

    assert summary.manifest.splits["train"].class_counts == {"cats": 3, "dogs": 3}
    assert count_records(tmp_path / "records" / summary.manifest.splits["train"].shards[0].filename) == 6
    reasons = _reasons(summary.skipped, tree.root)
    assert reasons == {
        "cats/loop": "symlink loop",
        "cats/dangling.jpg": "broken symlink",
        "cats/bird.jpg": "symlink leads outside --src",
        "dogs/huge.png": "12000x12000 pixels, over --max_pixels=100000000",
        "dogs/notes.jpg": "not an image",
    }
    assert {s.split for s in summary.skipped} == {"train"}
    on_disk = schema.read_manifest(str(tmp_path / "records")).skipped
    assert on_disk == summary.skipped
    assert re.search(r"skipped\s+5 files", summary.format())

    # The limits and the link policy are arguments.
    summary = convert(tree.root, tmp_path / "followed", follow_external_links=True, max_pixels=300)
    reasons = _reasons(summary.skipped, tree.root)
    assert "cats/bird.jpg" not in reasons
    too_large = [name for name, reason in reasons.items() if reason == "24x16 pixels, over --max_pixels=300"]
    assert sorted(too_large) == ["cats/cats.001.jpg", "dogs/dogs.000.jpg", "dogs/dogs.002.jpg"]
    assert summary.manifest.splits["train"].class_counts == {"cats": 3, "dogs": 1}  # with bird.jpg


def test_strict_fails_on_a_scan_skip_before_writing(tmp_path):
    tree = make_image_tree(tmp_path / "src", "flat", {"cats": 2, "dogs": 2}, (16, 16))
    os.symlink("gone.jpg", tree.root / "dogs" / "dangling.jpg")
    out = tmp_path / "records"
    with pytest.raises(conversion.ConversionError, match=r"--strict: .*dangling\.jpg: broken symlink"):
        convert(tree.root, out, strict=True)
    assert not out.exists()


# --------------------------------------------------------------------------
# Classes: at least two, each with images.


def test_an_empty_class_folder_is_an_error_naming_it(tmp_path):
    tree = make_image_tree(tmp_path / "src", "flat", {"cats": 2, "dogs": 2}, (16, 16))
    (tree.root / "birds").mkdir()
    out = tmp_path / "records"
    match = r"class birds has no image in train.*--classes=cats,dogs"
    with pytest.raises(conversion.ConversionError, match=match):
        convert(tree.root, out)
    assert not out.exists()


@pytest.mark.parametrize("when", ["decoding", "scanning"])
def test_a_class_whose_every_file_is_skipped_is_an_error(split_tree, tmp_path, when):
    tree = make_image_tree(tmp_path / "src", "flat", {"cats": 2, "dogs": 2}, (16, 16))
    if when == "decoding":
        _add_bad_files(tree.root / "birds")
    else:
        (tree.root / "birds").mkdir()
        os.symlink("gone.jpg", tree.root / "birds" / "dangling.jpg")
    out = tmp_path / "records"
    convert(split_tree.root, out)
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    with pytest.raises(conversion.ConversionError, match=r"class birds has no image in train"):
        convert(tree.root, out, overwrite=True)
    # Checked before anything is moved: the earlier records are whole.
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before


def test_the_train_split_is_what_each_class_needs_images_in(tmp_path):
    counts = {"train": {"cats": 2}, "validation": {"cats": 1, "dogs": 1}}
    tree = make_image_tree(tmp_path / "src", "split", counts, (16, 16))
    with pytest.raises(conversion.ConversionError, match=r"class dogs has no image in train .*--classes=cats$"):
        convert(tree.root, tmp_path / "records")
    # Without a train split, any split will do; a class in none is an error.
    counts = {"validation": {"cats": 1, "dogs": 1}, "test": {"cats": 1}}
    tree = make_image_tree(tmp_path / "eval_only", "split", counts, (16, 16))
    assert set(convert(tree.root, tmp_path / "eval").manifest.splits) == {"validation", "test"}
    (tree.root / "test" / "birds").mkdir()
    with pytest.raises(conversion.ConversionError, match=r"class birds has no image in any split"):
        convert(tree.root, tmp_path / "eval2")


def test_a_single_class_is_refused(split_tree, tmp_path):
    tree = make_image_tree(tmp_path / "src", "flat", {"cats": 3}, (16, 16))
    with pytest.raises(conversion.ConversionError, match=r"only one class, cats: .*two or more class folders"):
        convert(tree.root, tmp_path / "records")
    with pytest.raises(conversion.ConversionError, match=r"only one class, dogs: .*--classes names one"):
        convert(split_tree.root, tmp_path / "records", classes=["dogs"])
    assert not (tmp_path / "records").exists()


# --------------------------------------------------------------------------
# Where the records go.


@pytest.mark.parametrize("where", ["src itself", "inside src", "inside src through a link"])
def test_out_in_src_is_refused(tmp_path, where):
    tree = make_image_tree(tmp_path / "src", "flat", {"cats": 2, "dogs": 2}, (16, 16))
    os.symlink(tree.root, tmp_path / "link")
    out = {
        "src itself": tree.root,
        "inside src": tree.root / "records",
        "inside src through a link": tmp_path / "link" / "cats" / "records",
    }[where]
    match = "is --src itself" if where == "src itself" else "is inside --src"
    with pytest.raises(conversion.ConversionError, match=match):
        convert(tree.root, out, overwrite=True)
    assert sorted(p.name for p in tree.root.iterdir()) == ["cats", "dogs"]
    assert not (tree.root / "cats" / "records").exists()


@pytest.mark.parametrize("name", tfds_metadata.FILES)
def test_user_files_named_like_tfds_metadata_need_overwrite(split_tree, tmp_path, name):
    out = tmp_path / "records"
    out.mkdir()
    (out / name).write_text("the user's own")
    with pytest.raises(conversion.ConversionError, match=rf"{re.escape(name)}.*--overwrite"):
        convert(split_tree.root, out)
    assert (out / name).read_text() == "the user's own"
    assert os.listdir(out) == [name]
    convert(split_tree.root, out, overwrite=True)
    assert (out / name).read_text() != "the user's own"


# --------------------------------------------------------------------------
# Existing records.


def test_existing_records_are_refused_then_replaced_with_overwrite(split_tree, tmp_path):
    out = tmp_path / "records"
    other = make_image_tree(tmp_path / "other", "flat", {"x": 3, "y": 3}, (8, 8))
    convert(other.root, out, num_shards=3)
    old = _shard_files(out)
    assert old and all(name.startswith("other-") for name in old)
    unrelated = out / "notes.txt"
    unrelated.write_text("kept")

    replaces = r"already holds .*, which a conversion into it replaces: pass --overwrite"
    with pytest.raises(conversion.ConversionError, match=replaces):
        convert(split_tree.root, out)
    assert _shard_files(out) == old
    assert schema.read_manifest(str(out)).class_names == ("x", "y")

    summary = convert(split_tree.root, out, overwrite=True, num_shards=2)
    files = _shard_files(out)
    assert files == sorted(
        s.filename for info in summary.manifest.splits.values() for s in info.shards
    )
    assert not [f for f in files if f.startswith("other-")]
    assert len(files) == 6  # 3 splits x 2 shards
    manifest = schema.read_manifest(str(out))
    assert manifest.class_names == ("cats", "dogs")
    assert manifest.splits["train"].num_examples == 24
    assert (out / "label.labels.txt").read_text().split() == ["cats", "dogs"]
    assert unrelated.read_text() == "kept"
    assert not _partial_folders(tmp_path)


def test_a_manifest_alone_counts_as_existing_records(split_tree, tmp_path):
    out = tmp_path / "records"
    out.mkdir()
    (out / schema.MANIFEST_FILENAME).write_text("{}")
    with pytest.raises(conversion.ConversionError, match="overwrite"):
        convert(split_tree.root, out)
    # A folder with other files only is not refused.
    other = tmp_path / "other"
    other.mkdir()
    (other / "readme.txt").write_text("hello")
    convert(split_tree.root, other)
    assert schema.read_manifest(str(other)).splits["train"].num_examples == 24


def test_stale_scratch_folders_are_removed_and_live_ones_kept(split_tree, tmp_path, capsys):
    out = tmp_path / "records"
    convert(split_tree.root, out, num_shards=1)
    host = socket.gethostname()
    stale = [
        f"{out_dir.SCRATCH_PREFIX}{host}-{processes.dead_pid()}-k1ll3d",
        f"{out_dir.SCRATCH_PREFIX}{host}-{os.getpid()}-0ld",  # ours, from a dead run before us
    ]
    kept = [
        f"{out_dir.SCRATCH_PREFIX}{host}-{os.getppid()}-running",  # a live process
        f"{out_dir.SCRATCH_PREFIX}another-host-1-remote",  # a shared disk: not ours to judge
        f"{out_dir.SCRATCH_PREFIX}nopid",
    ]
    for name in stale + kept:
        (out / name).mkdir()
        (out / name / "cats-train.tfrecord-00000-of-00001").write_bytes(b"half")
    capsys.readouterr()

    convert(split_tree.root, out, overwrite=True, num_shards=2)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"removed 2 scratch folder(s) that interrupted conversions left in {out}")
    assert all(name in lines[0] for name in stale)
    assert sorted(_partial_folders(out)) == sorted(kept)
    assert schema.read_manifest(str(out)).splits["train"].num_examples == 24


def test_a_refused_conversion_leaves_stale_scratch_alone(split_tree, tmp_path):
    out = tmp_path / "records"
    convert(split_tree.root, out, num_shards=1)
    name = f"{out_dir.SCRATCH_PREFIX}{socket.gethostname()}-{processes.dead_pid()}-k1ll3d"
    (out / name).mkdir()
    with pytest.raises(conversion.ConversionError, match="overwrite"):
        convert(split_tree.root, out)
    assert _partial_folders(out) == [name]


def test_the_records_are_renamed_from_a_scratch_folder_inside_out(split_tree, tmp_path, monkeypatch):
    """An --out on another filesystem than the temp folder works: every move stays inside it."""
    out = tmp_path / "records"
    convert(split_tree.root, out, num_shards=1)
    moves = []
    replace = os.replace

    def same_filesystem_only(src, dst):
        if os.path.dirname(src) == os.path.dirname(dst):  # a file written whole, then renamed
            return replace(src, dst)
        moves.append((os.path.dirname(os.path.dirname(src)), os.path.dirname(dst)))
        if moves[-1] != (str(out), str(out)):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return replace(src, dst)

    monkeypatch.setattr(os, "replace", same_filesystem_only)
    monkeypatch.setattr(os, "rename", same_filesystem_only)
    summary = convert(split_tree.root, out, overwrite=True, num_shards=2, data_report=True)
    assert len(moves) == len(os.listdir(out)) == 6 + 1 + len(tfds_metadata.FILES) + 1  # + data_report.png
    assert _shard_files(out) == sorted(
        s.filename for info in summary.manifest.splits.values() for s in info.shards
    )


def test_ctrl_c_during_the_move_comes_after_the_whole_new_set(split_tree, tmp_path, monkeypatch):
    out = tmp_path / "records"
    convert(split_tree.root, out, num_shards=1)
    replace, interrupts = os.replace, []

    def interrupting_replace(src, dst):
        if not interrupts and os.path.dirname(src) != os.path.dirname(dst):  # Ctrl-C as the first file is moved in
            interrupts.append(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
        return replace(src, dst)

    monkeypatch.setattr(os, "replace", interrupting_replace)
    # Python's own Ctrl-C handler, even where pytest runs as a background job (SIGINT ignored).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    with pytest.raises(KeyboardInterrupt):
        try:
            convert(split_tree.root, out, overwrite=True, num_shards=2)
        finally:
            signal.signal(signal.SIGINT, previous)
    manifest = schema.read_manifest(str(out))
    assert _shard_files(out) == sorted(s.filename for info in manifest.splits.values() for s in info.shards)
    assert len(_shard_files(out)) == 6
    assert not _partial_folders(out)


# --------------------------------------------------------------------------
# The decoding pool.


def _square(x: int) -> int:
    return x * x


def test_the_decoding_pool_holds_a_bounded_number_of_images():
    """Pool.imap took every image at once and kept every result not yet written."""
    taken = []

    def images():
        for i in range(300):
            taken.append(i)
            yield i

    bound = (2 * decoders.CHUNKS_PER_WORKER + 1) * decoders.CHUNK
    with decoders.fork_pool(2) as pool:
        for written, result in enumerate(decoders.bounded_imap(pool, _square, 2, images())):
            assert result == written * written  # in order
            assert len(taken) - written <= bound, (len(taken), written)
    assert len(taken) == 300


def test_the_pool_and_one_process_write_the_same_shards(split_tree, split_records, tmp_path):
    records_dir, _ = split_records
    convert(split_tree.root, tmp_path / "pooled", workers=3)
    assert {name: (records_dir / name).read_bytes() for name in _shard_files(records_dir)} == {
        name: (tmp_path / "pooled" / name).read_bytes() for name in _shard_files(tmp_path / "pooled")
    }


# --------------------------------------------------------------------------
# TFDS.


def test_records_load_with_tfds_builder_from_directory(split_tree, split_records, tmp_path):
    import tensorflow_datasets as tfds

    records_dir, summary = split_records
    builder = tfds.builder_from_directory(str(records_dir))
    assert builder.info.features[schema.LABEL_KEY].names == ["cats", "dogs"]
    assert builder.info.features[schema.IMAGE_KEY].shape == (None, None, 3)
    for split in ("train", "validation", "test"):
        expected = split_tree.by_relpath(split)
        assert builder.info.splits[split].num_examples == len(expected)
        examples = list(tfds.as_numpy(builder.as_dataset(split=split)))
        assert len(examples) == len(expected)
        for example in examples:
            source = expected[example[schema.FILENAME_KEY].decode()]
            assert example[schema.IMAGE_KEY].shape == (*source.size, 3)
            assert example[schema.LABEL_KEY] == ["cats", "dogs"].index(source.class_name)
            _check_colour(example[schema.IMAGE_KEY], source.colour)

    # Resized records declare their fixed shape.
    convert(split_tree.root, tmp_path / "sized", image_size=(18, 22), num_shards=2)
    builder = tfds.builder_from_directory(str(tmp_path / "sized"))
    assert builder.info.features[schema.IMAGE_KEY].shape == (18, 22, 3)
    assert builder.info.splits["validation"].num_examples == 6
    batch = next(iter(tfds.as_numpy(builder.as_dataset(split="train", batch_size=24))))
    assert batch[schema.IMAGE_KEY].shape == (24, 18, 22, 3)


# --------------------------------------------------------------------------
# The command line, run as `python convert.py` from the repository root.
# All invocations start together (each pays TensorFlow's import time).


def _cli_cases(root: Path) -> dict[str, tuple[list[str], Path | None]]:
    good = make_image_tree(root / "good_src", "split", {"train": {"cats": 3, "dogs": 3}}, (16, 16)).root
    empty = root / "empty_src"
    empty.mkdir()
    (empty / "readme.txt").write_text("no class folders here")
    no_images = root / "no_images_src"
    (no_images / "cats").mkdir(parents=True)
    (no_images / "dogs").mkdir()
    bad = make_image_tree(root / "bad_src", "flat", {"cats": 2, "dogs": 2}, (16, 16)).root
    _add_bad_files(bad / "cats")
    existing = root / "existing"
    convert(good, existing, num_shards=1)

    def out(name):
        return root / "outs" / name

    return {
        "missing_src": ([f"--out={out('missing_src')}"], out("missing_src")),
        "no_class_folders": ([f"--src={empty}", f"--out={out('no_class_folders')}"], out("no_class_folders")),
        "no_images": ([f"--src={no_images}", f"--out={out('no_images')}"], out("no_images")),
        "bad_class": (
            [f"--src={good}", "--classes=cats,horses", f"--out={out('bad_class')}"],
            out("bad_class"),
        ),
        "existing": ([f"--src={good}", f"--out={existing}"], None),
        "strict": ([f"--src={bad}", "--strict", "--workers=1", f"--out={out('strict')}"], out("strict")),
        # Two workers: the decoding pool.
        "ok": (
            [f"--src={good}", "--classes=dogs,cats", "--image_size=20", "--workers=2", f"--out={out('ok')}"],
            out("ok"),
        ),
        # Bad files skipped, flags passed through, earlier records replaced. (Seed 0 deals the truncated
        # JPEG, whose header reads, to validation: in train it would leave cats none, as a user would see.)
        "ok_flat": (
            [
                f"--src={bad}", "--validation_fraction=0.5", "--seed=0", "--num_shards=2",
                "--workers=1", "--overwrite", f"--out={root / 'existing2'}",
            ],
            root / "existing2",
        ),
    }


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """name -> (returncode, stdout, stderr, out folder, src-tree root)."""
    root = tmp_path_factory.mktemp("cli")
    cases = _cli_cases(root)
    convert(root / "good_src", root / "existing2", num_shards=1)
    runs = cli_cases(CONVERT, {name: args for name, (args, _) in cases.items()})
    results = {}
    for name, done in runs.items():
        results[name] = (done.returncode, done.stdout, done.stderr, cases[name][1], root)
    return results


def _error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("convert.py: error:")]
    assert len(errors) == 1, stderr
    assert lines[-1] == errors[0], stderr
    assert "Traceback" not in stderr, stderr
    return errors[0]


@pytest.mark.parametrize(
    "case, match",
    [
        ("missing_src", "--src is required"),
        ("no_class_folders", "no class folders"),
        ("no_images", "no files"),
        ("bad_class", "horses"),
        ("existing", "--overwrite"),
        ("strict", r"--strict: .*cats.*\.jpg"),
    ],
)
def test_cli_errors_are_one_line_with_nonzero_exit(cli, case, match):
    returncode, stdout, stderr, out, root = cli[case]
    assert returncode != 0
    assert re.search(match, _error_line(stderr)), stderr
    assert "Wrote" not in stdout
    if out is not None:
        assert not out.exists()
        if out.parent.exists():
            assert not _partial_folders(out.parent)
    assert not _partial_folders(root)


def test_cli_existing_output_is_untouched(cli):
    *_, root = cli["existing"]
    manifest = schema.read_manifest(str(root / "existing"))
    assert manifest.splits["train"].num_examples == 6
    assert len(_shard_files(root / "existing")) == 1


def test_cli_classes_and_image_size(cli, tmp_path):
    returncode, stdout, stderr, out, root = cli["ok"]
    assert returncode == 0, stderr
    assert stdout.startswith("Wrote 6 images to ")
    manifest = schema.read_manifest(str(out))
    assert manifest.class_names == ("dogs", "cats")
    assert manifest.stored_size == (20, 20)
    records = read_records(out, "train")
    assert len(records) == 6
    for record in records:
        assert record[schema.LABEL_KEY] == {"dogs": 0, "cats": 1}[record["class_name"]]
        assert (record[schema.HEIGHT_KEY], record[schema.WIDTH_KEY]) == (20, 20)
        assert decode_jpeg(record[schema.IMAGE_KEY]).shape == (20, 20, 3)
    assert not _partial_folders(out.parent)
    # The decoding pool (--workers=2) writes what one process writes.
    convert(root / "good_src", tmp_path / "serial", classes=["dogs", "cats"], image_size=(20, 20))
    serial = read_records(tmp_path / "serial", "train")
    assert [(r["shard"], r[schema.FILENAME_KEY], r[schema.IMAGE_KEY]) for r in records] == [
        (r["shard"], r[schema.FILENAME_KEY], r[schema.IMAGE_KEY]) for r in serial
    ]


def test_cli_skips_bad_files_passes_flags_and_overwrites(cli, tmp_path):
    returncode, stdout, stderr, out, root = cli["ok_flat"]
    assert returncode == 0, stderr
    assert re.search(r"skipped\s+3 files", stdout)
    for name in ("empty.jpg", "truncated.jpg", "notes.jpg"):
        assert re.search(rf"{name}: \S", stdout), stdout
    manifest = schema.read_manifest(str(out))
    assert len(manifest.skipped) == 3
    assert manifest.class_names == ("cats", "dogs")
    # The earlier records (of good_src) are gone.
    assert _shard_files(out) == sorted(
        s.filename for info in manifest.splits.values() for s in info.shards
    )
    assert all(name.startswith("bad_src-") for name in _shard_files(out))
    # Same records as the library with the same arguments.
    library = convert(
        root / "bad_src", tmp_path / "records", validation_fraction=0.5, seed=0, num_shards=2
    )
    assert manifest.to_json()["splits"] == library.manifest.to_json()["splits"]
    assert set(manifest.splits) == {"train", "validation"}
    assert sum(info.num_examples for info in manifest.splits.values()) == 4
    for split in ("train", "validation"):
        assert [r[schema.FILENAME_KEY] for r in read_records(out, split)] == [
            r[schema.FILENAME_KEY] for r in read_records(tmp_path / "records", split)
        ]
