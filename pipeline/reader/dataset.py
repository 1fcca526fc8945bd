"""Builds the tf.data input pipeline of a records folder: one function per use.

    train_dataset:  shards, shuffled -> interleaved reads, counts checked
                    -> [shuffle records] -> parse + decode + resize (uint8),
                    label checked -> [cache] -> shuffle
                    -> batch -> [augment] -> scale to [0, 1], labels -> prefetch
    eval_dataset:   shards in order -> interleaved reads, counts checked
                    -> parse + decode + resize, label checked -> batch
                    -> [cache] -> scale, labels -> prefetch

Every shard must hold the records the manifest counts, and every label must
be a class index: a short or overlong shard, or a stray label, stops the
epoch with an error naming the shard, never a quietly shorter epoch.

Images stay uint8 until the last stage wherever they are held or warped: the
cache, the shuffle buffer and the warp move a quarter of float32's bytes.
Evaluation without the cache goes from the resize straight to float32.
`cache` means one thing in both: the decoded, resized uint8 images are kept in
memory after the first epoch (height * width * 3 bytes each).
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from pipeline import schema
from pipeline.reader import augment
from pipeline.reader import transforms

DEFAULT_IMAGE_SIZE = (150, 150)
DEFAULT_BATCH_SIZE = 20
# Serialized records waiting to be decoded, shuffled: bounded memory, however
# large the split (about 50 MB for full-size photos).
DEFAULT_SHUFFLE_BUFFER = 1000
# Shards read at once by the interleave.
_MAX_PARALLEL_SHARDS = 8
# Each shard's record count is checked once per block of records, not per
# record. Blocks of about this many bytes (at most this many records) keep
# what the interleave buffers small, whatever the size of the images.
_BLOCK_BYTES = 1 << 20
_MAX_BLOCK_RECORDS = 64
# The functions mapped here are plain TF ops (no Python control flow on tensors):
# autograph's conversion would only add ~1.5 s of start-up to each process.
_plain = tf.autograph.experimental.do_not_convert


@dataclasses.dataclass(frozen=True)
class InputConfig:
    """How to read a split. Defaults follow the notebook's generators.

    Attributes:
      image_size: (height, width) every image is resized to.
      batch_size: images per batch.
      class_mode: "binary", "categorical" or "sparse", as flow_from_directory.
      augmentation: the ranges to augment training batches with on the host,
        or None. Evaluation never augments.
      host_warp: what warps them: OpenCV (faster, in-process only) or
        TensorFlow ops only (for a dataset that runs on tf.data service).
      distributed: the dataset runs on tf.data service workers, each making
        part of the epoch, so its length is not asserted, and its images stay
        uint8 (a quarter of float32's bytes through gRPC):
        `scale_on_trainer` makes them float32 after the service.
      cache: keep the decoded, resized uint8 images in memory after the first
        epoch. Training shuffles and augments them anew each epoch.
      shuffle_buffer: training records in the shuffle buffer without the
        cache (with it, the whole split is shuffled).
      drop_remainder: drop the last, smaller batch.
      dct_scaling: decode large JPEGs at 1/2, 1/4 or 1/8 scale when that stays
        at least `image_size`.
      seed: seed of shuffles and augmentation; None for a fresh one each run.
      deterministic: keep element order across parallel stages. Default: for
        evaluation always, for training when a seed is set.
      autotune: let tf.data's autotuner re-tune parallelism and buffer sizes
        while it runs. Off by default: every parallel stage then gets one
        thread per core (TensorFlow's starting point for AUTOTUNE), which
        read as fast here, while the autotuner's background work slowed a
        model training beside it on the same two cores by up to 25%.
    """

    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE
    batch_size: int = DEFAULT_BATCH_SIZE
    class_mode: str = "binary"
    augmentation: augment.AugmentationConfig | None = None
    host_warp: augment.HostWarp = augment.HostWarp.OPENCV
    distributed: bool = False
    cache: bool = False
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER
    drop_remainder: bool = False
    dct_scaling: bool = True
    seed: int | None = None
    deterministic: bool | None = None
    autotune: bool = False

    def __post_init__(self):
        if self.class_mode not in transforms.CLASS_MODES:
            raise ValueError(
                f"class_mode must be one of {', '.join(transforms.CLASS_MODES)}, got {self.class_mode!r}"
            )
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")
        if min(self.image_size) < 1:
            raise ValueError(f"image_size must be positive, got {self.image_size}")


def decode_example(
    serialized: tf.Tensor,
    image_size: tuple[int, int],
    dct_scaling: bool = True,
    dtype: tf.DType = tf.uint8,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Parses and decodes one record to a resized image.

    Args:
      serialized: scalar `tf.string`, a record written by `pipeline.converter.conversion`.
      image_size: (height, width).
      dct_scaling: see InputConfig.
      dtype: `tf.uint8` (rounded) or `tf.float32`, see
        `transforms.resize_image`.

    Returns:
      (image, label): [height, width, 3] of `dtype` in [0, 255], and an int64
      scalar.
    """
    features = schema.parse_example(serialized)
    size = (features[schema.HEIGHT_KEY], features[schema.WIDTH_KEY], image_size) if dct_scaling else ()
    image = transforms.decode_image(features[schema.IMAGE_KEY], *size)
    return transforms.resize_image(image, image_size, dtype), features[schema.LABEL_KEY]


def input_options(deterministic: bool, autotune: bool = False) -> tf.data.Options:
    """The tf.data options of every dataset built here."""
    options = tf.data.Options()
    options.deterministic = deterministic
    options.autotune.enabled = autotune
    options.experimental_optimization.map_parallelization = True
    options.experimental_optimization.parallel_batch = True
    return options


def read_records(
    records_dir: str, split: str, shuffle: bool = False, seed: int | None = None, deterministic: bool = True
) -> tuple[tf.data.Dataset, schema.Manifest]:
    """The serialized records of a split, from its shards read in parallel.

    Every shard must hold the number of records the manifest gives it: a
    shard cut short or overlong fails, naming the shard, when its end (or its
    first surplus record) is read.

    Args:
      records_dir: a folder written by convert.py.
      split: the split's name.
      shuffle: visit the shards in a new random order each epoch.
      seed: seed of that order.
      deterministic: interleave the shards in a fixed order.

    Returns:
      (scalar `tf.string` records, the folder's manifest).

    Raises:
      FileNotFoundError, ValueError: see `schema.read_manifest`; ValueError
        for a split the folder does not have.
      While iterating, tf.errors.InvalidArgumentError for a record count
      that is not the manifest's, tf.errors.DataLossError for a corrupted or
      truncated record (its message names no file: see
      `pipeline.verify.find_damage`).
    """
    return _read(records_dir, split, shuffle, seed, deterministic, with_position=False)


def _read(
    records_dir: str, split: str, shuffle: bool, seed: int | None, deterministic: bool, with_position: bool
) -> tuple[tf.data.Dataset, schema.Manifest]:
    """read_records; `with_position` adds each record's shard path and index in it."""
    manifest = schema.read_manifest(records_dir)
    info = manifest.split(split, records_dir)
    files = manifest.shard_paths(records_dir, split)
    counts = tf.constant([shard.num_examples for shard in info.shards], tf.int64)
    block = _block_size(info)
    ds = tf.data.Dataset.from_tensor_slices((files, counts))
    if shuffle:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
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
    return ds.unbatch(), manifest


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


def _decode(
    ds: tf.data.Dataset, config: InputConfig, dtype: tf.DType, deterministic: bool, num_classes: int
) -> tf.data.Dataset:
    """(record, path, index) -> (image, label), the label checked against `num_classes`."""

    def decode(record, path, index):
        image, label = decode_example(record, config.image_size, config.dct_scaling, dtype)
        return image, check_label(label, num_classes, path, index)

    return ds.map(_plain(decode), num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)


def _augment(ds: tf.data.Dataset, config: InputConfig, deterministic: bool) -> tf.data.Dataset:
    """Warps uint8 batches, each with its own stateless seed, new every epoch."""
    seeds = tf.data.Dataset.random(seed=config.seed, rerandomize_each_iteration=True).batch(2)

    def warp(batch, batch_seed):
        images, labels = batch
        return augment.augment_batch_on_host(images, batch_seed, config.augmentation, config.host_warp), labels

    return tf.data.Dataset.zip(ds, seeds).map(_plain(warp), num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)


def _finish(
    ds: tf.data.Dataset, config: InputConfig, manifest: schema.Manifest, split: str, deterministic: bool
) -> tf.data.Dataset:
    """Scales images to float32 [0, 1] (on the trainer when distributed), encodes labels,
    states the length, prefetches."""
    num_classes, class_mode = manifest.num_classes, config.class_mode
    scale = (lambda images: images) if config.distributed else transforms.scale_image
    ds = ds.map(
        _plain(lambda images, labels: (scale(images), transforms.encode_label(labels, num_classes, class_mode))),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic,
    )
    if not config.distributed:
        full, rest = divmod(manifest.splits[split].num_examples, config.batch_size)
        num_batches = full + (1 if rest and not config.drop_remainder else 0)
        # Interleaving hides the length; the manifest knows it (Keras shows it).
        ds = ds.apply(tf.data.experimental.assert_cardinality(num_batches))
    return ds.prefetch(tf.data.AUTOTUNE).with_options(input_options(deterministic, config.autotune))


def scale_on_trainer(ds: tf.data.Dataset) -> tf.data.Dataset:
    """After `service.distribute`: (images `tf.uint8` [B, H, W, 3], labels) from the
    workers -> (images float32 [B, H, W, 3] in [0, 1], labels), on the trainer."""
    ds = ds.map(_plain(lambda images, labels: (transforms.scale_image(images), labels)),
                num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def train_dataset(records_dir: str, config: InputConfig = InputConfig(), split: str = "train") -> tf.data.Dataset:
    """Shuffled, optionally augmented batches of a split, one epoch per pass.

    Args:
      records_dir: a folder written by convert.py.
      config: see InputConfig.
      split: the split to train on.

    Returns:
      A dataset of (images, labels): images float32 [B, height, width, 3] in
      [0, 1] (`tf.uint8` in [0, 255] when `config.distributed`); labels as
      `config.class_mode` (binary: float32 [B]; categorical: float32
      [B, num_classes]; sparse: int32 [B]).
    """
    deterministic = config.deterministic if config.deterministic is not None else config.seed is not None
    ds, manifest = _read(records_dir, split, True, config.seed, deterministic, with_position=True)
    if not config.cache:
        ds = ds.shuffle(config.shuffle_buffer, seed=config.seed, reshuffle_each_iteration=True)
    ds = _decode(ds, config, tf.uint8, deterministic, manifest.num_classes)
    if config.cache:
        num_examples = manifest.splits[split].num_examples
        ds = ds.cache().shuffle(num_examples, seed=config.seed, reshuffle_each_iteration=True)
    ds = ds.batch(config.batch_size, drop_remainder=config.drop_remainder)
    if config.augmentation is not None:
        ds = _augment(ds, config, deterministic)
    return _finish(ds, config, manifest, split, deterministic)


def eval_dataset(records_dir: str, split: str, config: InputConfig = InputConfig()) -> tf.data.Dataset:
    """The batches of a split in a fixed order, never augmented.

    Args:
      records_dir: a folder written by convert.py.
      split: "validation", "test" or any split of the folder.
      config: see InputConfig; `augmentation` and `shuffle_buffer` are not used.

    Returns:
      A dataset of (images, labels), as `train_dataset`, the same every pass.
    """
    deterministic = config.deterministic if config.deterministic is not None else True
    ds, manifest = _read(records_dir, split, False, None, deterministic, with_position=True)
    # Without the cache nothing holds the images: skip the round trip through uint8.
    ds = _decode(ds, config, tf.uint8 if config.cache else tf.float32, deterministic, manifest.num_classes)
    ds = ds.batch(config.batch_size, drop_remainder=config.drop_remainder)
    if config.cache:
        ds = ds.cache()
    return _finish(ds, config, manifest, split, deterministic)
