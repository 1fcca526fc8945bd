"""The record schema: one module that the writer and the reader both use.

Each image is one `tf.train.Example` with the features named below. The
manifest (`manifest.json`, beside the shards) describes the whole folder:
class names, per-split counts, the shard files and the image settings.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import tensorflow as tf

SCHEMA_VERSION = 1
MANIFEST_FILENAME = "manifest.json"
FILE_FORMAT = "tfrecord"

# Feature keys. The names are also the TFDS feature names, so the records read
# through `tfds.builder_from_directory` with the same keys.
IMAGE_KEY = "image"  # bytes: the encoded image (JPEG, RGB).
LABEL_KEY = "label"  # int64: index into the manifest's class names.
CLASS_NAME_KEY = "class_name"  # bytes: UTF-8 class folder name.
HEIGHT_KEY = "height"  # int64: stored image height in pixels.
WIDTH_KEY = "width"  # int64: stored image width in pixels.
FORMAT_KEY = "format"  # bytes: encoding of IMAGE_KEY, e.g. b"jpeg".
FILENAME_KEY = "filename"  # bytes: source path relative to the split folder.

FEATURE_SPEC = {
    IMAGE_KEY: tf.io.FixedLenFeature([], tf.string),
    LABEL_KEY: tf.io.FixedLenFeature([], tf.int64),
    CLASS_NAME_KEY: tf.io.FixedLenFeature([], tf.string),
    HEIGHT_KEY: tf.io.FixedLenFeature([], tf.int64),
    WIDTH_KEY: tf.io.FixedLenFeature([], tf.int64),
    FORMAT_KEY: tf.io.FixedLenFeature([], tf.string),
    FILENAME_KEY: tf.io.FixedLenFeature([], tf.string),
}


@dataclasses.dataclass(frozen=True)
class ImageRecord:
    """One converted image, ready to serialize."""

    encoded: bytes
    label: int
    class_name: str
    height: int
    width: int
    image_format: str
    filename: str


def _bytes_feature(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int64_feature(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))


def serialize_example(record: ImageRecord) -> bytes:
    """Serializes one image to a `tf.train.Example` byte string."""
    feature = {
        IMAGE_KEY: _bytes_feature(record.encoded),
        LABEL_KEY: _int64_feature(record.label),
        CLASS_NAME_KEY: _bytes_feature(record.class_name.encode("utf-8")),
        HEIGHT_KEY: _int64_feature(record.height),
        WIDTH_KEY: _int64_feature(record.width),
        FORMAT_KEY: _bytes_feature(record.image_format.encode("utf-8")),
        FILENAME_KEY: _bytes_feature(record.filename.encode("utf-8")),
    }
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    return example.SerializeToString()


def parse_example(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """Parses one serialized Example.

    Args:
      serialized: scalar `tf.string`.

    Returns:
      A dict with the FEATURE_SPEC keys: scalar `tf.string` for IMAGE_KEY,
      CLASS_NAME_KEY, FORMAT_KEY and FILENAME_KEY; scalar `tf.int64` for
      LABEL_KEY, HEIGHT_KEY and WIDTH_KEY.
    """
    return tf.io.parse_single_example(serialized, FEATURE_SPEC)


@dataclasses.dataclass(frozen=True)
class ShardInfo:
    """One TFRecord file of a split."""

    filename: str  # relative to the records folder
    num_examples: int
    num_bytes: int


@dataclasses.dataclass(frozen=True)
class SplitInfo:
    """The shards and counts of one split."""

    name: str
    shards: tuple[ShardInfo, ...]
    class_counts: dict[str, int]

    @property
    def num_examples(self) -> int:
        return sum(shard.num_examples for shard in self.shards)

    @property
    def num_bytes(self) -> int:
        return sum(shard.num_bytes for shard in self.shards)


@dataclasses.dataclass(frozen=True)
class Manifest:
    """What a records folder holds; written last, so its presence means done.

    Attributes:
      dataset_name: TFDS-style snake_case name, also the shard file prefix.
      class_names: label index -> class name.
      splits: split name -> SplitInfo.
      stored_size: (height, width) every image was resized to at conversion,
        or None when the original sizes were kept.
      jpeg_quality: quality of the JPEGs the converter encoded (images that
        were already RGB JPEGs are stored byte for byte).
      source: the folder the records were converted from.
      skipped: files that could not be decoded, with the reason.
      schema_version: SCHEMA_VERSION of the writer.
    """

    dataset_name: str
    class_names: tuple[str, ...]
    splits: dict[str, SplitInfo]
    stored_size: tuple[int, int] | None
    jpeg_quality: int
    source: str
    skipped: tuple[dict[str, str], ...] = ()
    schema_version: int = SCHEMA_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def shard_paths(self, records_dir: str, split: str) -> list[str]:
        """Absolute paths of the shards of `split`, in manifest order."""
        if split not in self.splits:
            raise ValueError(
                f"split {split!r} is not in {records_dir} "
                f"(it has: {', '.join(sorted(self.splits))})"
            )
        return [
            os.path.join(records_dir, shard.filename)
            for shard in self.splits[split].shards
        ]

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["splits"] = {
            name: {
                "num_examples": split.num_examples,
                "num_bytes": split.num_bytes,
                "class_counts": split.class_counts,
                "shards": [dataclasses.asdict(s) for s in split.shards],
            }
            for name, split in self.splits.items()
        }
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Manifest":
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(
                f"records have schema version {version}; this reader "
                f"understands version {SCHEMA_VERSION}: convert them again"
            )
        splits = {
            name: SplitInfo(
                name=name,
                shards=tuple(ShardInfo(**s) for s in split["shards"]),
                class_counts=dict(split["class_counts"]),
            )
            for name, split in data["splits"].items()
        }
        stored_size = data.get("stored_size")
        return cls(
            dataset_name=data["dataset_name"],
            class_names=tuple(data["class_names"]),
            splits=splits,
            stored_size=tuple(stored_size) if stored_size else None,
            jpeg_quality=int(data["jpeg_quality"]),
            source=data["source"],
            skipped=tuple(data.get("skipped", ())),
            schema_version=version,
        )


def write_manifest(records_dir: str, manifest: Manifest) -> str:
    """Writes the manifest atomically; returns its path."""
    path = os.path.join(records_dir, MANIFEST_FILENAME)
    tmp_path = path + ".tmp"
    with open(tmp_path, "w", encoding="utf-8") as f:
        json.dump(manifest.to_json(), f, indent=2)
        f.write("\n")
    os.replace(tmp_path, path)
    return path


def read_manifest(records_dir: str) -> Manifest:
    """Reads `manifest.json` of a records folder.

    Raises:
      FileNotFoundError: the folder holds no finished conversion.
    """
    path = os.path.join(records_dir, MANIFEST_FILENAME)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{records_dir} has no {MANIFEST_FILENAME}: run convert.py first"
        )
    with open(path, encoding="utf-8") as f:
        return Manifest.from_json(json.load(f))
