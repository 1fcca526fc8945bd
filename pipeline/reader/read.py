"""A split's records from its shard files, read in parallel and checked as they come.

    the manifest -> shard paths, counts -> [shuffled] -> interleaved reads in blocks
    -> each block's size checked against the manifest -> records [, shard path, index]

The manifest is read once by the caller (a reader's `guard.HeldRecords`) and
passed down. A shard that holds more or fewer records than the manifest gives it fails
when its end (or its first surplus record) is read, naming the shard;
`check_label` does the same for a label that is not a class index.
"""

from __future__ import annotations

import tensorflow as tf

from pipeline import schema

# Shards read at once by the interleave.
_MAX_PARALLEL_SHARDS = 8
# Each shard's record count is checked once per block of records, not per
# record. Blocks of about this many bytes (at most this many records) keep
# what the interleave buffers small, whatever the size of the images.
_BLOCK_BYTES = 1 << 20
_MAX_BLOCK_RECORDS = 64
# Plain TF ops only (no Python control flow on tensors): autograph's conversion
# would only add start-up time.
_plain = tf.autograph.experimental.do_not_convert


def read_records(
    records_dir: str, split: str, manifest: schema.Manifest | None = None, deterministic: bool = True
) -> tf.data.Dataset:
    """The serialized records of a split (scalar `tf.string`), its shards read in parallel in manifest order.

    Every shard must hold the number of records the manifest gives it: a
    shard cut short or overlong fails, naming the shard, when its end (or its
    first surplus record) is read.

    Args:
      records_dir: a folder written by convert.py.
      split: the split's name.
      manifest: the folder's manifest, read by the caller; None reads it here.
      deterministic: interleave the shards in a fixed order.

    Raises:
      cli.MissingError, cli.InputError: see `schema.read_manifest`; cli.InputError
        for a split the folder does not have.
      While iterating, tf.errors.InvalidArgumentError for a record count
      that is not the manifest's, tf.errors.DataLossError for a corrupted or
      truncated record (its message names no file: see
      `pipeline.verify.find_damage`).
    """
    manifest = schema.read_manifest(records_dir) if manifest is None else manifest
    return _read(records_dir, manifest, split, None, False, deterministic, with_position=False)


def read_with_position(
    records_dir: str, manifest: schema.Manifest, split: str, *, shard_seed: int | tf.Tensor | None = None,
    reshuffle: bool = False, deterministic: bool = True,
) -> tf.data.Dataset:
    """read_records, each record with its shard's path and its index there: (`tf.string`, `tf.string`, int64).

    Args:
      shard_seed: visit the shards in an order drawn from this seed; None: in
        the manifest's order.
      reshuffle: with `shard_seed`, a new order each pass (else the same
        order every pass).
    """
    return _read(records_dir, manifest, split, shard_seed, reshuffle, deterministic, with_position=True)


def _read(
    records_dir: str, manifest: schema.Manifest, split: str, shard_seed: int | tf.Tensor | None, reshuffle: bool,
    deterministic: bool, with_position: bool,
) -> tf.data.Dataset:
    """read_records / read_with_position."""
    info = manifest.split(split, records_dir)
    files = manifest.shard_paths(records_dir, split)
    counts = tf.constant([shard.num_examples for shard in info.shards], tf.int64)
    block = _block_size(info)
    ds = tf.data.Dataset.from_tensor_slices((files, counts))
    if shard_seed is not None:
        ds = ds.shuffle(len(files), seed=shard_seed, reshuffle_each_iteration=reshuffle)
    ds = ds.interleave(
        _plain(lambda path, expected: _shard_blocks(path, expected, block)),
        cycle_length=min(len(files), _MAX_PARALLEL_SHARDS),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic,
    )
    ds = ds.map(
        _plain(lambda records, index, shard: _unblock(records, index, shard, block, with_position)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic,
    )
    return ds.unbatch()


def _block_size(split: schema.SplitInfo) -> int:
    """Records per counting block of a split: about _BLOCK_BYTES of them."""
    record_bytes = split.num_bytes // max(split.num_examples, 1)
    return max(1, min(_MAX_BLOCK_RECORDS, _BLOCK_BYTES // max(record_bytes, 1)))


def _shard_blocks(path: tf.Tensor, expected: tf.Tensor, block: int) -> tf.data.Dataset:
    """One shard's records in blocks, then an empty block that marks its end.

    Args:
      path: scalar `tf.string`, the shard file.
      expected: int64 scalar, its record count in the manifest.
      block: records per block.

    Returns:
      A dataset of (records `tf.string` [<= block], the block's index as an
      int64 scalar, (path, expected)). Indices stop one past the last block
      the manifest allows: an overlong shard is read no further.
    """
    blocks = tf.data.TFRecordDataset(path).batch(block)
    blocks = blocks.concatenate(tf.data.Dataset.from_tensors(tf.zeros([0], tf.string)))
    indices = tf.data.Dataset.range((expected + block - 1) // block + 1)
    return tf.data.Dataset.zip(blocks, indices, tf.data.Dataset.from_tensors((path, expected)).repeat())


def check_block(
    records: tf.Tensor, index: tf.Tensor, shard: tuple[tf.Tensor, tf.Tensor], block: int
) -> tf.Tensor:
    """A block of a shard's records, once their number agrees with the manifest.

    Block `index` of a shard of `expected` records holds min(block, expected -
    index * block) of them, and the end marker (an empty block) comes where
    that is 0. Anything else is a shard with more or fewer records than the
    manifest gives it.

    Args:
      records: `tf.string` [n], block `index` of the shard; [0] for its end.
      index: int64 scalar.
      shard: (the shard's path, scalar `tf.string`; its manifest count, int64
        scalar).
      block: records in a full block.

    Returns:
      `records`, unchanged.

    Raises:
      tf.errors.InvalidArgumentError: naming the shard file and both counts.
    """
    path, expected = shard
    start = index * block
    size = tf.size(records, out_type=tf.int64)
    want = tf.clip_by_value(expected - start, 0, block)
    found = tf.strings.as_string(start + size)
    found = tf.where(size > want, tf.strings.join(["at least ", found]), found)
    message = tf.strings.join(
        [path, ": the shard holds ", found, " records, but manifest.json says ", tf.strings.as_string(expected)]
    )
    return _asserted(records, tf.equal(size, want), message)


def check_label(label: tf.Tensor, num_classes: int, path: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
    """A record's label, once it is a class index: in [0, num_classes).

    Args:
      label: int64 scalar.
      num_classes: the manifest's number of classes.
      path: scalar `tf.string`, the record's shard; index: int64 scalar, its
        index there. Both only for the message.

    Returns:
      `label`, unchanged.

    Raises:
      tf.errors.InvalidArgumentError: naming the record, the label and the
        number of classes.
    """
    ok = tf.logical_and(label >= 0, label < num_classes)
    message = tf.strings.join([
        path, ": record ", tf.strings.as_string(index), ": label ", tf.strings.as_string(label),
        f" is not a class index: the manifest has {num_classes} classes",
    ])
    return _asserted(label, ok, message)


def _asserted(value: tf.Tensor, ok: tf.Tensor, message: tf.Tensor) -> tf.Tensor:
    """`value` once `ok` (a bool scalar) holds; InvalidArgumentError(`message`) if not."""
    with tf.control_dependencies([tf.debugging.Assert(ok, [message])]):
        return tf.identity(value)


def _unblock(
    records: tf.Tensor, index: tf.Tensor, shard: tuple[tf.Tensor, tf.Tensor], block: int, with_position: bool
) -> tf.Tensor | tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The checked records of a block (see check_block), `tf.string` [n].

    With `with_position`, also each record's shard path (`tf.string` [n]) and
    index in the shard (int64 [n]), for the label check's message.
    """
    records = check_block(records, index, shard, block)
    if not with_position:
        return records
    size = tf.size(records, out_type=tf.int64)
    return records, tf.fill([size], shard[0]), index * block + tf.range(size)
