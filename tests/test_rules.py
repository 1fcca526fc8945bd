"""pipeline.converter.rules (and ConversionConfig's bounds): what a conversion refuses, and that a
refused conversion leaves nothing behind and replaces nothing."""

from __future__ import annotations

import os
import re

import pytest

from support.images import add_bad_files, make_image_tree
from support.records import convert, partial_folders, shard_files
from pipeline import schema
from pipeline.converter import conversion
from pipeline.converter import tfds_metadata


# --------------------------------------------------------------------------
# Bad values and bad files.


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


def test_strict_fails_on_a_bad_file_and_leaves_nothing(tmp_path):
    tree = make_image_tree(tmp_path / "src", "flat", {"cats": 3, "dogs": 3}, (16, 16))
    add_bad_files(tree.root / "dogs")
    out = tmp_path / "out" / "records"
    with pytest.raises(conversion.ConversionError, match=r"--strict: .*dogs.*\.jpg"):
        convert(tree.root, out, strict=True)
    assert not out.exists()
    assert not partial_folders(out.parent)


def test_strict_fails_on_a_scan_skip_before_writing(tmp_path):
    tree = make_image_tree(tmp_path / "src", "flat", {"cats": 2, "dogs": 2}, (16, 16))
    os.symlink("gone.jpg", tree.root / "dogs" / "dangling.jpg")
    out = tmp_path / "records"
    with pytest.raises(conversion.ConversionError, match=r"--strict: .*dangling\.jpg: broken symlink"):
        convert(tree.root, out, strict=True)
    assert not out.exists()


def test_no_decodable_image_is_an_error(tmp_path):
    add_bad_files(tmp_path / "src" / "cats")
    add_bad_files(tmp_path / "src" / "dogs")
    out = tmp_path / "records"
    with pytest.raises(conversion.ConversionError, match="could be converted: 6 skipped, e.g. "):
        convert(tmp_path / "src", out)
    assert not out.exists()
    assert not partial_folders(tmp_path)


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
        add_bad_files(tree.root / "birds")
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
# Where the records go: not into --src, not over files without --overwrite.


def test_an_out_that_is_a_file_is_an_error(split_tree, tmp_path):
    out = tmp_path / "records"
    out.write_text("not a folder")
    with pytest.raises(conversion.ConversionError, match="is a file"):
        convert(split_tree.root, out, overwrite=True)
    assert out.read_text() == "not a folder"
    assert not partial_folders(tmp_path)


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


def test_existing_records_are_refused_then_replaced_with_overwrite(split_tree, tmp_path):
    out = tmp_path / "records"
    other = make_image_tree(tmp_path / "other", "flat", {"x": 3, "y": 3}, (8, 8))
    convert(other.root, out, num_shards=3)
    old = shard_files(out)
    assert old and all(name.startswith("other-") for name in old)
    unrelated = out / "notes.txt"
    unrelated.write_text("kept")

    replaces = r"already holds .*, which a conversion into it replaces: pass --overwrite"
    with pytest.raises(conversion.ConversionError, match=replaces):
        convert(split_tree.root, out)
    assert shard_files(out) == old
    assert schema.read_manifest(str(out)).class_names == ("x", "y")

    summary = convert(split_tree.root, out, overwrite=True, num_shards=2)
    files = shard_files(out)
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
    assert not partial_folders(tmp_path)


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
