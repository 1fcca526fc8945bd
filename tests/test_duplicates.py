"""Duplicates found at conversion: byte-identical files and near-duplicates (pipeline.converter.duplicates)."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from support import cli
from support.records import convert, files, require_cat_dog_small
from pipeline import schema
from pipeline.converter import conversion
from pipeline.converter import duplicates
from pipeline.converter import out_dir
from pipeline.converter import shards
from pipeline.converter.commands import CONVERT

SIZE = (96, 128)  # (height, width) of the generated photos
PER_CLASS = 4


def _photo(seed: int) -> Image.Image:
    """A photo-like image: a smooth random colour field, different for every seed."""
    coarse = np.random.default_rng(seed).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return Image.fromarray(coarse, "RGB").resize((SIZE[1], SIZE[0]), Image.Resampling.BICUBIC)


def _resized_copy(src: Path, dst: Path) -> None:
    """`src` resized to 80% and saved again at JPEG quality 80."""
    with Image.open(src) as image:
        small = image.resize((round(image.width * 0.8), round(image.height * 0.8)), Image.Resampling.LANCZOS)
    small.save(dst, format="JPEG", quality=80)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """{train,validation,test}/{cats,dogs}/ of distinct photos, and planted copies:
    validation/cats/copy.jpg = train/cats/p0.jpg byte for byte; test/dogs/small.jpg, an 80%, q80 copy of
    test/dogs/p0.jpg."""
    root = tmp_path_factory.mktemp("dups") / "pets"
    seed = 0
    for split in ("train", "validation", "test"):
        for class_name in ("cats", "dogs"):
            (root / split / class_name).mkdir(parents=True)
            for k in range(PER_CLASS):
                _photo(seed).save(root / split / class_name / f"p{k}.jpg", format="JPEG", quality=90)
                seed += 1
    shutil.copyfile(root / "train/cats/p0.jpg", root / "validation/cats/copy.jpg")
    _resized_copy(root / "test/dogs/p0.jpg", root / "test/dogs/small.jpg")
    return root


def _pairs(manifest: schema.Manifest, root: Path) -> set[tuple[str, str, bool]]:
    return {
        (os.path.relpath(p.path, root), os.path.relpath(p.original_path, root), p.identical)
        for p in manifest.duplicates
    }


PLANTED = {
    ("validation/cats/copy.jpg", "train/cats/p0.jpg", True),
    ("test/dogs/small.jpg", "test/dogs/p0.jpg", False),
}


@pytest.fixture(scope="module")
def reported(tree, tmp_path_factory):
    """convert.py on the tree, default flags: (its output, the records folder)."""
    out = tmp_path_factory.mktemp("reported") / "records"
    done = cli.run(CONVERT, f"--src={tree}", f"--out={out}", "--workers=1", "--num_shards=2")
    assert done.returncode == 0, done.stderr
    return done.stdout, out


def test_planted_copies_are_reported_and_kept(tree, reported):
    stdout, out = reported
    manifest = schema.read_manifest(str(out))
    assert _pairs(manifest, tree) == PLANTED  # and no unrelated pair
    near = next(p for p in manifest.duplicates if not p.identical)
    assert 0 <= near.distance <= duplicates.THRESHOLD
    assert (near.split, near.original_split) == ("test", "test")
    assert manifest.splits["validation"].class_counts["cats"] == PER_CLASS + 1  # kept
    assert (
        "  duplicates       2 pairs (1 byte-identical, 1 near, perceptual hash distance <= "
        f"{duplicates.THRESHOLD}), kept; --duplicates=drop keeps the first"
    ) in stdout
    assert f"    {tree}/validation/cats/copy.jpg = {tree}/train/cats/p0.jpg (identical)" in stdout
    assert f"    {tree}/test/dogs/small.jpg = {tree}/test/dogs/p0.jpg (distance {near.distance})" in stdout
    listed = json.loads((out / schema.MANIFEST_FILENAME).read_text())["duplicates"]
    assert {(d["distance"], d["identical"]) for d in listed} == {(0, True), (near.distance, False)}


def test_the_data_report_is_written(reported):
    _, out = reported
    with Image.open(out / out_dir.DATA_REPORT_FILENAME) as image:
        assert image.format == "PNG" and image.width > 500


def test_drop_keeps_the_first_copy_and_skips_the_others(tree, tmp_path):
    summary = convert(tree, tmp_path / "records", num_shards=2, duplicates="drop")
    manifest = summary.manifest
    assert _pairs(manifest, tree) == PLANTED
    assert manifest.splits["train"].class_counts == {"cats": PER_CLASS, "dogs": PER_CLASS}
    assert manifest.splits["validation"].class_counts == {"cats": PER_CLASS, "dogs": PER_CLASS}
    assert manifest.splits["test"].class_counts == {"cats": PER_CLASS, "dogs": PER_CLASS}
    reasons = {os.path.relpath(s.path, tree): s.reason for s in summary.skipped}
    assert reasons["validation/cats/copy.jpg"] == f"duplicate of {tree}/train/cats/p0.jpg (train; identical)"
    assert reasons["test/dogs/small.jpg"].startswith(
        f"duplicate of {tree}/test/dogs/p0.jpg (test; perceptual hash distance "
    )
    assert len(reasons) == 2
    assert "dropped (the first copy kept)" in summary.format()
    assert not (tmp_path / "records" / out_dir.DATA_REPORT_FILENAME).exists()  # data_report=False


def test_off_looks_for_nothing(tree, tmp_path):
    summary = convert(tree, tmp_path / "records", num_shards=2, duplicates="off", data_report=True)
    assert summary.manifest.duplicates == ()
    assert "duplicates" not in summary.format()
    assert (tmp_path / "records" / out_dir.DATA_REPORT_FILENAME).is_file()  # without the sizes


def test_resume_keeps_the_pairs(tree, reported, tmp_path, monkeypatch, capsys):
    """A run stopped after 3 shards (its scratch folder left as a kill leaves it), then --resume."""
    out = tmp_path / "records"
    real_write, written = shards.write_shard, []

    def write_then_stop(*args, **kwargs):
        if len(written) == 3:
            raise KeyboardInterrupt
        written.append(real_write(*args, **kwargs))
        return written[-1]

    monkeypatch.setattr(shards, "write_shard", write_then_stop)
    monkeypatch.setattr(conversion.fileio, "rmtree", lambda path: None)  # the scratch folder stays
    with pytest.raises(KeyboardInterrupt):
        convert(tree, out, num_shards=2)
    monkeypatch.undo()
    capsys.readouterr()
    resumed = convert(tree, out, num_shards=2, resume=True, data_report=True)
    assert "kept 3 of 6 shards" in capsys.readouterr().err
    assert _pairs(resumed.manifest, tree) == PLANTED
    _, reference = reported
    assert files(out) == files(reference)  # the manifest (pairs in order) and the report too


def test_beam_refuses_drop_in_one_line(tree, tmp_path):
    done = cli.run(CONVERT, f"--src={tree}", f"--out={tmp_path / 'r'}", "--runner=beam", "--duplicates=drop")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "convert.py: error: --duplicates=drop is not supported with --runner=beam (only with the local runner): "
        "--duplicates=report lists them"
    ]


def _brute_force(prints: list[duplicates.Fingerprint], threshold: int, drop: bool) -> list[tuple[int, int, int]]:
    """(image, earlier image, distance) of each image with an earlier one: the first with its bytes, else
    the closest hash within `threshold`, the earliest of ties; with `drop`, paired images are no candidates."""
    found, kept = [], []
    for i, print_ in enumerate(prints):
        same = [j for j in kept if prints[j].digest == print_.digest]
        near = sorted((duplicates.distance(print_.phash, prints[j].phash), j) for j in kept)
        if same:
            found.append((i, same[0], 0))
        elif near and near[0][0] <= threshold:
            found.append((i, near[0][1], near[0][0]))
        if not (drop and found and found[-1][0] == i):
            kept.append(i)
    return found


@pytest.mark.parametrize("drop", [False, True], ids=["report", "drop"])
def test_the_banded_index_finds_what_brute_force_finds(drop):
    rng = random.Random(7)
    hashes = [rng.getrandbits(64) for _ in range(1500)]
    for _ in range(300):  # near ones: 0 to THRESHOLD + 2 bits flipped
        flipped = rng.sample(range(64), rng.randint(0, duplicates.THRESHOLD + 2))
        hashes.insert(rng.randrange(len(hashes) + 1), rng.choice(hashes) ^ sum(1 << b for b in flipped))
    prints = [duplicates.Fingerprint(f"digest{i}", h, 1, 1) for i, h in enumerate(hashes)]
    for _ in range(50):  # byte-identical copies, placed later than their original
        at = rng.randrange(1, len(prints) + 1)
        prints.insert(at, prints[rng.randrange(at)])
    index = duplicates.DuplicateIndex(drop=drop)
    for i, print_ in enumerate(prints):
        index.add(f"p{i}", "train", print_)
    banded = [(int(p.path[1:]), int(p.original_path[1:]), p.distance) for p in index.pairs]
    assert len(banded) > 250 and len(prints) > 2 * duplicates.BATCH
    assert banded == _brute_force(prints, duplicates.THRESHOLD, drop)


def test_a_manifest_without_duplicates_still_reads(reported):
    _, out = reported
    data = json.loads((out / schema.MANIFEST_FILENAME).read_text())
    assert data["duplicates"]
    del data["duplicates"]
    assert schema.Manifest.from_json(data).duplicates == ()


def test_real_photos_copies_are_reported(tmp_path):
    photos = require_cat_dog_small()
    src = tmp_path / "photos"
    for class_name in ("cats", "dogs"):
        (src / "train" / class_name).mkdir(parents=True)
        for path in sorted((photos / "train" / class_name).glob("*.jpg"))[:10]:
            shutil.copyfile(path, src / "train" / class_name / path.name)
    (src / "validation" / "cats").mkdir(parents=True)
    (src / "validation" / "dogs").mkdir(parents=True)
    cat, dog = sorted((src / "train/cats").iterdir())[0], sorted((src / "train/dogs").iterdir())[0]
    shutil.copyfile(cat, src / "validation/cats/copy.jpg")
    _resized_copy(dog, src / "validation/dogs/small.jpg")
    summary = convert(src, tmp_path / "records", num_shards=1)
    assert _pairs(summary.manifest, src) == {
        ("validation/cats/copy.jpg", os.path.relpath(cat, src), True),
        ("validation/dogs/small.jpg", os.path.relpath(dog, src), False),
    }


def test_the_summary_counts_one_pair_as_a_pair():
    pair = schema.DuplicatePair("b.jpg", "train", "a.jpg", "train", distance=0, identical=True)
    first, listed = duplicates.summary_lines((pair,), duplicates.DuplicateMode.REPORT)
    assert first.startswith("  duplicates       1 pair (1 byte-identical, 0 near,")
    assert listed == "    b.jpg = a.jpg (identical)"
