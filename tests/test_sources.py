"""pipeline.converter.sources: finding the images of a class-folder tree."""

from __future__ import annotations

import os
import re
import uuid
from collections import Counter

import pytest

from support.images import PALETTE, image_array, make_image_tree, save_image
from support.records import copy_tree_to
from pipeline import schema
from pipeline.converter import config
from pipeline.converter import rules
from pipeline.converter import sources
from pipeline.converter import walk


@pytest.fixture(scope="module")
def flat_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("flat") / "animals"
    return make_image_tree(root, "flat", {"cats": 10, "dogs": 7, "birds": 4}, (8, 8))


def _scan(src, **fields) -> sources.FolderScan:
    """scan_image_folder of a ConversionConfig with these fields."""
    return sources.scan_image_folder(config.ConversionConfig(src, **fields))


def _relpaths(images):
    return sorted(im.relpath for im in images)


def test_split_layout_lists_every_file_with_sorted_labels(split_tree):
    scan = _scan(str(split_tree.root))
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
    scan = _scan(str(split_tree.root), classes=["dogs", "cats"])
    assert scan.class_names == ("dogs", "cats")
    labels = {(im.class_name, im.label) for files in scan.splits.values() for im in files}
    assert labels == {("dogs", 0), ("cats", 1)}


def test_classes_subset_lists_only_those_classes(split_tree):
    scan = _scan(str(split_tree.root), classes=["dogs"])
    assert scan.class_names == ("dogs",)
    for files in scan.splits.values():
        assert {im.class_name for im in files} == {"dogs"}
        assert {im.label for im in files} == {0}


def test_class_without_folder_is_an_error(split_tree):
    with pytest.raises(sources.SourceError, match="horses"):
        _scan(str(split_tree.root), classes=["cats", "horses"])


def test_repeated_class_is_an_error(split_tree):
    with pytest.raises(sources.SourceError, match="repeats"):
        _scan(str(split_tree.root), classes=["cats", "cats"])


def test_flat_layout_goes_to_train(flat_tree):
    scan = _scan(str(flat_tree.root))
    assert scan.class_names == ("birds", "cats", "dogs")
    assert list(scan.splits) == ["train"]
    assert _relpaths(scan.splits["train"]) == sorted(im.relpath for im in flat_tree.images)


def test_flat_layout_hold_out_is_per_class_and_deterministic(flat_tree):
    fraction = 0.3
    first = _scan(str(flat_tree.root), validation_fraction=fraction, seed=7)
    again = _scan(str(flat_tree.root), validation_fraction=fraction, seed=7)
    other = _scan(str(flat_tree.root), validation_fraction=fraction, seed=8)

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
    scan = _scan(str(tree.root), validation_fraction=0.01)
    held = Counter(im.class_name for im in scan.splits["validation"])
    kept = Counter(im.class_name for im in scan.splits["train"])
    # a: 2 files -> 1 held out; b: a single file stays in train; c: 1 of 5.
    assert held == {"a": 1, "c": 1}
    assert kept == {"a": 1, "b": 1, "c": 4}
    scan = _scan(str(tree.root), validation_fraction=0.99)
    kept = Counter(im.class_name for im in scan.splits["train"])
    assert kept["a"] == 1 and kept["c"] == 1


@pytest.mark.parametrize("fraction", [0.1, 0.6])
def test_hold_out_never_yields_an_empty_split(tmp_path, fraction):
    """One file per class: the hold-out takes none (0.1) or all (0.6).

    scan_image_folder drops splits without files (a FolderScan never lists an
    empty split otherwise), so an empty split after the hold-out must go too.
    """
    tree = make_image_tree(tmp_path / "src", "flat", {"cats": 1, "dogs": 1}, (8, 8))
    scan = _scan(str(tree.root), validation_fraction=fraction)
    assert {name: len(files) for name, files in scan.splits.items() if not files} == {}
    assert scan.num_files == 2


def test_validation_fraction_with_split_folders_is_refused(split_tree):
    splits = ", ".join(f"{name}/" for name in sources.SPLIT_NAMES if (split_tree.root / name).is_dir())
    message = f"holds out part of a tree without split folders, but {split_tree.root} has {splits}: leave the flag out"
    with pytest.raises(sources.SourceError, match=re.escape(message)):
        _scan(str(split_tree.root), validation_fraction=0.5)


def test_hidden_entries_are_skipped_with_their_reason_and_subfolders_are_walked(tmp_path):
    tree = make_image_tree(tmp_path / "src", "flat", {"cats": 2, "dogs": 1}, (8, 8))
    (tree.root / "cats" / ".DS_Store").write_bytes(b"junk")
    (tree.root / "cats" / "._cats.000.jpg").write_bytes(b"\0\5\26\7 macOS AppleDouble")
    (tree.root / ".cache").mkdir()
    (tree.root / ".cache" / "x.jpg").write_bytes(b"junk")
    (tree.root / ".DS_Store").write_bytes(b"junk")  # a loose file beside the class folders, as any other
    nested = tree.root / "dogs" / "more" / "dog.x.jpg"
    nested.parent.mkdir()
    nested.write_bytes(tree.images[0].path.read_bytes())
    (tree.root / "dogs" / ".hidden").mkdir()
    (tree.root / "dogs" / ".hidden" / "dog.y.jpg").write_bytes(b"junk")

    scan = _scan(str(tree.root))
    assert scan.class_names == ("cats", "dogs")
    assert _relpaths(scan.splits["train"]) == sorted(
        [im.relpath for im in tree.images] + [os.path.join("dogs", "more", "dog.x.jpg")]
    )
    # A hidden folder is one entry: its files are not looked at.
    assert [(os.path.relpath(s.path, tree.root), s.split, s.reason) for s in scan.skipped] == [
        (".cache", "train", f"{walk.HIDDEN}: not a class folder"),
        ("cats/.DS_Store", "train", walk.HIDDEN),
        ("cats/._cats.000.jpg", "train", walk.HIDDEN),
        ("dogs/.hidden", "train", walk.HIDDEN),
    ]


def test_classes_naming_a_hidden_folder_says_why_it_is_not_taken(tmp_path):
    counts = {"train": {"cats": 1, "dogs": 1}, "validation": {"cats": 1, "dogs": 1}}
    tree = make_image_tree(tmp_path / "src", "split", counts, (8, 8))
    make_image_tree(tmp_path / "more", "flat", {".hidden": 2}, (8, 8))
    os.rename(tmp_path / "more" / ".hidden", tree.root / "train" / ".hidden")
    (tree.root / ".git").mkdir()  # beside the split folders: neither a split nor a class, not listed

    scan = _scan(str(tree.root))
    assert scan.class_names == ("cats", "dogs")
    assert _reasons(scan, tree.root) == {"train/.hidden": f"{walk.HIDDEN}: not a class folder"}
    message = ("--classes names .hidden, a hidden folder (its name starts with '.'): hidden folders are "
               "never classes (macOS and tools keep their own files in them); rename it")
    with pytest.raises(sources.SourceError) as raised:
        _scan(str(tree.root), classes=["cats", "dogs", ".hidden"])
    assert str(raised.value) == message
    only_hidden = tmp_path / "only_hidden"
    (only_hidden / ".thumbnails").mkdir(parents=True)
    with pytest.raises(sources.SourceError, match=r"has no class folders \(hidden ones are not classes: .thumbnails\)"):
        _scan(str(only_hidden))


def test_the_hold_out_deals_out_only_files_that_will_be_stored(tmp_path):
    """One real photo per class beside junk: without the header check, some seeds put
    the photo in validation and junk in train ("class has no image in train")."""
    tree = make_image_tree(tmp_path / "src", "flat", {"cats": 1, "dogs": 3}, (8, 8))
    cats = tree.root / "cats"
    (cats / "Thumbs.db").write_bytes(bytes.fromhex("d0cf11e0a1b11ae1") + bytes(504))  # an OLE2 file
    (cats / "empty.jpg").write_bytes(b"")
    (cats / "notes.jpg").write_text("not a photo\n")
    save_image(image_array("solid", (16, 16), PALETTE[9]), tree.root / "dogs" / "big.jpg")  # 8x8 the others
    expected = {"cats/empty.jpg": walk.EMPTY, "cats/Thumbs.db": "not an image", "cats/notes.jpg": "not an image",
                "dogs/big.jpg": "16x16 pixels, over --max_pixels=100"}
    for seed in range(8):
        scan = _scan(str(tree.root), validation_fraction=0.5, seed=seed, max_pixels=100)
        assert _relpaths(scan.splits["train"])[:1] == ["cats/cats.000.jpg"], seed
        assert Counter(im.class_name for im in scan.splits["validation"]) == {"dogs": 2}, seed
        assert _reasons(scan, tree.root) == expected
    # The empty file is the walk's (its size says it); the rest needs a header, read for a hold-out only.
    assert _reasons(_scan(str(tree.root)), tree.root) == {"cats/empty.jpg": walk.EMPTY}


def test_class_missing_from_one_split_keeps_global_labels(tmp_path):
    counts = {"train": {"cats": 1, "dogs": 1}, "test": {"dogs": 2}}
    tree = make_image_tree(tmp_path / "src", "split", counts, (8, 8))
    scan = _scan(str(tree.root))
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
    with pytest.raises(config.ConversionError if src is None else sources.SourceError, match=match):
        _scan(None if src is None else str(src))


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_validation_fraction_out_of_range(split_tree, fraction):
    with pytest.raises(config.ConversionError, match="validation_fraction"):  # the config's bound
        _scan(str(split_tree.root), validation_fraction=fraction)


# --------------------------------------------------------------------------
# Odd trees: links, loops, special files, large files.


def _reasons(scan, root) -> dict[str, str]:
    """{path relative to `root`: reason} of the skipped entries."""
    return {os.path.relpath(s.path, root): s.reason for s in scan.skipped}


def test_a_symlink_loop_lists_each_file_once(tmp_path):
    # One loop per class: more in one folder made the old walk exponential.
    tree = make_image_tree(tmp_path / "src", "flat", {"cats": 3, "dogs": 1}, (8, 8))
    os.symlink(".", tree.root / "cats" / "again")  # 3 images became 123 records
    os.symlink("..", tree.root / "dogs" / "up")
    scan = _scan(str(tree.root))
    assert _relpaths(scan.splits["train"]) == sorted(im.relpath for im in tree.images)
    assert _reasons(scan, tree.root) == {"cats/again": "symlink loop", "dogs/up": "symlink loop"}
    assert {s.split for s in scan.skipped} == {"train"}


def test_each_real_file_counts_once_and_keeps_its_own_class(tmp_path):
    tree = make_image_tree(tmp_path / "src", "flat", {"cats": 2, "dogs": 2}, (8, 8))
    cats, dogs = tree.root / "cats", tree.root / "dogs"
    os.symlink("cats.001.jpg", cats / "a_link.jpg")  # sorts before its target
    os.symlink("../dogs/dogs.000.jpg", cats / "a_dog.jpg")  # another class's file
    os.link(dogs / "dogs.001.jpg", dogs / "hard.jpg")
    os.symlink("../dogs", cats / "b_dogs")  # another class's folder
    scan = _scan(str(tree.root))
    assert _relpaths(scan.splits["train"]) == sorted(im.relpath for im in tree.images)
    assert {im.relpath: im.class_name for im in scan.splits["train"]}["dogs/dogs.000.jpg"] == "dogs"
    same = lambda name: f"same file as {tree.root / name}"  # noqa: E731
    assert _reasons(scan, tree.root) == {
        "cats/a_link.jpg": same("cats/cats.001.jpg"),
        "cats/a_dog.jpg": same("dogs/dogs.000.jpg"),
        "dogs/hard.jpg": same("dogs/dogs.001.jpg"),
        "cats/b_dogs": "symlink to a folder listed elsewhere",
    }


def test_a_link_never_takes_a_folder_from_its_own_place(tmp_path):
    tree = make_image_tree(tmp_path / "src", "flat", {"cats": 1, "dogs": 1}, (8, 8))
    deep = tree.root / "cats" / "z" / "deep.jpg"  # walked after the link that leads to it
    deep.parent.mkdir()
    deep.write_bytes(tree.images[0].path.read_bytes())
    (tree.root / "cats" / "a").mkdir()
    os.symlink("../z", tree.root / "cats" / "a" / "link")
    os.symlink("cats", tree.root / "a_cats")  # a class folder, sorted before its target
    scan = _scan(str(tree.root))
    assert scan.class_names == ("a_cats", "cats", "dogs")
    assert _relpaths(scan.splits["train"]) == sorted(
        [im.relpath for im in tree.images] + ["cats/z/deep.jpg"]
    )
    assert {im.class_name for im in scan.splits["train"]} == {"cats", "dogs"}
    assert _reasons(scan, tree.root) == dict.fromkeys(
        ["cats/a/link", "a_cats"], "symlink to a folder listed elsewhere"
    )


def test_a_file_linked_into_two_splits_counts_once(tmp_path):
    counts = {"train": {"cats": 1, "dogs": 1}, "validation": {"cats": 1, "dogs": 1}}
    tree = make_image_tree(tmp_path / "src", "split", counts, (8, 8))
    os.symlink("../../train/cats/cats.000.jpg", tree.root / "validation" / "cats" / "leak.jpg")
    scan = _scan(str(tree.root))
    assert scan.num_files == 4
    assert [(s.split, s.reason.split(" as ")[0]) for s in scan.skipped] == [("validation", "same file")]


def test_symlinked_folders_inside_src_are_followed(tmp_path):
    tree = make_image_tree(tmp_path / "src", "flat", {"cats": 1, "dogs": 1}, (8, 8))
    shared = tree.root / ".shared"  # hidden: not a class folder of its own
    shared.mkdir()
    (shared / "extra.jpg").write_bytes(tree.images[0].path.read_bytes())
    os.symlink("../.shared", tree.root / "cats" / "more")
    scan = _scan(str(tree.root))
    assert "cats/more/extra.jpg" in _relpaths(scan.splits["train"])
    assert _reasons(scan, tree.root) == {".shared": f"{walk.HIDDEN}: not a class folder"}


def test_broken_links_special_files_and_large_files_are_skipped_with_reasons(tmp_path):
    tree = make_image_tree(tmp_path / "src", "flat", {"cats": 2, "dogs": 2}, (8, 8))
    cats = tree.root / "cats"
    os.symlink("missing.jpg", cats / "dangling.jpg")
    os.symlink("self.jpg", cats / "self.jpg")
    os.mkfifo(cats / "pipe.jpg")  # listing it must not open it: that would block
    with open(cats / "huge.jpg", "wb") as f:
        f.truncate(300 * 2**20)  # sparse: over the 256 MiB default, no disk used
    scan = _scan(str(tree.root))
    assert _relpaths(scan.splits["train"]) == sorted(im.relpath for im in tree.images)
    assert _reasons(scan, tree.root) == {
        "cats/dangling.jpg": "broken symlink",
        "cats/self.jpg": "symlink loop",
        "cats/pipe.jpg": "not a regular file (fifo)",
        "cats/huge.jpg": "larger than --max_file_mb=256 (300 MiB)",
    }
    # The limit is a parameter; the sizes are MiB.
    small = _scan(str(tree.root), max_file_mb=400)
    assert "cats/huge.jpg" in _relpaths(small.splits["train"])


def test_links_out_of_src_are_skipped_unless_followed(tmp_path):
    outside = make_image_tree(tmp_path / "elsewhere", "flat", {"birds": 2}, (8, 8))
    tree = make_image_tree(tmp_path / "src", "flat", {"cats": 1, "dogs": 1}, (8, 8))
    cats = tree.root / "cats"
    os.symlink(outside.images[0].path, cats / "bird.jpg")
    os.symlink(outside.root / "birds", cats / "birds")
    os.symlink("/dev/zero", cats / "zero.jpg")
    scan = _scan(str(tree.root))
    assert _relpaths(scan.splits["train"]) == sorted(im.relpath for im in tree.images)
    assert _reasons(scan, tree.root) == dict.fromkeys(
        ["cats/bird.jpg", "cats/birds", "cats/zero.jpg"], "symlink leads outside --src"
    )

    followed = _scan(str(tree.root), follow_external_links=True)
    assert _relpaths(followed.splits["train"]) == sorted(
        [im.relpath for im in tree.images] + ["cats/bird.jpg", "cats/birds/birds.001.jpg"]
    )
    assert _reasons(followed, tree.root) == {
        # birds.000 is bird.jpg, found first through the file link
        "cats/birds/birds.000.jpg": f"same file as {cats / 'bird.jpg'}",
        "cats/zero.jpg": "not a regular file (character device)",
    }


def test_a_class_folder_linked_from_outside_is_skipped_unless_followed(tmp_path):
    outside = make_image_tree(tmp_path / "elsewhere", "flat", {"birds": 2}, (8, 8))
    tree = make_image_tree(tmp_path / "src", "flat", {"cats": 1}, (8, 8))
    os.symlink(outside.root / "birds", tree.root / "birds")
    scan = _scan(str(tree.root))
    assert scan.class_names == ("birds", "cats")
    assert _relpaths(scan.splits["train"]) == ["cats/cats.000.jpg"]
    assert _reasons(scan, tree.root) == {"birds": "symlink leads outside --src"}
    followed = _scan(str(tree.root), follow_external_links=True)
    assert followed.num_files == 3 and not followed.skipped


# --------------------------------------------------------------------------
# A tree at a URL: TensorFlow's in-memory ram:// stands in for gs://.


def _to_ram(local) -> str:
    return copy_tree_to(local, f"ram://{uuid.uuid4().hex}/{local.name}")


def _listing(scan, root) -> dict:
    """A scan with its paths relative to `root`, comparable across filesystems."""
    return {
        "class_names": scan.class_names,
        "splits": {
            split: [
                (os.path.relpath(im.path, root), im.relpath, im.label, im.class_name, im.size) for im in images
            ]
            for split, images in scan.splits.items()
        },
        "skipped": [(os.path.relpath(s.path, root), s.split, s.reason) for s in scan.skipped],
    }


@pytest.mark.parametrize("layout", ["split", "flat"])
def test_a_tree_at_a_url_lists_as_it_does_on_disk(tmp_path, layout):
    if layout == "split":
        counts = {"train": {"cats": 3, "dogs": 2}, "test": {"cats": 1, "dogs": 1}}
    else:
        counts = {"cats": 4, "dogs": 3}
    tree = make_image_tree(tmp_path / "src", layout, counts, (8, 8))
    class_folder = tree.root / ("train/cats" if layout == "split" else "cats")
    (class_folder / "more").mkdir()
    (class_folder / "more" / "nested.jpg").write_bytes(tree.images[0].path.read_bytes())
    (class_folder / ".hidden.jpg").write_bytes(b"junk")
    (class_folder / "notes.jpg").write_text("not a photo")  # the flat layout's hold-out reads its header
    (class_folder / "empty.jpg").write_bytes(b"")
    (tree.root / ".cache").mkdir()
    remote = _to_ram(tree.root)
    kwargs = {"validation_fraction": 0.3, "seed": 4} if layout == "flat" else {}
    on_disk = _scan(str(tree.root), **kwargs)
    at_url = _scan(remote + "/", **kwargs)
    assert _listing(at_url, remote) == _listing(on_disk, tree.root)
    assert "cats/more/nested.jpg" in _relpaths(im for images in at_url.splits.values() for im in images)
    reasons = {os.path.basename(s.path): s.reason for s in at_url.skipped}
    assert reasons[".hidden.jpg"] == walk.HIDDEN and reasons["empty.jpg"] == walk.EMPTY
    assert reasons.get("notes.jpg") == ("not an image" if layout == "flat" else None)
    assert all(im.path.startswith(remote + "/") for images in at_url.splits.values() for im in images)
    assert all(im.mtime_ns for images in on_disk.splits.values() for im in images)


def test_the_size_limit_and_unusable_urls(tmp_path):
    import tensorflow as tf

    tree = make_image_tree(tmp_path / "src", "flat", {"cats": 2, "dogs": 2}, (8, 8))
    remote = _to_ram(tree.root)
    with tf.io.gfile.GFile(f"{remote}/dogs/big.jpg", "wb") as f:
        f.write(b"\0" * (2 * 2**20 + 1))
    scan = _scan(remote, max_file_mb=2)
    assert _relpaths(scan.splits["train"]) == sorted(im.relpath for im in tree.images)
    assert [(s.path, s.reason) for s in scan.skipped] == [
        (f"{remote}/dogs/big.jpg", "larger than --max_file_mb=2 (2 MiB)")
    ]
    with pytest.raises(sources.SourceError, match="is not a folder"):
        _scan(remote + "/nothing")
    with pytest.raises(sources.SourceError, match="no class folders"):
        _scan(f"{remote}/cats")


# --------------------------------------------------------------------------
# convert.py on such a tree: the summary and manifest.json list the skips.


def test_convert_lists_hidden_and_junk_files_and_holds_out_only_photos(tmp_path):
    from support import cli
    from pipeline import schema
    from pipeline.converter.commands import CONVERT

    tree = make_image_tree(tmp_path / "src", "flat", {"cats": 1, "dogs": 2}, (8, 8))
    (tree.root / "cats" / "Thumbs.db").write_bytes(bytes.fromhex("d0cf11e0a1b11ae1") + bytes(504))
    (tree.root / "cats" / "._cats.000.jpg").write_bytes(b"\0\5\26\7 macOS AppleDouble")
    (tree.root / ".hidden").mkdir()
    out = tmp_path / "records"
    done = cli.run(CONVERT, f"--src={tree.root}", f"--out={out}", "--validation_fraction=0.5", "--seed=3",
                   "--workers=1", "--nodata_report")
    assert done.returncode == 0, done.stderr
    expected = {".hidden": f"{walk.HIDDEN}: not a class folder", "cats/._cats.000.jpg": walk.HIDDEN,
                "cats/Thumbs.db": "not an image"}
    manifest = schema.read_manifest(str(out))
    assert {os.path.relpath(s.path, tree.root): s.reason for s in manifest.skipped} == expected
    assert f"{tree.root / 'cats/Thumbs.db'}: not an image" in done.stdout
    assert "2 hidden (names starting with '.'), e.g. " in done.stdout  # the manifest lists each
    assert manifest.splits["train"].class_counts == {"cats": 1, "dogs": 1}
    assert manifest.splits["validation"].class_counts == {"cats": 0, "dogs": 1}

    hidden_class = cli.run(CONVERT, f"--src={tree.root}", f"--out={tmp_path / 'never'}", "--classes=cats,dogs,.hidden")
    assert hidden_class.returncode == 1 and not (tmp_path / "never").exists()
    assert hidden_class.stderr.strip().splitlines()[-1].startswith(
        "convert.py: error: --classes names .hidden, a hidden folder (its name starts with '.')")


def test_hidden_files_fold_into_one_summary_line_and_do_not_fail_strict():
    skipped = [schema.SkippedFile(f"src/cats/._{i}.jpg", "train", walk.HIDDEN) for i in range(5)]
    skipped.append(schema.SkippedFile("src/cats/Thumbs.db", "train", "not an image"))
    assert walk.skip_lines(skipped) == [
        "    src/cats/Thumbs.db: not an image",
        "    5 hidden (names starting with '.'), e.g. src/cats/._0.jpg, src/cats/._1.jpg and 3 more",
    ]
    rules.check_strict(skipped[:5])  # a Mac's own files are not the data's problems
    with pytest.raises(rules.ConversionError, match=r"--strict: src/cats/Thumbs.db: not an image$"):
        rules.check_strict(skipped)
