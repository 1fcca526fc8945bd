"""The record schema: the one module that the writer and the reader both use.

Each image is one `tf.train.Example` whose features are listed once, in
`FEATURES`; the reader's parse spec, the writer's serializer and the TFDS
metadata are all derived from that table. The manifest (`manifest.json`,
beside the shards) describes the folder: class names, the shards of each split
with their counts, the stored image size and the files that were skipped. It
is the one source of the counts; the TFDS metadata is generated from it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any, NoReturn

from pipeline import cli
from pipeline import fileio
from pipeline import tfrecord

# Version 2 dropped the `format` and `class_name` features and the manifest's
# `jpeg_quality`. Version-1 folders still read: their records hold every
# version-2 feature, and parsing ignores the others.
SCHEMA_VERSION = 2
READABLE_SCHEMA_VERSIONS = (1, 2)
MANIFEST_FILENAME = "manifest.json"
FILE_FORMAT = "tfrecord"
STORED_JPEG_QUALITY = 95  # of the converter's JPEGs; predict.py redoes them for resized records

# Feature keys; also the TFDS feature names.
IMAGE_KEY = "image"
LABEL_KEY = "label"
HEIGHT_KEY = "height"
WIDTH_KEY = "width"
FILENAME_KEY = "filename"

# Every feature of a record and its type (bytes: a tf.string, int: a tf.int64):
# the one definition.
FEATURES: Mapping[str, type] = {
    IMAGE_KEY: bytes,  # the image, RGB JPEG
    LABEL_KEY: int,  # index into the manifest's class names
    HEIGHT_KEY: int,  # stored image height in pixels
    WIDTH_KEY: int,  # stored image width in pixels
    FILENAME_KEY: bytes,  # source path relative to its split folder, UTF-8
}


def serialize_example(values: Mapping[str, bytes | str | int]) -> bytes:
    """Serializes one image's feature values to a `tf.train.Example` string (`pipeline.tfrecord`).

    Args:
      values: a value for every key of FEATURES (str is stored as UTF-8).

    Raises:
      ValueError: a key is missing or unknown.
    """
    if set(values) != set(FEATURES):
        raise ValueError(f"a record needs exactly the features {sorted(FEATURES)}, got {sorted(values)}")
    return tfrecord.encode_example({
        key: int(value) if kind is int else value.encode("utf-8") if isinstance(value, str) else value
        for key, kind in FEATURES.items()
        for value in [values[key]]
    })


def parse_values(serialized: bytes) -> tuple[int, int, int]:
    """(label, height, width) of one record, without TensorFlow.

    Raises:
      ValueError: the record is not an Example with every feature of FEATURES
        of its type.
    """
    features = tfrecord.decode_example(serialized)
    for key, kind in FEATURES.items():
        if not isinstance(features.get(key), kind):
            raise ValueError(f"feature {key!r} is missing or not {'an int64' if kind is int else 'bytes'}")
    return features[LABEL_KEY], features[HEIGHT_KEY], features[WIDTH_KEY]


def feature_spec() -> dict:
    """The reader's parse spec of FEATURES: a `tf.io.FixedLenFeature` each."""
    import tensorflow as tf  # the reader's: the converter writes and checks records without it

    dtypes = {bytes: tf.string, int: tf.int64}
    return {key: tf.io.FixedLenFeature([], dtypes[kind]) for key, kind in FEATURES.items()}


def parse_example(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """Parses one serialized Example.

    Args:
      serialized: scalar `tf.string`.

    Returns:
      A dict with the FEATURES keys, scalars of their dtypes (`tf.string`
      for IMAGE_KEY and FILENAME_KEY, `tf.int64` for the others).
    """
    import tensorflow as tf

    return tf.io.parse_single_example(serialized, feature_spec())


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
class SkippedFile:
    """A source file the conversion left out, and why: the summary and the manifest list them."""

    path: str
    split: str
    reason: str


@dataclasses.dataclass(frozen=True)
class DuplicatePair:
    """A source image that duplicates an earlier one (`converter.duplicates`); the manifest lists them."""

    path: str
    split: str
    original_path: str  # the earlier image: the one `--duplicates=drop` keeps
    original_split: str
    distance: int  # bits of perceptual hash that differ; 0 when identical
    identical: bool  # byte for byte
    score: float | None = None  # thumbnails' likeness, 0 to 1 (1.0 identical); None: a manifest from before


@dataclasses.dataclass(frozen=True)
class Manifest:
    """What a records folder holds; written last, so its presence means done.

    Attributes:
      dataset_name: TFDS-style snake_case name, also the shard file prefix.
      class_names: label index -> class name.
      splits: split name -> SplitInfo.
      stored_size: (height, width) every image was resized to at conversion,
        or None when the original sizes were kept.
      source: the folder the records were converted from.
      skipped: the files that could not be used.
      schema_version: SCHEMA_VERSION of the writer.
      duplicates: the duplicate images found (none in a manifest from before them).
    """

    dataset_name: str
    class_names: tuple[str, ...]
    splits: dict[str, SplitInfo]
    stored_size: tuple[int, int] | None
    source: str
    skipped: tuple[SkippedFile, ...] = ()
    schema_version: int = SCHEMA_VERSION
    duplicates: tuple[DuplicatePair, ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def split(self, name: str, records_dir: str = "the records folder") -> SplitInfo:
        """The SplitInfo of `name`; cli.InputError naming the splits there are."""
        if name not in self.splits:
            raise cli.InputError(
                f"split {name!r} is not in {records_dir} (it has: {', '.join(sorted(self.splits))})"
            )
        return self.splits[name]

    def shard_paths(self, records_dir: str, split: str) -> list[str]:
        """Paths of the shards of `split`, in manifest order."""
        return [
            os.path.join(records_dir, shard.filename)
            for shard in self.split(split, records_dir).shards
        ]

    def to_json(self) -> dict[str, Any]:
        # Field by field: dataclasses.asdict deep-copies, slow for thousands of pairs.
        data = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        data["skipped"] = [vars(skip) for skip in self.skipped]
        data["duplicates"] = [vars(pair) for pair in self.duplicates]
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
    def from_json(cls, data: Any) -> "Manifest":
        """The manifest of a parsed `manifest.json`.

        Raises:
          ValueError: a schema version this reader can't read, or a damaged
            manifest: a field missing, of the wrong type or out of range, a
            shard file name that leaves the folder, counts that disagree. The
            message names the field.
        """
        root = _Field(data, "")
        version = root.get("schema_version", None).value
        if type(version) is not int or version not in READABLE_SCHEMA_VERSIONS:
            raise ValueError(
                f"records have schema version {version}; this reader understands versions "
                f"{', '.join(map(str, READABLE_SCHEMA_VERSIONS))}: convert them again"
            )
        names = root.get("class_names")
        class_names = tuple(name.text() for name in names.elements())
        if not class_names or len(set(class_names)) < len(class_names):
            names.fail("a non-empty list of distinct class names")
        splits = {name: _split_from_json(name, split, class_names) for name, split in root.get("splits").items()}
        if not splits:
            root.get("splits").fail("at least one split")
        filenames = [shard.filename for split in splits.values() for shard in split.shards]
        if len(set(filenames)) < len(filenames):
            twice = next(name for name in filenames if filenames.count(name) > 1)
            raise ValueError(f"shard {twice} is listed twice")
        stored = root.get("stored_size", None)
        stored_size = tuple(size.count() for size in stored.elements()) if stored.value is not None else None
        if stored_size is not None and (len(stored_size) != 2 or 0 in stored_size):
            stored.fail("null or [height, width] in pixels")
        return cls(
            dataset_name=root.get("dataset_name").text(),
            class_names=class_names,
            splits=splits,
            stored_size=stored_size,
            source=root.get("source").text(),
            skipped=tuple(_skipped_from_json(skip) for skip in root.get("skipped", []).elements()),
            schema_version=version,
            duplicates=tuple(_pair_from_json(pair) for pair in root.get("duplicates", []).elements()),
        )


_REQUIRED = object()


@dataclasses.dataclass(frozen=True)
class _Field:
    """A value of the manifest's JSON and where it is, to name it in errors."""

    value: Any
    where: str  # e.g. "splits.train.shards[0].num_examples"; "" for the whole

    def fail(self, expected: str) -> NoReturn:
        got = json.dumps(self.value) if not isinstance(self.value, (dict, list)) else type(self.value).__name__
        raise ValueError(f"{self.where or 'the manifest'} must be {expected}, got {got[:80]}")

    def _child(self, value: Any, name: str) -> "_Field":
        return _Field(value, f"{self.where}.{name}" if self.where else name)

    def object(self) -> dict[str, Any]:
        if not isinstance(self.value, dict):
            self.fail("an object")
        return self.value

    def get(self, key: str, default: Any = _REQUIRED) -> "_Field":
        value = self.object().get(key, default)
        if value is _REQUIRED:
            raise ValueError(f"{self.where or 'the manifest'} has no {key!r}")
        return self._child(value, key)

    def items(self) -> list[tuple[str, "_Field"]]:
        return [(key, self._child(value, key)) for key, value in self.object().items()]

    def elements(self) -> list["_Field"]:
        if not isinstance(self.value, list):
            self.fail("a list")
        return [_Field(value, f"{self.where}[{i}]") for i, value in enumerate(self.value)]

    def text(self) -> str:
        if not isinstance(self.value, str):
            self.fail("a string")
        return self.value

    def count(self) -> int:
        # bool is an int to Python, not to JSON.
        if type(self.value) is not int or self.value < 0:
            self.fail("a whole number >= 0")
        return self.value


def _split_from_json(name: str, split: _Field, class_names: tuple[str, ...]) -> SplitInfo:
    """One split's SplitInfo; ValueError if its fields or its totals are wrong."""
    shards = tuple(_shard_from_json(shard) for shard in split.get("shards").elements())
    if not shards:
        split.get("shards").fail("a non-empty list")
    counts = split.get("class_counts")
    class_counts = {class_name: count.count() for class_name, count in counts.items()}
    unknown = sorted(set(class_counts) - set(class_names))
    if unknown:
        raise ValueError(f"{counts.where} counts {unknown[0]!r}, which is not in class_names")
    info = SplitInfo(name=name, shards=shards, class_counts=class_counts)
    for key, total in (("num_examples", info.num_examples), ("num_bytes", info.num_bytes)):
        if split.get(key).count() != total:
            raise ValueError(f"{split.where}.{key} is {split.get(key).value}, but its shards add up to {total}")
    if sum(class_counts.values()) != info.num_examples:
        raise ValueError(
            f"{counts.where} add up to {sum(class_counts.values())}, but the shards hold {info.num_examples}"
        )
    return info


def _skipped_from_json(skip: _Field) -> SkippedFile:
    return SkippedFile(skip.get("path").text(), skip.get("split").text(), skip.get("reason").text())


def _pair_from_json(pair: _Field) -> DuplicatePair:
    identical = pair.get("identical").value
    if not isinstance(identical, bool):
        pair.get("identical").fail("true or false")
    text = [pair.get(key).text() for key in ("path", "split", "original_path", "original_split")]
    score = pair.get("score", None)  # absent from manifests written before it
    if score.value is not None and (type(score.value) not in (int, float) or not 0 <= score.value <= 1):
        score.fail("null or a number from 0 to 1")
    return DuplicatePair(*text, pair.get("distance").count(), identical, score.value)


def _shard_from_json(shard: _Field) -> ShardInfo:
    """One shard's ShardInfo; ValueError unless its file name stays in the folder."""
    filename = shard.get("filename")
    if filename.text() in ("", ".", "..") or any(c in filename.value for c in "/\\\0"):
        filename.fail("a file name in the records folder")
    return ShardInfo(filename.value, shard.get("num_examples").count(), shard.get("num_bytes").count())


def write_manifest(records_dir: str, manifest: Manifest) -> str:
    """Writes the manifest atomically; returns its path."""
    return fileio.write_json(os.path.join(records_dir, MANIFEST_FILENAME), manifest.to_json())


def read_manifest(records_dir: str) -> Manifest:
    """Reads `manifest.json` of a records folder.

    Raises:
      cli.MissingError: the folder holds no finished conversion.
      cli.InputError: the manifest is of a schema version this reader can't
        read, or damaged (not JSON, a field missing or wrong, counts that
        disagree); the one-line message starts with the manifest's path.
    """
    path = os.path.join(records_dir, MANIFEST_FILENAME)
    if not fileio.exists(path):
        raise cli.MissingError(f"{records_dir} has no {MANIFEST_FILENAME}: run convert.py first")
    try:
        return Manifest.from_json(fileio.read_json(path))
    except json.JSONDecodeError as e:
        raise cli.InputError(f"{path}: not valid JSON: {e}") from None
    except UnicodeDecodeError as e:
        raise cli.InputError(f"{path}: not UTF-8 text: byte {e.start} is {e.object[e.start]:#04x}") from None
    except OSError as e:  # a folder, no permission, ...
        raise cli.InputError(f"{path}: cannot read it: {e.strerror or e}") from None
    except ValueError as e:
        raise cli.InputError(f"{path}: {e}") from None


def check_shard_files(records_dir: str, manifest: Manifest) -> None:
    """Refuses a folder whose shard files are not all there at the manifest's byte sizes.

    Cheap (a stat per shard), so a reader can check before any work what would
    otherwise fail only when the file is reached, mid-epoch.

    Raises:
      cli.MissingError: one line naming every missing or wrong-sized shard.
    """
    problems = []
    for split in manifest.splits.values():
        for shard in split.shards:
            path = os.path.join(records_dir, shard.filename)
            if not fileio.exists(path):
                problems.append(f"{shard.filename} is missing")
            elif (size := fileio.size(path)) != shard.num_bytes:
                problems.append(f"{shard.filename} has {size:,} bytes, not {shard.num_bytes:,}")
    if problems:
        raise cli.MissingError(
            f"{records_dir} does not hold the shards its manifest lists: {'; '.join(problems)}: "
            "convert the images again, or restore the files"
        )
