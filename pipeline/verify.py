"""Checks a records folder end to end: what verify.py runs, and the converter too.

    report = verify_records("records")               # files, checksums, counts, labels, sizes
    report = verify_records("records", decode=True)  # and every image decoded
    print(report.format())                           # one line per problem

What is checked, per shard of every split: the file exists and has the
manifest's byte size; every record's checksums (length and data, read here
with `pipeline.tfrecord`, at the index where one fails); that every record
parses as an Example whose label is a class index and whose stored size is the
manifest's (when the converter resized); the record count against the
manifest; and each split's class counts against the manifest. With `decode`,
also every image: a JPEG whose header has the record's height and width, that
decodes (at 1/8 scale, in one tf.data pass over all shards in parallel).
A manifest that does not parse is one problem naming it.

Without `decode` nothing here imports TensorFlow: it is the converter's
default check (BUILD.md, "Verification after writing"), about five times faster.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import time
from collections.abc import Iterator

from pipeline import cli
from pipeline import fileio
from pipeline import schema
from pipeline import tfrecord

# Lines per shard in a report: a shard that is wrong throughout says so once.
MAX_PROBLEMS_PER_SHARD = 10
_BATCH = 256
# Shards read at once by the decoding check: enough to keep both cores decoding.
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


def verify_records(records_dir: str, decode: bool = False) -> VerifyReport:
    """Checks a records folder; see the module docstring for what.

    Args:
      records_dir: a folder written by convert.py (or its scratch folder).
      decode: also decode every image (and check its JPEG's size).

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
    for shard in shards:
        if _file_checked(shard):
            _read_shard(shard, manifest.num_classes, manifest.stored_size)
    if decode:
        _decode_images([shard for shard in shards if shard.labels])
    problems = [problem for shard in shards for problem in _in_order(shard)]
    problems += _class_count_problems(shards, manifest)
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
    the record index. It decodes no image.
    """
    return verify_records(records_dir, decode=False)


def inspect_image(image):
    """What the decoding check reads of one record's image: its JPEG header's size, a decode.

    The image is decoded at 1/8 scale: libjpeg still parses every marker and
    entropy-decodes every block, where damage shows, but skips most of the
    inverse DCT and colour work (the check runs about twice as fast).

    Args:
      image: scalar `tf.string`, the record's image bytes.

    Returns:
      int64 [4]: the JPEG header's height and width, the 1/8-scale decode's
      height and width.

    Raises:
      tf.errors.InvalidArgumentError: the image is not a JPEG that decodes.
    """
    import tensorflow as tf  # only this check needs it

    header = tf.io.extract_jpeg_shape(image, output_type=tf.int64)
    eighth = tf.shape(tf.io.decode_jpeg(image, channels=3, ratio=8), out_type=tf.int64)
    return tf.concat([header[:2], eighth[:2]], axis=0)


@dataclasses.dataclass
class _Shard:
    """A shard being checked, and what was found."""

    split: str
    info: schema.ShardInfo
    path: str
    problems: list[Problem] = dataclasses.field(default_factory=list)
    num_read: int = 0
    # index -> (label, height, width) of each record that parsed
    labels: dict[int, tuple[int, int, int]] = dataclasses.field(default_factory=dict)


def _manifest_reason(records_dir: str, error: Exception) -> str:
    """The problem of a manifest that read_manifest refused."""
    if isinstance(error, FileNotFoundError):
        where = "" if fileio.isdir(records_dir) else " (the folder does not exist)"
        return f"missing{where}: run convert.py first"
    # read_manifest names the manifest's path first; the report names the file.
    return str(error).removeprefix(os.path.join(records_dir, schema.MANIFEST_FILENAME) + ": ")


def _file_checked(shard: _Shard) -> bool:
    """Notes a missing shard file, or one whose size is not the manifest's; whether the file is there."""
    if not fileio.exists(shard.path):
        shard.problems.append(Problem(shard.info.filename, "missing: the manifest lists it, the folder has no such file"))
        return False
    size = fileio.size(shard.path)
    if size != shard.info.num_bytes:
        shard.problems.append(Problem(shard.info.filename, f"{size} bytes, but the manifest says {shard.info.num_bytes}"))
    return True


def _read_shard(shard: _Shard, num_classes: int, stored_size: tuple[int, int] | None) -> None:
    """Reads one shard record by record: its checksums, records, labels, sizes and count."""
    filename, expected = shard.info.filename, shard.info.num_examples
    count = 0
    try:
        with fileio.open_file(shard.path) as f:
            for count, record in enumerate(tfrecord.read_records(f), start=1):
                index = count - 1
                try:
                    values = schema.parse_values(record)
                except ValueError as e:
                    shard.problems.append(Problem(filename, f"does not parse: {e}", index))
                    continue
                shard.labels[index] = values
                shard.problems += [
                    Problem(filename, why, index) for why in _value_problems(values, num_classes, stored_size)
                ]
    except tfrecord.RecordError as e:
        shard.num_read = e.index
        if e.partial_length:
            reason = f"cut short: the shard ends {e.partial_length} bytes into it (the manifest says {expected} records)"
            shard.problems.append(Problem(filename, reason, e.index))
        else:
            shard.problems.append(Problem(filename, f"unreadable: {e}", e.index))
        return
    except OSError as e:
        shard.problems.append(Problem(filename, f"cannot read: {e.strerror or e}"))
        return
    shard.num_read = count
    if count < expected:
        reason = f"missing: the shard ends here, the manifest says {expected} records"
        shard.problems.append(Problem(filename, reason, count))
    elif count > expected:
        reason = f"extra: the manifest says {expected} records, the shard holds {count}"
        shard.problems.append(Problem(filename, reason, expected))


def _value_problems(
    values: tuple[int, int, int], num_classes: int, stored_size: tuple[int, int] | None
) -> Iterator[str]:
    """What is wrong with one parsed record's (label, height, width)."""
    label, height, width = values
    if not 0 <= label < num_classes:
        yield f"label {label} is not a class index: the manifest has {num_classes} classes"
    if stored_size is not None and (height, width) != tuple(stored_size):
        yield f"the image is {height}x{width}, the manifest says all are {stored_size[0]}x{stored_size[1]}"


def _decode_images(shards: list[_Shard]) -> None:
    """Adds the image problems of every parsed record of `shards`, decoding them all in one pass.

    The records' checksums passed already (`_read_shard`); a record whose
    image fails to decode is dropped by the pass and decoded again alone, for
    the message.
    """
    import tensorflow as tf  # only this check needs it

    paths = [shard.path for shard in shards]

    @tf.autograph.experimental.do_not_convert  # plain TF ops: spares autograph's start-up
    def indexed(path: tf.Tensor) -> tf.data.Dataset:
        return tf.data.TFRecordDataset(path).enumerate().map(lambda i, record: (path, i, record))

    @tf.autograph.experimental.do_not_convert
    def sizes(path: tf.Tensor, index: tf.Tensor, record: tf.Tensor) -> tuple:
        return path, index, inspect_image(schema.parse_example(record)[schema.IMAGE_KEY])

    ds = tf.data.Dataset.from_tensor_slices(paths).interleave(
        indexed, cycle_length=min(len(paths), _MAX_OPEN_SHARDS), num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=False,
    )
    ds = ds.map(sizes, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False).ignore_errors().batch(_BATCH)
    found: dict[str, dict[int, tuple[int, ...]]] = collections.defaultdict(dict)
    for batch_paths, indices, batch in ds.as_numpy_iterator():
        for path, index, row in zip(batch_paths, indices, batch):
            found[path.decode()][int(index)] = tuple(int(value) for value in row)
    for shard in shards:
        decoded = found.get(shard.path, {})
        failed = sorted(set(shard.labels) - set(decoded))
        records = _records_at(shard.path, failed) if failed else {}
        for index, (_, height, width) in shard.labels.items():
            if index in decoded:
                why = _image_problem((height, width), decoded[index])
            else:
                why = _decode_failure(records[index])
            if why:
                shard.problems.append(Problem(shard.info.filename, why, index))


def _image_problem(stored: tuple[int, int], decoded: tuple[int, ...]) -> str | None:
    """What is wrong with a decoded image against the record's (height, width)."""
    jpeg, eighth = decoded[:2], decoded[2:]
    if jpeg != stored:
        return f"the image is {jpeg[0]}x{jpeg[1]}, the record says {stored[0]}x{stored[1]}"
    if eighth != ((stored[0] + 7) // 8, (stored[1] + 7) // 8):  # libjpeg rounds scaled sizes up
        return f"the image decodes at 1/8 scale to {eighth[0]}x{eighth[1]}, not to 1/8 of {stored[0]}x{stored[1]}"
    return None


def _records_at(path: str, indices: list[int]) -> dict[int, bytes]:
    """index -> bytes of the records at `indices` of a shard whose checksums passed."""
    wanted = set(indices)
    with fileio.open_file(path) as f:
        return {index: record for index, record in enumerate(tfrecord.read_records(f)) if index in wanted}


def _decode_failure(record: bytes) -> str:
    """Why the image of `record` does not decode, decoded again alone for the message."""
    import tensorflow as tf

    image = schema.parse_example(record)[schema.IMAGE_KEY]
    if not tf.io.is_jpeg(image):
        return "the image is not a JPEG"
    try:
        inspect_image(image)
    except tf.errors.OpError as e:
        return f"does not decode: {cli.error_text(e)}"
    return "failed when read with the others, not when read alone"


def _class_count_problems(shards: list[_Shard], manifest: schema.Manifest) -> list[Problem]:
    """Per split, the labels' counts against the manifest's class counts.

    Only for splits whose shards are otherwise sound: a missing record or a
    bad label is already a problem of its shard.
    """
    problems = []
    for name, split in manifest.splits.items():
        of_split = [shard for shard in shards if shard.split == name]
        if any(shard.problems for shard in of_split):
            continue
        labels = collections.Counter(label for shard in of_split for label, _, _ in shard.labels.values())
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
