"""Builds the tf.data input pipeline of a records folder: one function per use.

    train_dataset:  shards, shuffled -> interleaved reads, counts checked
                    -> [shuffle records] -> parse + decode + resize (uint8),
                    label checked -> [cache] -> shuffle -> [skip to a position]
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
from pipeline.reader import shards
from pipeline.reader import transforms

DEFAULT_IMAGE_SIZE = (150, 150)
DEFAULT_BATCH_SIZE = 20
# Serialized records waiting to be decoded, shuffled: bounded memory, however
# large the split (about 50 MB for full-size photos).
DEFAULT_SHUFFLE_BUFFER = 1000
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
        `on_trainer` makes them float32 after the service.
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

    def check_fits(self, manifest: schema.Manifest) -> None:
        """Refuses a `class_mode` the records' classes do not fit: "binary" needs exactly two.

        Keras' `image_dataset_from_directory` refuses it too; let through, 5 classes
        came out as float labels 0-4 that a sigmoid output learns nothing from.

        Raises:
          ValueError: the message names the class_mode to pass instead.
        """
        if self.class_mode == "binary" and manifest.num_classes != 2:
            raise ValueError(
                f'class_mode="binary" needs exactly 2 classes, but the records hold {manifest.num_classes} '
                f'({", ".join(manifest.class_names)}): pass class_mode="categorical" (one-hot labels) '
                'or "sparse" (class indices)'
            )


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


def _decode(
    ds: tf.data.Dataset, config: InputConfig, dtype: tf.DType, deterministic: bool, num_classes: int
) -> tf.data.Dataset:
    """(record, path, index) -> (image, label), the label checked against `num_classes`."""

    def decode(record, path, index):
        image, label = decode_example(record, config.image_size, config.dct_scaling, dtype)
        return image, shards.check_label(label, num_classes, path, index)

    return ds.map(_plain(decode), num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)


def _augment(
    ds: tf.data.Dataset, config: InputConfig, deterministic: bool,
    epoch_seed: tf.Tensor | None = None, first_batch: tf.Tensor | int = 0,
) -> tf.data.Dataset:
    """Warps uint8 batches, each with its own stateless seed.

    Without `epoch_seed` the seeds are new every pass; with it (int64 scalar),
    batch i of the pass gets [epoch_seed, first_batch + i], the same in every pass.
    """
    if epoch_seed is None:
        seeds = tf.data.Dataset.random(seed=config.seed, rerandomize_each_iteration=True).batch(2)
    else:
        seeds = tf.data.Dataset.range(first_batch, tf.int64.max).map(lambda i: tf.stack([epoch_seed, i]))

    def warp(batch, batch_seed):
        images, labels = batch
        return augment.augment_batch_on_host(images, batch_seed, config.augmentation, config.host_warp), labels

    return tf.data.Dataset.zip(ds, seeds).map(_plain(warp), num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)


def _finish(
    ds: tf.data.Dataset, config: InputConfig, manifest: schema.Manifest, split: str, deterministic: bool,
    length_known: bool = True,
) -> tf.data.Dataset:
    """Scales images to float32 [0, 1] (on the trainer when distributed), encodes labels,
    states the length (when known), prefetches."""
    config.check_fits(manifest)  # every builder ends here, before any batch is read
    num_classes, class_mode = manifest.num_classes, config.class_mode
    scale = (lambda images: images) if config.distributed else transforms.scale_image
    ds = ds.map(
        _plain(lambda images, labels: (scale(images), transforms.encode_label(labels, num_classes, class_mode))),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic,
    )
    if length_known and not config.distributed:
        # Interleaving hides the length; the manifest knows it (Keras shows it).
        ds = ds.apply(tf.data.experimental.assert_cardinality(num_batches(manifest, split, config)))
    return ds.prefetch(tf.data.AUTOTUNE).with_options(input_options(deterministic, config.autotune))


def num_batches(manifest: schema.Manifest, split: str, config: InputConfig) -> int:
    """Batches in one pass over a split: its examples in `config.batch_size`s (the last
    smaller one dropped with `config.drop_remainder`)."""
    full, rest = divmod(manifest.splits[split].num_examples, config.batch_size)
    return full + (1 if rest and not config.drop_remainder else 0)


def on_trainer(ds: tf.data.Dataset, batch_size: int) -> tf.data.Dataset:
    """After `service.distribute`: (images `tf.uint8` [b, H, W, 3], labels) from the
    workers -> (images float32 [B, H, W, 3] in [0, 1], labels), B = `batch_size`.

    Each worker ends its part of an epoch with a smaller batch; rebatched, only
    the epoch's last batch is smaller, so every whole epoch has the same number
    of batches. Keras counts the first epoch's and cuts any longer one short.
    """
    ds = ds.rebatch(batch_size)
    ds = ds.map(_plain(lambda images, labels: (transforms.scale_image(images), labels)),
                num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


class EpochPosition:
    """The epoch a training dataset's next pass makes, and how many of its batches to leave out.

    Two int64 variables, read as each pass begins: a Keras callback moves them
    before each epoch, and a resumed run starts them where the first one stopped.
    Make it outside any tf.distribute scope (its variables live on the host).
    """

    def __init__(self, epoch: int = 0, skip_batches: int = 0):
        with tf.device("/cpu:0"):
            self.epoch = tf.Variable(epoch, dtype=tf.int64, trainable=False, name="epoch")
            self.skip_batches = tf.Variable(skip_batches, dtype=tf.int64, trainable=False, name="skip_batches")

    def move_to(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch.assign(epoch)
        self.skip_batches.assign(skip_batches)


def epoch_seeds(seed: int, epoch: tf.Tensor | int) -> tf.Tensor:
    """int64 [3] seeds of an epoch's shard order, record order and augmentation, from (seed, epoch) alone."""
    pair = tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64)])
    return tf.random.stateless_uniform([3], seed=pair, minval=None, maxval=None, dtype=tf.int64)


def train_dataset(
    records_dir: str, config: InputConfig = InputConfig(), split: str = "train",
    position: EpochPosition | None = None, steps_per_epoch: int | None = None,
) -> tf.data.Dataset:
    """Shuffled, optionally augmented batches of a split, one epoch per pass.

    Args:
      records_dir: a folder written by convert.py.
      config: see InputConfig.
      split: the split to train on.
      position: None: each pass is a new epoch, its order and augmentation
        drawn anew (from config.seed and the passes made so far in this
        process). An EpochPosition: each pass is the epoch it names, from the
        batch it names; order and augmentation come from (config.seed, epoch)
        alone, so they are the same in every process, and a run resumed
        mid-epoch sees the batches an uninterrupted one would have. Left-out
        records are not decoded. The length of a pass is then not stated.
      steps_per_epoch: with `position`, batches per epoch: the epoch's own
        batches, then again from its first, as many as needed; None for one
        pass over the split.

    Returns:
      A dataset of (images, labels): images float32 [B, height, width, 3] in
      [0, 1] (`tf.uint8` in [0, 255] when `config.distributed`); labels as
      `config.class_mode` (binary: float32 [B]; categorical: float32
      [B, num_classes]; sparse: int32 [B]).
    """
    deterministic = config.deterministic if config.deterministic is not None else config.seed is not None
    if position is not None:
        ds, manifest = _epoch_passes(records_dir, config, split, deterministic, position, steps_per_epoch)
        return _finish(ds, config, manifest, split, deterministic, length_known=False)
    ds, manifest = shards.read_with_position(records_dir, split, True, config.seed, deterministic)
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


def _epoch_passes(
    records_dir: str, config: InputConfig, split: str, deterministic: bool, position: EpochPosition,
    steps_per_epoch: int | None,
) -> tuple[tf.data.Dataset, schema.Manifest]:
    """train_dataset's passes with a `position`: uint8 batches, unscaled."""
    if config.seed is None:
        raise ValueError("a training dataset with an EpochPosition needs a seed")
    manifest = schema.read_manifest(records_dir)
    num_examples = manifest.split(split, records_dir).num_examples
    if config.cache:  # decoded once, in shard order; each epoch shuffles the whole split
        cached, _ = shards.read_with_position(records_dir, split, False, None, deterministic)
        cached = _decode(cached, config, tf.uint8, deterministic, manifest.num_classes).cache()
    batches = num_batches(manifest, split, config)

    def epoch_batches(seeds: tf.Tensor, skip: tf.Tensor) -> tf.data.Dataset:
        if config.cache:
            ds = cached.shuffle(num_examples, seed=seeds[1], reshuffle_each_iteration=False)
        else:
            ds, _ = shards.read_with_position(records_dir, split, True, seeds[0], deterministic, reshuffle=False)
            ds = ds.shuffle(config.shuffle_buffer, seed=seeds[1], reshuffle_each_iteration=False)
        ds = ds.skip(skip * config.batch_size)
        if not config.cache:
            ds = _decode(ds, config, tf.uint8, deterministic, manifest.num_classes)
        ds = ds.batch(config.batch_size, drop_remainder=config.drop_remainder)
        if config.augmentation is not None:
            ds = _augment(ds, config, deterministic, epoch_seed=seeds[2], first_batch=skip)
        return ds

    def one_pass(_):
        # Every seed here is explicit. Under a global seed of 0, Dataset.shuffle
        # tests a seed tensor as a Python bool (TF 2.21): this graph takes none.
        tf.compat.v1.get_default_graph().seed = None
        seeds = epoch_seeds(config.seed, position.epoch)
        skip = position.skip_batches.read_value()
        if steps_per_epoch is None:
            return epoch_batches(seeds, skip)
        again = epoch_batches(seeds, tf.constant(0, tf.int64)).repeat()
        return epoch_batches(seeds, skip % batches).concatenate(again).take(steps_per_epoch - skip)

    return tf.data.Dataset.from_tensors(0).flat_map(_plain(one_pass)), manifest


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
    ds, manifest = shards.read_with_position(records_dir, split, False, None, deterministic)
    # Without the cache nothing holds the images: skip the round trip through uint8.
    ds = _decode(ds, config, tf.uint8 if config.cache else tf.float32, deterministic, manifest.num_classes)
    ds = ds.batch(config.batch_size, drop_remainder=config.drop_remainder)
    if config.cache:
        ds = ds.cache()
    return _finish(ds, config, manifest, split, deterministic)


def split_filenames(records_dir: str, split: str) -> list[str]:
    """Each record's source path (relative to its split folder), in `eval_dataset`'s order."""
    ds, _ = shards.read_records(records_dir, split)
    ds = ds.map(_plain(lambda record: schema.parse_example(record)[schema.FILENAME_KEY]),
                num_parallel_calls=tf.data.AUTOTUNE)
    return [name.decode() for batch in ds.batch(1024).as_numpy_iterator() for name in batch]


def files_dataset(
    paths: list[str], image_size: tuple[int, int], batch_size: int, stored_size: tuple[int, int] | None = None
) -> tf.data.Dataset:
    """Image files (local paths or URLs `tf.io.gfile` reads), read and decoded in parallel.

    Each file goes through `transforms.preprocess_encoded`, the records'
    evaluation decode (`stored_size`: the size the model's records were stored
    at, None for originals). A file that cannot be read or decoded is left
    out; the caller finds it by its missing index.

    Returns:
      Batches of (images `tf.float32` [B, height, width, 3] in [0, 1],
      indices into `paths`, int64 [B]), in the order of `paths`.
    """

    def load(index, path):
        return transforms.preprocess_encoded(tf.io.read_file(path), image_size, stored_size), index

    ds = tf.data.Dataset.from_tensor_slices((tf.range(len(paths), dtype=tf.int64), tf.constant(paths, tf.string)))
    ds = ds.map(_plain(load), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.ignore_errors().batch(batch_size)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(input_options(deterministic=True))
