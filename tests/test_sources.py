"""pipeline.sources: finding the images of a class-folder tree."""

from __future__ import annotations

import os
from collections import Counter

import pytest

from conftest import make_image_tree
from pipeline import sources


@pytest.fixture(scope="module")
def flat_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("flat") / "animals"
    return make_image_tree(root, "flat", {"cats": 10, "dogs": 7, "birds": 4}, (8, 8))


def _relpaths(images):
    return sorted(im.relpath for im in images)


def test_split_layout_lists_every_file_with_sorted_labels(split_tree):
    scan = sources.scan_image_folder(str(split_tree.root))
    assert scan.class_names == ("cats", "dogs")
    assert set(scan.splits) == {"train", "validation", "test"}
    assert scan.num_files == len(split_tree.images)
    for split, files in scan.splits.items():
        assert _relpaths(files) == sorted(im.relpath for im in split_tree.split(split))
        for image in files:
            assert os.path.isabs(image.path)
            assert os.path.isfile(image.path)
            assert image.relpath.startswith(image.class_name + os.sep)
            assert image.label == scan.class_names.index(image.class_name)


def test_classes_argument_sets_the_label_order(split_tree):
    scan = sources.scan_image_folder(str(split_tree.root), classes=["dogs", "cats"])
    assert scan.class_names == ("dogs", "cats")
    labels = {(im.class_name, im.label) for files in scan.splits.values() for im in files}
    assert labels == {("dogs", 0), ("cats", 1)}


def test_classes_subset_lists_only_those_classes(split_tree):
    scan = sources.scan_image_folder(str(split_tree.root), classes=["dogs"])
    assert scan.class_names == ("dogs",)
    for files in scan.splits.values():
        assert {im.class_name for im in files} == {"dogs"}
        assert {im.label for im in files} == {0}


def test_class_without_folder_is_an_error(split_tree):
    with pytest.raises(sources.SourceError, match="horses"):
        sources.scan_image_folder(str(split_tree.root), classes=["cats", "horses"])


def test_repeated_class_is_an_error(split_tree):
    with pytest.raises(sources.SourceError, match="repeats"):
        sources.scan_image_folder(str(split_tree.root), classes=["cats", "cats"])


def test_flat_layout_goes_to_train(flat_tree):
    scan = sources.scan_image_folder(str(flat_tree.root))
    assert scan.class_names == ("birds", "cats", "dogs")
    assert list(scan.splits) == ["train"]
    assert _relpaths(scan.splits["train"]) == sorted(im.relpath for im in flat_tree.images)


def test_flat_layout_hold_out_is_per_class_and_deterministic(flat_tree):
    fraction = 0.3
    first = sources.scan_image_folder(str(flat_tree.root), validation_fraction=fraction, seed=7)
    again = sources.scan_image_folder(str(flat_tree.root), validation_fraction=fraction, seed=7)
    other = sources.scan_image_folder(str(flat_tree.root), validation_fraction=fraction, seed=8)

    assert set(first.splits) == {"train", "validation"}
    train, held = first.splits["train"], first.splits["validation"]
    # Same seed: the very same files, in the same order.
    assert [im.relpath for im in again.splits["validation"]] == [im.relpath for im in held]
    assert [im.relpath for im in again.splits["train"]] == [im.relpath for im in train]
    # Kept + held out = everything, without overlap.
    assert not set(_relpaths(train)) & set(_relpaths(held))
    assert sorted(_relpaths(train) + _relpaths(held)) == sorted(im.relpath for im in flat_tree.images)
    # Per class: round(fraction * count) held out.
    totals = Counter(im.class_name for im in flat_tree.images)
    held_counts = Counter(im.class_name for im in held)
    assert held_counts == {name: round(fraction * n) for name, n in totals.items()}
    # A different seed holds out the same number per class but other files.
    assert Counter(im.class_name for im in other.splits["validation"]) == held_counts
    assert _relpaths(other.splits["validation"]) != _relpaths(held)


def test_hold_out_takes_at_least_one_and_leaves_at_least_one(tmp_path):
    tree = make_image_tree(tmp_path / "src", "flat", {"a": 2, "b": 1, "c": 5}, (8, 8))
    scan = sources.scan_image_folder(str(tree.root), validation_fraction=0.01)
    held = Counter(im.class_name for im in scan.splits["validation"])
    kept = Counter(im.class_name for im in scan.splits["train"])
    # a: 2 files -> 1 held out; b: a single file stays in train; c: 1 of 5.
    assert held == {"a": 1, "c": 1}
    assert kept == {"a": 1, "b": 1, "c": 4}
    scan = sources.scan_image_folder(str(tree.root), validation_fraction=0.99)
    kept = Counter(im.class_name for im in scan.splits["train"])
    assert kept["a"] == 1 and kept["c"] == 1


@pytest.mark.parametrize("fraction", [0.1, 0.6])
def test_hold_out_never_yields_an_empty_split(tmp_path, fraction):
    """One file per class: the hold-out takes none (0.1) or all (0.6).

    scan_image_folder drops splits without files (a FolderScan never lists an
    empty split otherwise), so an empty split after the hold-out must go too.
    """
    tree = make_image_tree(tmp_path / "src", "flat", {"cats": 1, "dogs": 1}, (8, 8))
    scan = sources.scan_image_folder(str(tree.root), validation_fraction=fraction)
    assert {name: len(files) for name, files in scan.splits.items() if not files} == {}
    assert scan.num_files == 2


def test_validation_fraction_is_ignored_with_split_folders(split_tree):
    plain = sources.scan_image_folder(str(split_tree.root))
    held = sources.scan_image_folder(str(split_tree.root), validation_fraction=0.5)
    for split in plain.splits:
        assert _relpaths(held.splits[split]) == _relpaths(plain.splits[split])


def test_hidden_entries_are_ignored_and_subfolders_are_walked(tmp_path):
    tree = make_image_tree(tmp_path / "src", "flat", {"cats": 2, "dogs": 1}, (8, 8))
    (tree.root / "cats" / ".DS_Store").write_bytes(b"junk")
    (tree.root / ".cache").mkdir()
    (tree.root / ".cache" / "x.jpg").write_bytes(b"junk")
    nested = tree.root / "dogs" / "more" / "dog.x.jpg"
    nested.parent.mkdir()
    nested.write_bytes(tree.images[0].path.read_bytes())
    (tree.root / "dogs" / ".hidden").mkdir()
    (tree.root / "dogs" / ".hidden" / "dog.y.jpg").write_bytes(b"junk")

    scan = sources.scan_image_folder(str(tree.root))
    assert scan.class_names == ("cats", "dogs")
    assert _relpaths(scan.splits["train"]) == sorted(
        [im.relpath for im in tree.images] + [os.path.join("dogs", "more", "dog.x.jpg")]
    )


def test_class_missing_from_one_split_keeps_global_labels(tmp_path):
    counts = {"train": {"cats": 1, "dogs": 1}, "test": {"dogs": 2}}
    tree = make_image_tree(tmp_path / "src", "split", counts, (8, 8))
    scan = sources.scan_image_folder(str(tree.root))
    assert scan.class_names == ("cats", "dogs")
    assert {im.label for im in scan.splits["test"]} == {1}


@pytest.mark.parametrize(
    "setup, match",
    [
        ("none", "required"),
        ("missing", "not a folder"),
        ("no_class_folders", "no class folders"),
        ("empty_class_folders", "no files"),
        ("empty_split_folders", "no class folders"),
    ],
)
def test_unusable_sources_raise(tmp_path, setup, match):
    src = tmp_path / "src"
    if setup == "none":
        src = None
    elif setup == "missing":
        pass
    elif setup == "no_class_folders":
        src.mkdir()
        (src / "loose.jpg").write_bytes(b"x")
    elif setup == "empty_class_folders":
        (src / "cats").mkdir(parents=True)
        (src / "dogs").mkdir()
    elif setup == "empty_split_folders":
        (src / "train").mkdir(parents=True)
        (src / "validation").mkdir()
    with pytest.raises(sources.SourceError, match=match):
        sources.scan_image_folder(None if src is None else str(src))


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_validation_fraction_out_of_range(split_tree, fraction):
    with pytest.raises(sources.SourceError, match="validation_fraction"):
        sources.scan_image_folder(str(split_tree.root), validation_fraction=fraction)
