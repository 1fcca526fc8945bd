"""pipeline.converter.conversion.convert_folder: an image tree in, records out.

The round trip (pixels, labels, the manifest's counts), the summary, the skipped
files on their way to the manifest, the hold-out, TFDS reading the result. What
is refused: test_rules.py; the stored images: test_imaging.py; the shard plan:
test_plan.py; the decoding pool: test_local.py; the swap: test_out_dir.py;
convert.py's command line: test_convert_cli.py.
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from collections import Counter
from pathlib import Path

import pytest
from PIL import PngImagePlugin

from support.images import add_bad_files, check_colour, decode_jpeg, make_image_tree
from support.records import convert, count_records, partial_folders, read_records, shard_files
from pipeline import schema
from pipeline.converter import conversion
from pipeline.converter import plan
from pipeline.converter import sources


SHARD_RE = re.compile(r"^(?P<name>[a-z0-9_]+)-(?P<split>\w+)\.tfrecord-(?P<i>\d{5})-of-(?P<n>\d{5})$")


def _reasons(skipped, root) -> dict[str, str]:
    """{path relative to `root`: reason} of skipped entries."""
    return {os.path.relpath(s.path, root): s.reason for s in skipped}


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
            check_colour(image, source.colour)


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
    assert len(manifest.splits["train"].shards) == plan.DEFAULT_MIN_SHARDS
    assert sorted(listed) == shard_files(records_dir)
    assert summary.num_images == len(split_tree.images)
    assert summary.num_bytes == sum(s.num_bytes for s in manifest.splits.values())
    assert not partial_folders(records_dir.parent)


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
    scan = sources.scan_image_folder(conversion.ConversionConfig(str(tree.root), validation_fraction=0.25, seed=3))
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


# --------------------------------------------------------------------------
# Skipped files: in the summary and the manifest.


def test_bad_files_are_skipped_and_reported(tmp_path):
    tree = make_image_tree(tmp_path / "src", "flat", {"cats": 4, "dogs": 4}, (16, 16))
    reasons = add_bad_files(tree.root / "cats")
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
    add_bad_files(tree.root / "test" / "cats")
    summary = convert(tree.root, tmp_path / "records")
    assert set(summary.manifest.splits) == {"train"}
    assert {s.split for s in summary.skipped} == {"test"}
    assert not [f for f in shard_files(tmp_path / "records") if "-test." in f]


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
            check_colour(example[schema.IMAGE_KEY], source.colour)

    # Resized records declare their fixed shape.
    convert(split_tree.root, tmp_path / "sized", image_size=(18, 22), num_shards=2)
    builder = tfds.builder_from_directory(str(tmp_path / "sized"))
    assert builder.info.features[schema.IMAGE_KEY].shape == (18, 22, 3)
    assert builder.info.splits["validation"].num_examples == 6
    batch = next(iter(tfds.as_numpy(builder.as_dataset(split="train", batch_size=24))))
    assert batch[schema.IMAGE_KEY].shape == (24, 18, 22, 3)
