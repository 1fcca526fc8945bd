"""Checks a records folder end to end: what verify.py runs, and the converter too.

    report = verify_records("records")        # everything, images decoded
    report = find_damage("records")           # files, checksums and counts only
    print(report.format())                    # one line per problem
    error_text(e)                             # a reader's tf error, as one line

What is checked, per shard of every split: the file exists and has the
manifest's byte size; every record's checksum (TFRecordDataset's
DataLossError, at the index where it happens); the record count against the
manifest. With decoding (verify_records): every record parses with the
schema; its image is a JPEG of the stored height and width (and of the
manifest's stored size, if the converter resized) that decodes; its label is
a class index; and each split's class counts match the manifest. A manifest
that does not parse is one problem naming it.

Clean shards are read once, in one tf.data pass over all of them with parallel
decoding; only a shard with a problem is read again, record by record, to
name the index and the reason.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import re
import time
from collections.abc import Iterator

import tensorflow as tf

from pipeline import schema

# Lines per shard in a report: a shard that is wrong throughout says so once.
MAX_PROBLEMS_PER_SHARD = 10
# TFRecord framing around each record: length (8 bytes) and its CRC (4), the
# data, the data's CRC (4).
_FRAME_BYTES = 16
_BATCH = 256
# Shards read at once by the check: enough to keep both cores decoding.
_MAX_OPEN_SHARDS = 16


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing wrong with a records folder.

    Attributes:
      file: the shard's file name in the folder, or `manifest.json`.
      reason: what is wrong, one line.
      index: the record's index in the shard, where one record is at fault.
    """

    file: str
    reason: str
    index: int | None = None

    def format(self) -> str:
        where = self.file if self.index is None else f"{self.file}: record {self.index}"
        return f"{where}: {self.reason}"


@dataclasses.dataclass(frozen=True)
class VerifyReport:
    """What verify_records or find_damage found.

    Attributes:
      records_dir: the folder checked.
      problems: every problem, shard by shard in manifest order.
      num_shards: shards the manifest lists.
      num_records: records read.
      seconds: how long the check took.
    """

    records_dir: str
    problems: tuple[Problem, ...]
    num_shards: int = 0
    num_records: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def by_file(self) -> dict[str, tuple[Problem, ...]]:
        """The problems grouped by shard (or manifest) file."""
        grouped = collections.defaultdict(list)
        for problem in self.problems:
            grouped[problem.file].append(problem)
        return {file: tuple(problems) for file, problems in grouped.items()}

    def summary(self) -> str:
        """One line: how many problems and the first, e.g. for an error message."""
        if self.ok:
            return f"{self.records_dir}: no problems"
        more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        return f"{self.records_dir}: {self.problems[0].format()}{more}"

    def format(self) -> str:
        """A header line, then one line per problem."""
        count = len(self.problems)
        found = f"{count} problem{'s' if count > 1 else ''}" if count else "OK"
        head = (
            f"{self.records_dir}: {self.num_records} records in {self.num_shards} shards, "
            f"checked in {self.seconds:.1f} s: {found}"
        )
        return "\n".join([head] + [f"  {problem.format()}" for problem in self.problems])


def verify_records(records_dir: str, decode: bool = True) -> VerifyReport:
    """Checks a records folder; see the module docstring for what.

    Args:
      records_dir: a folder written by convert.py (or its scratch folder).
      decode: also parse every record, decode every image and check labels,
        sizes and class counts; False checks files, checksums and counts.

    Returns:
      The report; `.ok` when nothing is wrong.
    """
    started = time.perf_counter()
    records_dir = os.fspath(records_dir)
    try:
        manifest = schema.read_manifest(records_dir)
    except (FileNotFoundError, ValueError) as e:
        problem = Problem(schema.MANIFEST_FILENAME, _manifest_reason(records_dir, e))
        return VerifyReport(records_dir, (problem,), seconds=time.perf_counter() - started)
    shards = [
        _Shard(split.name, info, os.path.join(records_dir, info.filename))
        for split in manifest.splits.values()
        for info in split.shards
    ]
    inspected = _check_shards(shards, manifest, decode)
    problems = [problem for shard in shards for problem in _in_order(shard)]
    if decode:
        problems += _class_count_problems(shards, manifest, inspected)
    return VerifyReport(
        records_dir,
        tuple(problems),
        num_shards=len(shards),
        num_records=sum(shard.num_read for shard in shards),
        seconds=time.perf_counter() - started,
    )


def find_damage(records_dir: str) -> VerifyReport:
    """Which shard and record a DataLossError (or a wrong count) came from.

    TensorFlow's DataLossError says only "corrupted record at <byte offset>",
    not which file: a caller that catches one runs this to name the shard and
    the record index. It checks files, checksums and counts, decoding nothing.
    """
    return verify_records(records_dir, decode=False)


def inspect_record(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """What verify checks of one record: its features, its JPEG's size, a decode.

    The image is decoded at 1/8 scale: libjpeg still parses every marker and
    entropy-decodes every block, where damage shows, but skips most of the
    inverse DCT and colour work (the check runs about twice as fast).

    Args:
      serialized: scalar `tf.string`, one record.

    Returns:
      int64 scalars: `label`, `height` and `width` as stored, `jpeg_height`
      and `jpeg_width` from the JPEG header, `eighth_height` and
      `eighth_width` of the 1/8-scale decode.

    Raises:
      tf.errors.InvalidArgumentError: the record does not parse with the
        schema, or its image is not a JPEG that decodes.
    """
    features = schema.parse_example(serialized)
    image = features[schema.IMAGE_KEY]
    header = tf.io.extract_jpeg_shape(image, output_type=tf.int64)
    eighth = tf.shape(tf.io.decode_jpeg(image, channels=3, ratio=8), out_type=tf.int64)
    return {
        "label": features[schema.LABEL_KEY],
        "height": features[schema.HEIGHT_KEY],
        "width": features[schema.WIDTH_KEY],
        "jpeg_height": header[0],
        "jpeg_width": header[1],
        "eighth_height": eighth[0],
        "eighth_width": eighth[1],
    }


@dataclasses.dataclass
class _Shard:
    """A shard being checked, and what was found."""

    split: str
    info: schema.ShardInfo
    path: str
    problems: list[Problem] = dataclasses.field(default_factory=list)
    num_read: int = 0


def _manifest_reason(records_dir: str, error: Exception) -> str:
    """The problem of a manifest that read_manifest refused."""
    if isinstance(error, FileNotFoundError):
        where = "" if tf.io.gfile.isdir(records_dir) else " (the folder does not exist)"
        return f"missing{where}: run convert.py first"
    # read_manifest names the manifest's path first; the report names the file.
    return str(error).removeprefix(os.path.join(records_dir, schema.MANIFEST_FILENAME) + ": ")


def _check_shards(
    shards: list[_Shard], manifest: schema.Manifest, decode: bool
) -> dict[str, dict[int, dict[str, int]]]:
    """Fills in each shard's problems; returns the values of the records that passed."""
    for shard in shards:
        shard.problems = _file_problems(shard)
    readable = [shard for shard in shards if tf.io.gfile.exists(shard.path)]
    inspected = _inspect_shards(readable, decode)
    for shard in readable:
        shard.problems += _record_problems(shard, inspected.get(shard.path, {}), manifest, decode)
    return inspected


def _file_problems(shard: _Shard) -> list[Problem]:
    """A missing shard file, or one whose size is not the manifest's."""
    if not tf.io.gfile.exists(shard.path):
        return [Problem(shard.info.filename, "missing: the manifest lists it, the folder has no such file")]
    size = tf.io.gfile.stat(shard.path).length
    if size != shard.info.num_bytes:
        return [Problem(shard.info.filename, f"{size} bytes, but the manifest says {shard.info.num_bytes}")]
    return []


def _inspect_shards(shards: list[_Shard], decode: bool) -> dict[str, dict[int, dict[str, int]]]:
    """path -> record index -> inspect_record's values, for every record that passed.

    One pass over all shards, decoding in parallel. A record that fails
    (checksum, parse, decode) is missing from the result, and a checksum
    failure ends its shard: `_record_problems` reads such a shard again to say
    why. Without `decode`, the values are only {"length": bytes}.
    """
    if not shards:
        return {}
    paths = [shard.path for shard in shards]

    @tf.autograph.experimental.do_not_convert  # plain TF ops: spares autograph's start-up
    def indexed(path: tf.Tensor) -> tf.data.Dataset:
        return tf.data.TFRecordDataset(path).enumerate().map(lambda i, record: (path, i, record))

    @tf.autograph.experimental.do_not_convert
    def values(path: tf.Tensor, index: tf.Tensor, record: tf.Tensor) -> tuple:
        found = inspect_record(record) if decode else {"length": tf.strings.length(record)}
        return path, index, found

    ds = tf.data.Dataset.from_tensor_slices(paths).interleave(
        indexed,
        cycle_length=min(len(paths), _MAX_OPEN_SHARDS),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=False,
    )
    ds = ds.map(values, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    # Whatever fails is dropped here and examined shard by shard afterwards.
    ds = ds.ignore_errors().batch(_BATCH)
    found: dict[str, dict[int, dict[str, int]]] = collections.defaultdict(dict)
    for batch_paths, indices, batch in ds.as_numpy_iterator():
        for k, (path, index) in enumerate(zip(batch_paths, indices)):
            found[path.decode()][int(index)] = {key: value[k] for key, value in batch.items()}
    return found


def _record_problems(
    shard: _Shard, found: dict[int, dict[str, int]], manifest: schema.Manifest, decode: bool
) -> list[Problem]:
    """The problems of one shard's records, from the values of those that passed."""
    problems = []
    if decode:
        for index, values in found.items():
            problems += [Problem(shard.info.filename, why, index) for why in _value_problems(values, manifest)]
    expected = shard.info.num_examples
    intact = len(found) == expected and (not found or max(found) == expected - 1)
    shard.num_read = len(found)
    if intact and not shard.problems:  # so far, only a size that is off
        return problems
    # Something failed, or the count or the size is off: read it again, record by record.
    return problems + _rescan(shard, set(found), decode)


def _value_problems(values: dict[str, int], manifest: schema.Manifest) -> Iterator[str]:
    """What is wrong with one decoded record's values."""
    label = int(values["label"])
    if not 0 <= label < manifest.num_classes:
        yield f"label {label} is not a class index: the manifest has {manifest.num_classes} classes"
    stored = (int(values["height"]), int(values["width"]))
    jpeg = (int(values["jpeg_height"]), int(values["jpeg_width"]))
    eighth = (int(values["eighth_height"]), int(values["eighth_width"]))
    if jpeg != stored:
        yield f"the image is {jpeg[0]}x{jpeg[1]}, the record says {stored[0]}x{stored[1]}"
    elif eighth != ((stored[0] + 7) // 8, (stored[1] + 7) // 8):  # libjpeg rounds scaled sizes up
        yield f"the image decodes at 1/8 scale to {eighth[0]}x{eighth[1]}, not to 1/8 of {stored[0]}x{stored[1]}"
    if manifest.stored_size is not None and stored != tuple(manifest.stored_size):
        height, width = manifest.stored_size
        yield f"the image is {stored[0]}x{stored[1]}, the manifest says all are {height}x{width}"


def _rescan(shard: _Shard, passed: set[int], decode: bool) -> list[Problem]:
    """A shard read record by record: the records that failed and why, its count."""
    problems = []
    filename, expected = shard.info.filename, shard.info.num_examples
    count, consumed = 0, 0
    try:
        for record in tf.data.TFRecordDataset(shard.path).as_numpy_iterator():
            if count not in passed:
                problems.append(Problem(filename, _failure(record, decode), count))
            consumed += len(record) + _FRAME_BYTES
            count += 1
    except tf.errors.DataLossError as e:
        shard.num_read = count
        return problems + [Problem(filename, f"unreadable: {error_text(e)}", count)]
    except tf.errors.OpError as e:
        return problems + [Problem(filename, f"cannot read: {error_text(e)}")]
    shard.num_read = count
    extra = tf.io.gfile.stat(shard.path).length - consumed
    if extra > 0:
        # TFRecordDataset ends quietly when a shard stops inside a record's length field.
        reason = f"cut short: the shard ends {extra} bytes into it (the manifest says {expected} records)"
        problems.append(Problem(filename, reason, count))
    elif count < expected:
        reason = f"missing: the shard ends here, the manifest says {expected} records"
        problems.append(Problem(filename, reason, count))
    elif count > expected:
        reason = f"extra: the manifest says {expected} records, the shard holds {count}"
        problems.append(Problem(filename, reason, expected))
    return problems


def _failure(record: bytes, decode: bool) -> str:
    """Why inspect_record fails on `record`, run eagerly for the message."""
    try:
        if decode and not tf.io.is_jpeg(schema.parse_example(record)[schema.IMAGE_KEY]):
            return "the image is not a JPEG"
        if decode:
            inspect_record(tf.constant(record))
    except tf.errors.OpError as e:
        return f"does not parse or decode: {error_text(e)}"
    return "failed when read with the others, not when read alone"


def _class_count_problems(
    shards: list[_Shard], manifest: schema.Manifest, inspected: dict[str, dict[int, dict[str, int]]]
) -> list[Problem]:
    """Per split, the labels' counts against the manifest's class counts.

    Only for splits whose shards are otherwise sound: a missing record or a
    bad label is already a problem of its shard.
    """
    problems = []
    for name, split in manifest.splits.items():
        of_split = [shard for shard in shards if shard.split == name]
        if any(shard.problems for shard in of_split):
            continue
        labels = collections.Counter(
            int(values["label"]) for shard in of_split for values in inspected.get(shard.path, {}).values()
        )
        counted = {class_name: labels[label] for label, class_name in enumerate(manifest.class_names)}
        stated = {class_name: split.class_counts.get(class_name, 0) for class_name in manifest.class_names}
        if counted != stated:
            problems.append(Problem(
                schema.MANIFEST_FILENAME,
                f"split {name!r}: the records hold {_counts(counted)}, the manifest says {_counts(stated)}",
            ))
    return problems


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{class_name} {count}" for class_name, count in counts.items())


def _in_order(shard: _Shard) -> list[Problem]:
    """A shard's problems: the file's, then its records' by index; at most MAX_PROBLEMS_PER_SHARD."""
    problems = sorted(shard.problems, key=lambda problem: (problem.index is not None, problem.index or 0))
    if len(problems) <= MAX_PROBLEMS_PER_SHARD:
        return problems
    rest = len(problems) - MAX_PROBLEMS_PER_SHARD + 1
    return problems[: MAX_PROBLEMS_PER_SHARD - 1] + [Problem(shard.info.filename, f"and {rest} more problems")]


def error_text(error: tf.errors.OpError) -> str:
    """A TensorFlow error's message without the op, function and iterator names around it.

    For a failed check of the reader (pipeline.reader.dataset), that is the check's
    own one line, which names the shard: e.g. "records/x-train.tfrecord-00001-
    of-00004: the shard holds 3 records, but manifest.json says 4".
    """
    asserted = re.search(r"assertion failed: \[(.*)\]", error.message)
    if asserted:
        return asserted.group(1)
    text = error.message.split("}}")[-1] if error.message.startswith("{{") else error.message
    text = re.sub(r"\s*\[\[.*?\]\]", "", text, flags=re.S)
    text = re.sub(r"\s*\[Op:\w+\].*$", "", text, flags=re.S).strip()
    return text.replace("' failed with ", ": ")
