"""Duplicates found at conversion: byte-identical files and near-duplicates (pipeline.converter.duplicates).

The generated photos are random colour fields at five scales: the two coarse
ones make a photo's layout (what the perceptual hash sees), the three fine
ones its details (what the confirmation compares). A look-alike keeps a
photo's layout and gets other details: its hash is as close as a copy's,
its contents are not the photo's.
"""

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
from benchmark import duplicate_quality
from pipeline import schema
from pipeline.converter import conversion
from pipeline.converter import duplicates
from pipeline.converter import likeness
from pipeline.converter import out_dir
from pipeline.converter import write
from pipeline.converter.commands import CONVERT

SIZE = (120, 160)  # (height, width) of the generated photos
PER_CLASS = 4
LOOK_ALIKE_SEED = 3  # train/cats/p3.jpg: its look-alike's hash is 8 bits away (within the old threshold, 10)


def _layer(rng: np.random.Generator, cells: int) -> np.ndarray:
    """float32 [H, W, 3]: a random colour field of `cells` cells down, smoothly interpolated, about 0."""
    coarse = rng.integers(0, 256, (cells, cells * SIZE[1] // SIZE[0], 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((SIZE[1], SIZE[0]), Image.Resampling.BICUBIC), np.float32) - 128


def _photo(seed: int, details: int | None = None) -> Image.Image:
    """A photo-like image, different for every seed; with `details`, the look-alike of that number."""
    rng = np.random.default_rng(seed)
    layout = 1.0 * _layer(rng, 3) + 0.6 * _layer(rng, 6)
    fine = rng if details is None else np.random.default_rng([seed, details])
    pixels = 128 + layout + 0.5 * _layer(fine, 16) + 0.3 * _layer(fine, 24)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _plant(src: Path, dst: Path, kind: str) -> None:
    """A copy of `src` of `duplicate_quality.KINDS[kind]` (the crop off its left and bottom) at `dst`."""
    with Image.open(src) as image:
        dst.write_bytes(duplicate_quality.copy_bytes(image, kind, np.random.default_rng(1)))


RESIZED, BRIGHTENED, CROPPED, ALL_THREE = duplicate_quality.KINDS
PLANTED = {  # (copy, its photo, byte-identical): each copy in a later split than its photo
    ("validation/cats/copy.jpg", "train/cats/p0.jpg", True),
    ("validation/dogs/bright.jpg", "train/dogs/p1.jpg", False),
    ("test/dogs/small.jpg", "train/dogs/p2.jpg", False),
    ("test/cats/crop.jpg", "validation/cats/p1.jpg", False),
    ("test/dogs/all.jpg", "validation/dogs/p2.jpg", False),
}
LOOK_ALIKE = ("test/cats/look-alike.jpg", "train/cats/p3.jpg")


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """{train,validation,test}/{cats,dogs}/p*.jpg, distinct photos, and beside them the PLANTED copies
    (one of each kind) and LOOK_ALIKE."""
    root = tmp_path_factory.mktemp("dups") / "pets"
    seed = 0
    for split in ("train", "validation", "test"):
        for class_name in ("cats", "dogs"):
            (root / split / class_name).mkdir(parents=True)
            for k in range(PER_CLASS):
                _photo(seed).save(root / split / class_name / f"p{k}.jpg", format="JPEG", quality=90)
                seed += 1
    shutil.copyfile(root / "train/cats/p0.jpg", root / "validation/cats/copy.jpg")
    for copy, photo, kind in (("validation/dogs/bright.jpg", "train/dogs/p1.jpg", BRIGHTENED),
                              ("test/dogs/small.jpg", "train/dogs/p2.jpg", RESIZED),
                              ("test/cats/crop.jpg", "validation/cats/p1.jpg", CROPPED),
                              ("test/dogs/all.jpg", "validation/dogs/p2.jpg", ALL_THREE)):
        _plant(root / photo, root / copy, kind)
    _photo(LOOK_ALIKE_SEED, details=99).save(root / LOOK_ALIKE[0], format="JPEG", quality=90)
    return root


def _pairs(manifest: schema.Manifest, root: Path) -> set[tuple[str, str, bool]]:
    return {
        (os.path.relpath(p.path, root), os.path.relpath(p.original_path, root), p.identical)
        for p in manifest.duplicates
    }


def _fingerprint(path: Path) -> duplicates.Fingerprint:
    data = path.read_bytes()
    with Image.open(path) as image:
        image.load()
        return duplicates.fingerprint(data, image)


def _pixels(print_: duplicates.Fingerprint) -> np.ndarray:
    return np.frombuffer(print_.thumbnail, np.uint8).reshape(likeness.THUMBNAIL_SIZE, likeness.THUMBNAIL_SIZE)


@pytest.fixture(scope="module")
def reported(tree, tmp_path_factory):
    """convert.py on the tree, default flags: (its output, the records folder)."""
    out = tmp_path_factory.mktemp("reported") / "records"
    done = cli.run(CONVERT, f"--src={tree}", f"--out={out}", "--workers=1", "--num_shards=2")
    assert done.returncode == 0, done.stderr
    return done.stdout, out


def test_planted_copies_of_every_kind_are_reported_and_kept(tree, reported):
    stdout, out = reported
    manifest = schema.read_manifest(str(out))
    assert _pairs(manifest, tree) == PLANTED  # and no other pair: not the look-alike
    for pair in manifest.duplicates:
        if not pair.identical:
            assert pair.distance <= duplicates.HASH_RADIUS and pair.score >= likeness.SIMILARITY
    assert manifest.splits["validation"].class_counts["cats"] == PER_CLASS + 1  # kept
    assert (
        "  duplicates       5 pairs (1 byte-identical, 4 near: hash distance <= "
        f"{duplicates.HASH_RADIUS}, similarity >= {likeness.SIMILARITY}), kept; --duplicates=drop keeps the first"
    ) in stdout
    assert f"    {tree}/validation/cats/copy.jpg = {tree}/train/cats/p0.jpg (identical)" in stdout
    crop = next(p for p in manifest.duplicates if p.path.endswith("crop.jpg"))
    assert (f"    {tree}/test/cats/crop.jpg = {tree}/validation/cats/p1.jpg "
            f"(hash distance {crop.distance}, similarity {crop.score:.2f})") in stdout
    listed = json.loads((out / schema.MANIFEST_FILENAME).read_text())["duplicates"]
    assert {(d["path"], d["distance"], d["score"]) for d in listed} == {
        (p.path, p.distance, p.score) for p in manifest.duplicates
    }
    assert next(d for d in listed if d["identical"])["score"] == 1.0


def _layout(a: duplicates.Fingerprint, b: duplicates.Fingerprint) -> float:
    """Pearson correlation of two thumbnails' 8x8 block means: how alike their layouts are."""
    means = [_pixels(x).reshape(8, 3, 8, 3).mean(axis=(1, 3)).ravel() for x in (a, b)]
    return float(np.corrcoef(*means)[0, 1])


def test_a_look_alike_whose_hash_is_as_close_as_a_copys_is_not_reported(tree, reported):
    """Its layout (what the hash sees) is the photo's; its details are not: the thumbnails tell."""
    look_alike, photo = (_fingerprint(tree / path) for path in LOOK_ALIKE)
    assert duplicates.distance(look_alike.phash, photo.phash) <= 10  # the old search reported such pairs
    assert _layout(look_alike, photo) > 0.9
    assert likeness.details(_pixels(look_alike), _pixels(photo)[None])[0] < likeness.GATE
    assert likeness.similarity(_pixels(look_alike), _pixels(photo)[None])[0] < likeness.SIMILARITY - 0.15
    copy = _fingerprint(tree / "test/cats/crop.jpg")  # a copy, for comparison: well above both
    photo = _fingerprint(tree / "validation/cats/p1.jpg")
    assert likeness.details(_pixels(copy), _pixels(photo)[None])[0] > likeness.GATE + 0.1
    assert likeness.similarity(_pixels(copy), _pixels(photo)[None])[0] > likeness.SIMILARITY + 0.1
    _, out = reported
    assert not any(LOOK_ALIKE[0] in (p.path + p.original_path) for p in schema.read_manifest(str(out)).duplicates)


def test_the_data_report_is_written(reported):
    _, out = reported
    with Image.open(out / out_dir.DATA_REPORT_FILENAME) as image:
        assert image.format == "PNG" and image.width > 500


def test_drop_skips_the_confirmed_copies_only(tree, tmp_path):
    summary = convert(tree, tmp_path / "records", num_shards=2, duplicates="drop")
    manifest = summary.manifest
    assert _pairs(manifest, tree) == PLANTED
    assert manifest.splits["train"].class_counts == {"cats": PER_CLASS, "dogs": PER_CLASS}
    assert manifest.splits["validation"].class_counts == {"cats": PER_CLASS, "dogs": PER_CLASS}
    assert manifest.splits["test"].class_counts == {"cats": PER_CLASS + 1, "dogs": PER_CLASS}  # the look-alike kept
    reasons = {os.path.relpath(s.path, tree): s.reason for s in summary.skipped}
    assert set(reasons) == {copy for copy, _, _ in PLANTED}
    assert reasons["validation/cats/copy.jpg"] == f"duplicate of {tree}/train/cats/p0.jpg (train; identical)"
    crop = next(p for p in manifest.duplicates if p.path.endswith("crop.jpg"))
    assert reasons["test/cats/crop.jpg"] == (
        f"duplicate of {tree}/validation/cats/p1.jpg (validation; hash distance {crop.distance}, "
        f"similarity {crop.score:.2f})"
    )
    assert "dropped (the first copy kept)" in summary.format()
    assert not (tmp_path / "records" / out_dir.DATA_REPORT_FILENAME).exists()  # data_report=False


def test_off_looks_for_nothing(tree, tmp_path):
    summary = convert(tree, tmp_path / "records", num_shards=2, duplicates="off", data_report=True)
    assert summary.manifest.duplicates == ()
    assert "duplicates" not in summary.format()
    assert (tmp_path / "records" / out_dir.DATA_REPORT_FILENAME).is_file()  # without the sizes


def test_resume_keeps_the_pairs(tree, reported, tmp_path, monkeypatch, capsys):
    """A run stopped after 3 shards (its scratch folder left as a kill leaves it), then --resume:
    the pairs come from the kept shards' sidecars, thumbnails included."""
    out = tmp_path / "records"
    real_write, written = write.ShardWriter.write, []

    def write_then_stop(*args, **kwargs):
        if len(written) == 3:
            raise KeyboardInterrupt
        written.append(real_write(*args, **kwargs))
        return written[-1]

    monkeypatch.setattr(write.ShardWriter, "write", write_then_stop)
    monkeypatch.setattr(conversion.fileio, "rmtree", lambda path: None)  # the scratch folder stays
    with pytest.raises(KeyboardInterrupt):
        convert(tree, out, num_shards=2)
    monkeypatch.undo()
    capsys.readouterr()
    resumed = convert(tree, out, num_shards=2, resume=True, data_report=True)
    assert "kept 3 of 6 shards" in capsys.readouterr().err
    assert _pairs(resumed.manifest, tree) == PLANTED
    _, reference = reported
    assert files(out) == files(reference)  # the manifest (pairs in order, scores) and the report too


def test_a_sidecar_row_reads_back_and_an_older_one_is_refused(tree):
    print_ = _fingerprint(tree / "train/cats/p0.jpg")
    assert duplicates.fingerprint_from_json(json.loads(json.dumps(duplicates.fingerprint_to_json(print_)))) == print_
    with pytest.raises(ValueError):  # `resume` then writes that shard again
        duplicates.fingerprint_from_json(["ab" * 32, 12345, 96, 128])


def test_beam_refuses_drop_in_one_line(tree, tmp_path):
    done = cli.run(CONVERT, f"--src={tree}", f"--out={tmp_path / 'r'}", "--runner=beam", "--duplicates=drop")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "convert.py: error: --duplicates=drop is not supported with --runner=beam (only with the local runner): "
        "--duplicates=report lists them"
    ]


def _brute_force(prints: list[duplicates.Fingerprint], drop: bool) -> list[tuple[int, int, int]]:
    """(image, earlier image, distance) of each image with an earlier one: the first with its bytes, else, of the
    kept images within HASH_RADIUS that the look-ups reach, closest first (then earliest), the first confirmed:
    (at most CANDIDATE_LIMIT) details >= GATE (at most CONFIRM_LIMIT such scored), similarity >= SIMILARITY.
    Pair by pair.
    An exact copy is never a candidate; with `drop`, no paired image is."""
    found, kept = [], []
    for i, print_ in enumerate(prints):
        mine = _pixels(print_)
        same = [j for j in kept if prints[j].digest == print_.digest]
        near = sorted((duplicates.distance(print_.phash, prints[j].phash), j) for j in kept)
        near = [(d, j) for d, j in near if d <= duplicates.HASH_RADIUS and duplicates.reachable(
            np.array([print_.phash ^ prints[j].phash], np.uint64), print_.uncertain)[0]]
        gated = [(d, j) for d, j in near[:duplicates.CANDIDATE_LIMIT]
                 if likeness.details(mine, _pixels(prints[j])[None])[0] >= likeness.GATE]
        confirmed = [(d, j) for d, j in gated[:likeness.CONFIRM_LIMIT]
                     if likeness.similarity(mine, _pixels(prints[j])[None])[0] >= likeness.SIMILARITY]
        if same:
            found.append((i, same[0], 0))
        elif confirmed:
            found.append((i, confirmed[0][1], confirmed[0][0]))
        if not (same or (drop and found and found[-1][0] == i)):
            kept.append(i)
    return found


def _uncertain(rng: random.Random) -> int:
    """A random mask of UNCERTAIN_BITS bits in each band."""
    return sum(1 << (band * duplicates.BAND_BITS + bit) for band in range(duplicates.NUM_BANDS)
               for bit in rng.sample(range(duplicates.BAND_BITS), duplicates.UNCERTAIN_BITS))


@pytest.mark.parametrize("drop", [False, True], ids=["report", "drop"])
def test_the_banded_index_finds_what_brute_force_finds(drop):
    """Random hashes and thumbnails (unlike: the gate turns them away); near ones: an earlier image's hash
    with bits flipped (anywhere, or 3 of each band's uncertain ones: only the uncertain look-ups reach those)
    and its thumbnail, noisier (a copy) or another (a look-alike)."""
    rng, noise = random.Random(7), np.random.default_rng(7)
    size = likeness.THUMBNAIL_SIZE

    def thumbnail() -> bytes:
        return noise.integers(0, 256, (size, size), dtype=np.uint8).tobytes()

    prints = [
        duplicates.Fingerprint(f"d{i}", rng.getrandbits(64), 1, 1, thumbnail(), _uncertain(rng)) for i in range(1500)
    ]
    for i in range(300):
        earlier, uncertain = rng.choice(prints), _uncertain(rng)
        if i % 3:
            flips = rng.sample(range(64), rng.randint(0, duplicates.HASH_RADIUS + 2))
        else:
            flips = [b for b in range(64) if uncertain >> b & 1]
            flips = [b for band in range(duplicates.NUM_BANDS) for b in rng.sample(flips[band * 6:band * 6 + 6], 3)]
        pixels = np.frombuffer(earlier.thumbnail, np.uint8).astype(np.int16) + noise.integers(-3, 4, size * size)
        copy = np.clip(pixels, 0, 255).astype(np.uint8).tobytes() if i % 5 else thumbnail()
        phash = earlier.phash ^ sum(1 << b for b in flips)
        prints.insert(rng.randrange(len(prints) + 1), duplicates.Fingerprint(f"n{i}", phash, 1, 1, copy, uncertain))
    for _ in range(50):  # byte-identical copies, placed later than their original
        at = rng.randrange(1, len(prints) + 1)
        prints.insert(at, prints[rng.randrange(at)])
    index = duplicates.DuplicateIndex(drop=drop)
    for i, print_ in enumerate(prints):
        index.add(f"p{i}", "train", print_)
    banded = [(int(p.path[1:]), int(p.original_path[1:]), p.distance) for p in index.pairs]
    assert len(banded) > 200 and len(prints) > duplicates.RECENT_LIMIT + 2 * duplicates.BATCH
    assert sum(d == 12 for _, _, d in banded) > 5  # reached through the uncertain bits only
    assert banded == _brute_force(prints, drop)


def test_a_manifest_without_duplicates_or_scores_still_reads(reported):
    _, out = reported
    data = json.loads((out / schema.MANIFEST_FILENAME).read_text())
    for pair in data["duplicates"]:
        del pair["score"]  # as before the scores
    assert {pair.score for pair in schema.Manifest.from_json(data).duplicates} == {None}
    data["duplicates"][0]["score"] = "high"
    with pytest.raises(ValueError, match=r"^duplicates\[0\]\.score must be null or a number from 0 to 1, got \"high\""):
        schema.Manifest.from_json(data)
    del data["duplicates"]
    assert schema.Manifest.from_json(data).duplicates == ()


def test_real_photos_copies_are_reported(tmp_path):
    """One copy of each kind of four real photos, among 20 (skipped where ../shared has no photos)."""
    photos = require_cat_dog_small()
    src = tmp_path / "photos"
    for class_name in ("cats", "dogs"):
        (src / "train" / class_name).mkdir(parents=True)
        (src / "validation" / class_name).mkdir(parents=True)
        for path in sorted((photos / "train" / class_name).glob("*.jpg"))[:10]:
            shutil.copyfile(path, src / "train" / class_name / path.name)
    cat, dog = sorted((src / "train/cats").iterdir()), sorted((src / "train/dogs").iterdir())
    planted = {}
    for (kind, photo), name in zip(zip(duplicate_quality.KINDS, (cat[0], dog[0], cat[1], dog[1])), "abcd"):
        copy = src / "validation" / photo.parent.name / f"{name}.jpg"
        _plant(photo, copy, kind)
        planted[os.path.relpath(copy, src)] = os.path.relpath(photo, src)
    summary = convert(src, tmp_path / "records", num_shards=1)
    assert _pairs(summary.manifest, src) == {(copy, photo, False) for copy, photo in planted.items()}


def test_the_summary_counts_one_pair_as_a_pair():
    pair = schema.DuplicatePair("b.jpg", "train", "a.jpg", "train", distance=0, identical=True, score=1.0)
    first, listed = duplicates.summary_lines((pair,), duplicates.DuplicateMode.REPORT)
    assert first.startswith("  duplicates       1 pair (1 byte-identical, 0 near:")
    assert listed == "    b.jpg = a.jpg (identical)"
