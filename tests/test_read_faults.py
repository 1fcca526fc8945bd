"""Damaged records folders: every read fails with a clear error, never a short epoch.

Shards cut short (at a record boundary, inside a record's header, inside its
data), a manifest count lowered by one, a label outside the classes and a
damaged manifest.json, each read through `read.read_records`,
`train_dataset` and `eval_dataset`; then a seeded fuzz test of byte flips.
The helpers that damage a folder are in support/damage.py.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
import tensorflow as tf

from support.damage import (
    copy_records,
    cut_shard,
    edit_manifest,
    lower_count,
    make_records,
    record_starts,
    record_with,
    rewrite_record,
    set_bytes,
    shard_file,
)
from pipeline import cli
from pipeline import schema
from pipeline import verify
from pipeline.reader import dataset
from pipeline.reader import read

CONFIG = dataset.InputConfig(image_size=(8, 8), batch_size=3, class_mode="sparse")
READERS = {
    "read_records": lambda records, split: read.read_records(str(records), split),
    "train_dataset": lambda records, split: dataset.train_dataset(str(records), CONFIG, split),
    "eval_dataset": lambda records, split: dataset.eval_dataset(str(records), split, CONFIG),
}
FUZZ_SEED = 20261128
FUZZ_CASES = 40


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> Path:
    """A sound records folder: copy it before damaging it."""
    return make_records(tmp_path_factory.mktemp("read_faults"))


# --------------------------------------------------------------------------
# Shards with the wrong number of records.


def _short_at_boundary(records: Path) -> tuple[str, str]:
    path = shard_file(records, "train", 1)
    cut_shard(path, record_starts(path)[-2])  # the last record, gone whole
    return path.name, "holds 3 records, but manifest.json says 4"


def _short_in_header(records: Path) -> tuple[str, str]:
    # TFRecordDataset ends quietly inside a length field: only the count shows it.
    path = shard_file(records, "train", 1)
    cut_shard(path, record_starts(path)[-2] + 5)
    return path.name, "holds 3 records, but manifest.json says 4"


def _count_lowered(records: Path) -> tuple[str, str]:
    lower_count(records, "train", 2)
    return shard_file(records, "train", 2).name, "holds at least 4 records, but manifest.json says 3"


COUNT_FAULTS = {
    "truncated at a record boundary": _short_at_boundary,
    "truncated inside a length field": _short_in_header,
    "manifest count lowered by one": _count_lowered,
}


@pytest.mark.parametrize("max_block", [64, 3], ids=["one block", "blocks of 3"])
@pytest.mark.parametrize("reader", sorted(READERS))
@pytest.mark.parametrize("fault", sorted(COUNT_FAULTS))
def test_a_wrong_record_count_fails_naming_the_shard(records, tmp_path, monkeypatch, fault, reader, max_block):
    monkeypatch.setattr(read, "_MAX_BLOCK_RECORDS", max_block)
    damaged = copy_records(records, tmp_path / "records")
    shard, counts = COUNT_FAULTS[fault](damaged)
    ds = READERS[reader](damaged, "train")
    with pytest.raises(tf.errors.InvalidArgumentError) as raised:
        for _ in ds:
            pass
    assert str(damaged / shard) in raised.value.message
    assert cli.error_text(raised.value) == f"{damaged / shard}: the shard {counts}"


def test_the_count_is_checked_at_every_block_boundary(records, tmp_path, monkeypatch):
    """Blocks of 2 in shards of 4: a shard cut to 2 ends exactly at a block."""
    monkeypatch.setattr(read, "_MAX_BLOCK_RECORDS", 2)
    damaged = copy_records(records, tmp_path / "records")
    path = shard_file(damaged, "train", 0)
    cut_shard(path, record_starts(path)[2])
    with pytest.raises(tf.errors.InvalidArgumentError, match="holds 2 records, but manifest.json says 4"):
        list(read.read_records(str(damaged), "train"))


@pytest.mark.parametrize("max_block", [64, 3, 1])
def test_sound_shards_read_whole_in_any_block_size(records, monkeypatch, max_block):
    monkeypatch.setattr(read, "_MAX_BLOCK_RECORDS", max_block)
    expected = sorted(
        record.numpy()
        for split_path in schema.read_manifest(str(records)).shard_paths(str(records), "train")
        for record in tf.data.TFRecordDataset(split_path)
    )
    assert sorted(record.numpy() for record in read.read_records(str(records), "train")) == expected


def test_the_count_check_and_label_check_work_eagerly():
    shard = (tf.constant("x.tfrecord"), tf.constant(6, tf.int64))
    records = tf.constant(["a", "b"])
    # Block 2 of 2 records: records 4 and 5 of a shard of 6, or 2 too many for a shard of 4.
    assert read.check_block(records, tf.constant(2, tf.int64), shard, 2).numpy().tolist() == [b"a", b"b"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="x.tfrecord: the shard holds at least 6 records"):
        read.check_block(records, tf.constant(2, tf.int64), (shard[0], tf.constant(4, tf.int64)), 2)
    label = tf.constant(1, tf.int64)
    assert read.check_label(label, 2, shard[0], tf.constant(0, tf.int64)).numpy() == 1
    with pytest.raises(tf.errors.InvalidArgumentError, match="x.tfrecord: record 3: label 1 is not"):
        read.check_label(label, 1, shard[0], tf.constant(3, tf.int64))


# --------------------------------------------------------------------------
# Damaged records.


@pytest.mark.parametrize("reader", sorted(READERS))
def test_a_record_cut_inside_its_data_is_data_loss_that_find_damage_places(records, tmp_path, reader):
    """TensorFlow's DataLossError names no file (TF 2.21): find_damage does."""
    damaged = copy_records(records, tmp_path / "records")
    path = shard_file(damaged, "train", 0)
    third = record_starts(path)[2]
    cut_shard(path, third + 30)
    with pytest.raises(tf.errors.DataLossError) as raised:
        list(READERS[reader](damaged, "train"))
    assert path.name not in raised.value.message  # what find_damage is for
    assert cli.error_text(raised.value) == f"truncated record at {third}: Read less bytes than requested"
    damage = verify.find_damage(str(damaged))
    assert [(p.file, p.index) for p in damage.problems if p.index is not None] == [(path.name, 2)]
    assert "truncated record" in damage.problems[-1].reason


@pytest.mark.parametrize("label", [7, 2, -1])
@pytest.mark.parametrize("reader", ["train_dataset", "eval_dataset"])
def test_a_label_outside_the_classes_fails_naming_it(records, tmp_path, reader, label):
    damaged = copy_records(records, tmp_path / "records")
    rewrite_record(damaged, "train", 2, 1, record_with(damaged, "train", 2, 1, label=label))
    with pytest.raises(tf.errors.InvalidArgumentError) as raised:
        list(READERS[reader](damaged, "train"))
    shard = shard_file(damaged, "train", 2)
    expected = f"{shard}: record 1: label {label} is not a class index: the manifest has 2 classes"
    assert expected in raised.value.message
    assert cli.error_text(raised.value) == expected


# --------------------------------------------------------------------------
# A damaged manifest: one ValueError naming the file, whatever the damage.


def _shard0(data):
    return data["splits"]["train"]["shards"][0]


MANIFEST_DAMAGE = {
    "not JSON": ("text", '{"splits": ', "not valid JSON"),
    "not UTF-8": ("bytes", b'{"a": "\xff"}', "not UTF-8"),
    "a list": ("text", "[]", "the manifest must be an object"),
    "no splits": (lambda d: d.pop("splits"), "has no 'splits'"),
    "no class names": (lambda d: d.pop("class_names"), "has no 'class_names'"),
    "no source": (lambda d: d.pop("source"), "has no 'source'"),
    "shard without a count": (lambda d: _shard0(d).pop("num_examples"), "shards[0] has no 'num_examples'"),
    "count as a string": (lambda d: _shard0(d).update(num_examples="4"), "num_examples must be a whole number"),
    "count as true": (lambda d: _shard0(d).update(num_examples=True), "num_examples must be a whole number"),
    "count as a fraction": (lambda d: _shard0(d).update(num_examples=4.5), "num_examples must be a whole number"),
    "negative count": (lambda d: _shard0(d).update(num_examples=-1), "num_examples must be a whole number"),
    "negative bytes": (lambda d: _shard0(d).update(num_bytes=-5), "num_bytes must be a whole number"),
    "parent folder": (lambda d: _shard0(d).update(filename=".."), "must be a file name in the records folder"),
    "path outside": (lambda d: _shard0(d).update(filename="../x"), "must be a file name in the records folder"),
    "absolute path": (lambda d: _shard0(d).update(filename="/etc/passwd"), "must be a file name in the records"),
    "backslash": (lambda d: _shard0(d).update(filename="..\\x"), "must be a file name in the records folder"),
    "filename a number": (lambda d: _shard0(d).update(filename=3), "filename must be a string"),
    "shards not a list": (lambda d: d["splits"]["train"].update(shards={}), "shards must be a list"),
    "no shards": (lambda d: d["splits"]["train"].update(shards=[]), "shards must be a non-empty list"),
    "shard listed twice": (
        lambda d: d["splits"]["validation"]["shards"][0].update(filename=_shard0(d)["filename"]), "listed twice"),
    "split total off": (lambda d: d["splits"]["train"].update(num_examples=11), "shards add up to 12"),
    "class counts off": (
        lambda d: d["splits"]["train"]["class_counts"].update(cats=5), "class_counts add up to 11"),
    "unknown class": (
        lambda d: d["splits"]["train"]["class_counts"].update(cows=0), "'cows', which is not in class_names"),
    "no classes": (lambda d: d.update(class_names=[]), "non-empty list of distinct class names"),
    "a class twice": (lambda d: d.update(class_names=["cats", "cats"]), "distinct class names"),
    "bad stored size": (lambda d: d.update(stored_size=[0, 5]), "stored_size must be null or [height, width]"),
    "newer schema": (lambda d: d.update(schema_version=3), "schema version 3"),
    "schema as a string": (lambda d: d.update(schema_version="2"), "schema version 2"),
}


def _damage_manifest(records: Path, damage) -> None:
    if damage[0] == "text":
        (records / schema.MANIFEST_FILENAME).write_text(damage[1])
    elif damage[0] == "bytes":
        (records / schema.MANIFEST_FILENAME).write_bytes(damage[1])
    else:
        edit_manifest(records, damage[0])


@pytest.mark.parametrize("damage", sorted(MANIFEST_DAMAGE))
def test_a_damaged_manifest_is_one_value_error_naming_it(records, tmp_path, damage):
    damaged = copy_records(records, tmp_path / "records")
    _damage_manifest(damaged, MANIFEST_DAMAGE[damage])
    manifest_path = str(damaged / schema.MANIFEST_FILENAME)
    for read in (lambda: schema.read_manifest(str(damaged)), lambda: READERS["eval_dataset"](damaged, "train")):
        with pytest.raises(ValueError) as raised:
            read()
        message = str(raised.value)
        assert message.startswith(f"{manifest_path}: ") and "\n" not in message
        assert MANIFEST_DAMAGE[damage][-1] in message
    problems = verify.verify_records(str(damaged)).problems
    assert [problem.file for problem in problems] == [schema.MANIFEST_FILENAME]


# --------------------------------------------------------------------------
# Fuzz: random bytes changed in shards and in the manifest.


def test_fuzzed_folders_fail_clearly_or_read_whole(records, tmp_path):
    """Each case changes 1-3 random bytes of a shard or of manifest.json. Reading
    must raise a clear error or give exactly the manifest's examples; verify
    must name a flipped shard and the record. (Under xdist, as the README runs
    the suite, a crash would end only this test's worker and fail this test.)"""
    manifest = schema.read_manifest(str(records))
    sizes = {split: info.num_examples for split, info in manifest.splits.items()}
    rng = random.Random(FUZZ_SEED)
    cases = [_fuzz_case(records, tmp_path, rng, number) for number in range(FUZZ_CASES)]
    for case in cases:
        reads = case["reads"].values()
        for split, read in case["reads"].items():
            if read["kind"] == "ok":  # all the examples, no more
                assert read["count"] == sizes[split] and read["labels_ok"], case
            elif read["type"] == "DataLossError":
                assert case["target"] != schema.MANIFEST_FILENAME, case
                assert _names_the_record(read["damage"], case), case
            else:
                assert _names_the_file(read, case), case
        if case["target"] != schema.MANIFEST_FILENAME:  # a CRC covers every byte of a shard
            assert _names_the_record(case["verify"], case), case
        # Verify finds what made a read fail, but a renamed split: that manifest is sound.
        elif any(read["kind"] == "error" and not read["message"].startswith("split ") for read in reads):
            assert case["verify"], case
    assert {case["target"] == schema.MANIFEST_FILENAME for case in cases} == {True, False}


_NAME_BYTES = b"0123456789abcdefghijklmnopqrstuvwxyz"


def _names_the_file(read: dict, case: dict) -> bool:
    """A clear error: the damaged manifest's path first, or a shard file and what is wrong
    with it, or (a split renamed in the manifest) the split and the folder."""
    folder, message = re.escape(case["dir"]), read["message"]
    if read["type"] == "InputError":  # cli.InputError, a ValueError
        return bool(re.match(rf"({folder}/manifest\.json: |split '\w+' is not in {folder} )", message))
    shard_error = {"InvalidArgumentError": ": the shard holds ", "NotFoundError": "; No such file or directory"}
    what = shard_error.get(read["type"])
    return what is not None and bool(re.search(rf"{folder}/[^/\s]+{what}", message))


def _names_the_record(problems: list[str], case: dict) -> bool:
    """A problem line names the changed shard and the record of its first changed byte."""
    return any(line.startswith(f"{case['target']}: record {case['record']}: ") for line in problems)


def _fuzz_case(records: Path, work: Path, rng: random.Random, number: int) -> dict:
    """One case: a copy of `records` with 1-3 bytes of one file changed, read and verified."""
    case_dir = copy_records(records, work / f"case{number:02d}")
    manifest = schema.read_manifest(str(case_dir))
    split_of = {shard.filename: name for name, split in manifest.splits.items() for shard in split.shards}
    target = rng.choice([schema.MANIFEST_FILENAME] * len(split_of) + list(split_of))
    data = (case_dir / target).read_bytes()
    # In the manifest, letters and digits become others: most such manifests
    # still parse, and the damage reaches names and counts. Shards: any byte.
    alphabet = _NAME_BYTES if target == schema.MANIFEST_FILENAME else range(256)
    offsets = rng.sample([i for i, byte in enumerate(data) if byte in alphabet], rng.randint(1, 3))
    values = [rng.choice([b for b in alphabet if b != data[offset]]) for offset in offsets]
    set_bytes(case_dir / target, offsets, values)
    case = {"number": number, "dir": str(case_dir), "target": target, "offsets": offsets, "reads": {}}
    if target != schema.MANIFEST_FILENAME:
        starts = record_starts(records / target)
        case["record"] = max(i for i, start in enumerate(starts) if start <= min(offsets))
    # A flipped shard leaves the other splits as they were.
    for split in [split_of[target]] if target in split_of else manifest.splits:
        case["reads"][split] = _fuzz_read(case_dir, split)
    case["verify"] = [problem.format() for problem in verify.verify_records(str(case_dir)).problems]
    return case


def _fuzz_read(records: Path, split: str) -> dict:
    """An evaluation pass over a split: its count and labels, or the error."""
    try:
        labels = [int(label) for _, batch in READERS["eval_dataset"](records, split) for label in batch]
    except (ValueError, tf.errors.OpError) as e:
        read = {"kind": "error", "type": type(e).__name__, "message": str(e)}
        if isinstance(e, tf.errors.DataLossError):
            read["damage"] = [problem.format() for problem in verify.find_damage(str(records)).problems]
        return read
    return {"kind": "ok", "count": len(labels), "labels_ok": all(0 <= label < 2 for label in labels)}
