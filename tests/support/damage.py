"""Damaging a records folder on purpose: cut shards, flipped bytes, edited manifests.

The read-fault and verify tests damage a copy of `make_records`'s folder with
these, then check that each damage is found and named.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import tensorflow as tf

from pipeline import schema
from support.images import make_image_tree
from support.records import convert

DAMAGE_COUNTS = {"train": {"cats": 6, "dogs": 6}, "validation": {"cats": 3, "dogs": 3}}
DAMAGE_SHARDS = 3  # train: 3 shards of 4 records; validation: 3 of 2


def make_records(root: Path, **kwargs) -> Path:
    """A sound records folder of tiny images (16x16 and 20x24) under `root`."""
    tree = make_image_tree(root / "pets", "split", DAMAGE_COUNTS, [(16, 16), (20, 24)])
    convert(tree.root, root / "records", num_shards=DAMAGE_SHARDS, **kwargs)
    return root / "records"



def copy_records(records: Path, dst: Path) -> Path:
    shutil.copytree(records, dst)
    return dst


def shard_file(records: Path, split: str, k: int) -> Path:
    return Path(records) / schema.read_manifest(str(records)).splits[split].shards[k].filename


def record_starts(path: Path) -> list[int]:
    """Byte offsets of each record of a TFRecord file, and of its end."""
    data = Path(path).read_bytes()
    starts = [0]
    while starts[-1] < len(data):
        (length,) = struct.unpack("<Q", data[starts[-1] : starts[-1] + 8])
        starts.append(starts[-1] + 8 + 4 + length + 4)  # length, its CRC, data, its CRC
    return starts


def cut_shard(path: Path, size: int) -> None:
    """Truncates a file to `size` bytes."""
    with open(path, "r+b") as f:
        f.truncate(size)


def set_bytes(path: Path, offsets, values) -> None:
    """Overwrites the bytes at `offsets` with `values`."""
    data = bytearray(Path(path).read_bytes())
    for offset, value in zip(offsets, values):
        data[offset] = value
    Path(path).write_bytes(bytes(data))


def edit_manifest(records: Path, edit) -> None:
    """Applies `edit` to the manifest's JSON dict and writes it back."""
    path = Path(records) / schema.MANIFEST_FILENAME
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=2))


def lower_count(records: Path, split: str, k: int) -> None:
    """The manifest says shard k holds one record fewer, its totals agreeing."""

    def edit(data):
        info = data["splits"][split]
        info["shards"][k]["num_examples"] -= 1
        info["num_examples"] -= 1
        info["class_counts"][max(info["class_counts"], key=info["class_counts"].get)] -= 1

    edit_manifest(records, edit)


def rewrite_record(records: Path, split: str, k: int, index: int, serialized: bytes) -> None:
    """Replaces record `index` of shard k; the manifest's byte sizes follow."""
    path = shard_file(records, split, k)
    old = [record.numpy() for record in tf.data.TFRecordDataset(str(path))]
    old[index] = serialized
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in old:
            writer.write(record)
    size = path.stat().st_size

    def edit(data):
        info = data["splits"][split]
        info["num_bytes"] += size - info["shards"][k]["num_bytes"]
        info["shards"][k]["num_bytes"] = size

    edit_manifest(records, edit)


def read_features(records: Path, split: str, k: int, index: int) -> dict:
    """The feature values of record `index` of shard k."""
    serialized = list(tf.data.TFRecordDataset(str(shard_file(records, split, k))).skip(index).take(1))[0]
    return {key: value.numpy() for key, value in schema.parse_example(serialized).items()}


def record_with(records: Path, split: str, k: int, index: int, **values) -> bytes:
    """Record `index` of shard k re-serialized with some features replaced."""
    return schema.serialize_example({**read_features(records, split, k, index), **values})
