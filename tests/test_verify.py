"""pipeline.verify and verify.py: every problem of a records folder, by shard and record."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import pytest
from PIL import Image

from pipeline.commands import VERIFY
from support import cli
from pipeline import schema
from pipeline import verify
from support.damage import (
    copy_records,
    cut_shard,
    edit_manifest,
    lower_count,
    make_records,
    read_features,
    record_starts,
    record_with,
    rewrite_record,
    set_bytes,
    shard_file,
)


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> Path:
    """A sound folder: 12 train records in 3 shards, 6 validation in 3."""
    return make_records(tmp_path_factory.mktemp("verify"))


@pytest.fixture
def damaged(records, tmp_path) -> Path:
    return copy_records(records, tmp_path / "records")


def _found(report: verify.VerifyReport) -> list[tuple[str, int | None, str]]:
    return [(problem.file, problem.index, problem.reason) for problem in report.problems]


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


def test_a_sound_folder_is_ok(records):
    report = verify.verify_records(str(records))
    assert report.ok and report.problems == ()
    assert (report.num_shards, report.num_records) == (6, 18)
    assert report.format().splitlines() == [
        f"{records}: 18 records in 6 shards, checked in {report.seconds:.1f} s: OK"
    ]
    assert report.summary() == f"{records}: no problems"
    assert verify.find_damage(str(records)).ok


def test_a_folder_stored_resized_is_ok(tmp_path):
    records = make_records(tmp_path, image_size=(12, 10))
    assert verify.verify_records(str(records)).ok
    edit_manifest(records, lambda data: data.update(stored_size=[12, 12]))
    report = verify.verify_records(str(records))
    assert len(report.problems) == 18
    assert report.problems[0].reason == "the image is 12x10, the manifest says all are 12x12"


# --------------------------------------------------------------------------
# Each check: what it finds, where.


def _missing(records):
    os.remove(shard_file(records, "train", 1))
    return [("train", 1, None, "missing: the manifest lists it, the folder has no such file")]


def _resized(records):
    size = shard_file(records, "train", 1).stat().st_size

    def one_more_byte(data):
        data["splits"]["train"]["shards"][1]["num_bytes"] += 1
        data["splits"]["train"]["num_bytes"] += 1

    edit_manifest(records, one_more_byte)
    return [("train", 1, None, f"{size} bytes, but the manifest says {size + 1}")]


def _checksum(records):
    path = shard_file(records, "validation", 0)
    offset = record_starts(path)[1] + 20
    set_bytes(path, [offset], [path.read_bytes()[offset] ^ 1])
    return [("validation", 0, 1, "unreadable: corrupted record at ")]


def _cut(records):
    path = shard_file(records, "train", 0)
    starts = record_starts(path)
    cut_shard(path, starts[3] + 7)
    return [
        ("train", 0, None, f"{starts[3] + 7} bytes, but the manifest says {starts[-1]}"),
        ("train", 0, 3, "cut short: the shard ends 7 bytes into it (the manifest says 4 records)"),
    ]


def _not_an_example(records):
    rewrite_record(records, "train", 2, 1, b"not a record")
    return [("train", 2, 1, "does not parse: ")]


def _not_a_jpeg(records):
    rewrite_record(records, "train", 2, 3, record_with(records, "train", 2, 3, image=_png()))
    return [("train", 2, 3, "the image is not a JPEG")]


def _broken_jpeg(records):
    jpeg = read_features(records, "train", 2, 0)[schema.IMAGE_KEY]
    rewrite_record(records, "train", 2, 0, record_with(records, "train", 2, 0, image=jpeg[: len(jpeg) // 2]))
    return [("train", 2, 0, "does not decode: ")]


def _wrong_size(records):
    features = read_features(records, "validation", 2, 1)
    height, width = features[schema.HEIGHT_KEY], features[schema.WIDTH_KEY]
    rewrite_record(records, "validation", 2, 1, record_with(records, "validation", 2, 1, height=height + 1))
    return [("validation", 2, 1, f"the image is {height}x{width}, the record says {height + 1}x{width}")]


def _bad_label(records):
    rewrite_record(records, "train", 0, 2, record_with(records, "train", 0, 2, label=5))
    return [("train", 0, 2, "label 5 is not a class index: the manifest has 2 classes")]


def _lowered(records):
    lower_count(records, "train", 1)
    return [("train", 1, 3, "extra: the manifest says 3 records, the shard holds 4")]


def _class_counts(records):
    edit_manifest(records, lambda d: d["splits"]["validation"]["class_counts"].update(cats=4, dogs=2))
    reason = "split 'validation': the records hold cats 3, dogs 3, the manifest says cats 4, dogs 2"
    return [(None, None, None, reason)]


def _bad_manifest(records):
    (records / schema.MANIFEST_FILENAME).write_text('{"splits": [')
    return [(None, None, None, "not valid JSON: ")]


def _no_manifest(records):
    os.remove(records / schema.MANIFEST_FILENAME)
    return [(None, None, None, "missing: run convert.py first")]


FAULTS = {
    "shard missing": _missing,
    "shard size": _resized,
    "checksum": _checksum,
    "cut inside a length field": _cut,
    "record not an Example": _not_an_example,
    "image not a JPEG": _not_a_jpeg,
    "JPEG cut in half": _broken_jpeg,
    "stored size wrong": _wrong_size,
    "label out of range": _bad_label,
    "count lowered": _lowered,
    "class counts": _class_counts,
    "manifest not JSON": _bad_manifest,
    "manifest missing": _no_manifest,
}


# What only decoding the images finds.
IMAGE_FAULTS = ("image not a JPEG", "JPEG cut in half", "stored size wrong")


@pytest.mark.parametrize("fault", sorted(FAULTS))
@pytest.mark.parametrize("decode", [True, False], ids=["decode", "records"])
def test_each_problem_is_found_where_it_is(damaged, fault, decode):
    expected = FAULTS[fault](damaged)
    found = _found(verify.verify_records(str(damaged), decode=decode))
    if not decode and fault in IMAGE_FAULTS:
        assert found == []
        return
    assert len(found) == len(expected), found
    for (file, index, reason), (split, k, want_index, want) in zip(found, expected):
        want_file = schema.MANIFEST_FILENAME if split is None else shard_file(damaged, split, k).name
        assert (file, index) == (want_file, want_index), found
        assert reason.startswith(want), found


def test_the_folder_must_exist(tmp_path):
    report = verify.verify_records(str(tmp_path / "nowhere"))
    reason = "missing (the folder does not exist): run convert.py first"
    assert _found(report) == [(schema.MANIFEST_FILENAME, None, reason)]


def test_find_damage_decodes_no_image(damaged):
    _not_a_jpeg(damaged)
    assert verify.find_damage(str(damaged)).ok
    _checksum(damaged)
    _lowered(damaged)
    _bad_label(damaged)
    assert [(p.file, p.index) for p in verify.find_damage(str(damaged)).problems] == [
        (shard_file(damaged, "train", 0).name, 2),
        (shard_file(damaged, "train", 1).name, 3),
        (shard_file(damaged, "validation", 0).name, 1),
    ]


def test_report_lines_and_the_cap_per_shard(damaged, monkeypatch):
    monkeypatch.setattr(verify, "MAX_PROBLEMS_PER_SHARD", 3)
    edit_manifest(damaged, lambda d: d.update(stored_size=[16, 16]))  # the 20x24 images are wrong
    for k in range(3):
        for index in range(4):
            rewrite_record(damaged, "train", k, index, record_with(damaged, "train", k, index, label=9))
    report = verify.verify_records(str(damaged))
    lines = report.format().splitlines()
    assert lines[0].startswith(f"{damaged}: 18 records in 6 shards, checked in ")
    assert lines[0].endswith(f": {len(report.problems)} problems")
    assert lines[1:] == [f"  {problem.format()}" for problem in report.problems]
    # Each train shard has 4 bad labels and 2 or 3 bad sizes: 2 lines, then the rest counted.
    train0 = report.by_file()[shard_file(damaged, "train", 0).name]
    assert len(train0) == 3 and train0[0].index == 0 and train0[1].index in (0, 1)
    assert train0[-1].index is None and re.fullmatch(r"and \d more problems", train0[-1].reason)
    assert report.summary().startswith(f"{damaged}: {train0[0].format()} (and ")


# --------------------------------------------------------------------------
# verify.py: three runs of its command line in one child process.


def _damage_everywhere(damaged: Path) -> list[tuple[Path, int, str]]:
    """Faults of test_read_faults.py, all in one folder: (shard, record, what verify says)."""
    train = [shard_file(damaged, "train", k) for k in range(3)]
    validation = [shard_file(damaged, "validation", k) for k in range(3)]
    cut_shard(train[0], record_starts(train[0])[-2])
    cut_shard(train[1], record_starts(train[1])[-2] + 5)
    rewrite_record(damaged, "train", 2, 1, record_with(damaged, "train", 2, 1, label=7))
    cut_shard(validation[0], record_starts(validation[0])[1] + 30)
    lower_count(damaged, "validation", 1)
    set_bytes(validation[2], [40], [0x20 ^ validation[2].read_bytes()[40]])
    return [
        (train[0], 3, "missing"),
        (train[1], 3, "cut short"),
        (train[2], 1, "label 7 is not a class index"),
        (validation[0], 1, "unreadable: truncated record"),
        (validation[1], 1, "extra: the manifest says 1 records, the shard holds 2"),
        (validation[2], 0, "unreadable: corrupted record"),
    ]


@pytest.fixture(scope="module")
def verify_py(records, tmp_path_factory) -> dict:
    """name -> CompletedProcess of verify.py's main (in this process): on the sound folder, on a damaged copy, without flags."""
    damaged = copy_records(records, tmp_path_factory.mktemp("verify_py") / "records")
    expected = _damage_everywhere(damaged)
    image = copy_records(records, tmp_path_factory.mktemp("verify_py") / "image")
    _broken_jpeg(image)
    cases = {
        "sound": [f"--records={records}"], "damaged": [f"--records={damaged}"], "no flags": [],
        "image": [f"--records={image}"], "image decoded": [f"--records={image}", "--decode"],
    }
    return {**cli.cases(VERIFY, cases), "damaged_dir": damaged, "expected": expected, "image_dir": image}


def test_verify_py_exits_0_on_a_sound_folder(records, verify_py):
    result = verify_py["sound"]
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith(f"{records}: 18 records in 6 shards")
    assert result.stdout.strip().endswith(": OK")


def test_verify_py_names_every_bad_shard_and_record(verify_py):
    result, damaged = verify_py["damaged"], verify_py["damaged_dir"]
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{damaged}: ") and lines[0].endswith("problems")
    for path, index, reason in verify_py["expected"]:
        assert any(f"{path.name}: record {index}: {reason}" in line for line in lines), (path.name, lines)
    assert result.stderr.strip().splitlines()[-1] == f"verify.py: error: {len(lines) - 1} problems in {damaged}"


def test_verify_py_without_records_is_a_one_line_error(verify_py):
    result = verify_py["no flags"]
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("verify.py: error: ")
    assert "records" in result.stderr.strip().splitlines()[-1]


def test_verify_py_decodes_the_images_with_decode(verify_py):
    assert verify_py["image"].returncode == 0, verify_py["image"].stdout
    result = verify_py["image decoded"]
    assert result.returncode == 1
    broken = shard_file(verify_py["image_dir"], "train", 2).name
    assert f"  {broken}: record 0: does not decode: " in result.stdout, result.stdout
