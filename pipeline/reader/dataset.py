"""Builds the tf.data input pipeline of a records folder: one function per use.

    train_passes:   per pass, the epoch and batch an EpochPosition names:
                    shards in the epoch's order -> interleaved reads, counts
                    checked -> shuffle records -> [skip to the batch] -> parse
                    + decode + resize (uint8), label checked -> batch
                    [or: decoded once into the cache -> shuffle -> skip -> batch]
                    -> [augment] -> scale to [0, 1], labels -> length -> prefetch
    eval_dataset:   shards in order -> interleaved reads, counts checked
                    -> parse + decode + resize, label checked -> batch
                    -> [cache] -> scale, labels -> length -> prefetch

The manifest is read once by the caller and passed down (None: read here).

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
import random

import tensorflow as tf

from pipeline import schema
from pipeline.reader import augment
from pipeline.reader import epochs
from pipeline.reader import read
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
        part of the epoch (no length stated), its images uint8 (a quarter of
        float32's bytes through gRPC) until `service.on_trainer`.
      cache: keep the decoded, resized uint8 images in memory after the first
        epoch. Training shuffles and augments them anew each epoch.
      shuffle_buffer: training records in the shuffle buffer without the
        cache (with it, the whole split is shuffled).
      drop_remainder: drop the last, smaller batch.
      dct_scaling: decode large JPEGs at 1/2, 1/4 or 1/8 scale when that stays
        at least `image_size`.
      seed: seed of shuffles and augmentation; None: one drawn as a dataset is built.
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
    serialized: tf.Tensor, image_size: tuple[int, int], dct_scaling: bool = True, dtype: tf.DType = tf.uint8
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
        return image, read.check_label(label, num_classes, path, index)

    return ds.map(_plain(decode), num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)


def _augment(
    ds: tf.data.Dataset, config: InputConfig, deterministic: bool, seed: tf.Tensor | int,
    first_batch: tf.Tensor | int, reshuffle: bool,
) -> tf.data.Dataset:
    """Warps uint8 batches, each with its own stateless seed: batch i of a pass gets
    [seed, first_batch + i], the same in every pass; with `reshuffle`, draws new
    ones from `seed` each pass."""
    if reshuffle:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    else:
        seeds = tf.data.Dataset.range(first_batch, tf.int64.max).map(lambda i: tf.stack([seed, i]))

    def warp(batch, batch_seed):
        images, labels = batch
        return augment.augment_batch_on_host(images, batch_seed, config.augmentation, config.host_warp), labels

    return tf.data.Dataset.zip(ds, seeds).map(_plain(warp), num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)


def _finish(
    ds: tf.data.Dataset, config: InputConfig, manifest: schema.Manifest, deterministic: bool, length: int | None,
) -> tf.data.Dataset:
    """Scales images to float32 [0, 1] (on the trainer when distributed), encodes labels,
    states the length in batches (None: not known here), prefetches."""
    config.check_fits(manifest)  # every builder ends here, before any batch is read
    num_classes, class_mode = manifest.num_classes, config.class_mode
    scale = (lambda images: images) if config.distributed else transforms.scale_image
    ds = ds.map(
        _plain(lambda images, labels: (scale(images), transforms.encode_label(labels, num_classes, class_mode))),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic,
    )
    if length is not None:  # interleaving hides the length; the manifest knows it (Keras shows it)
        ds = ds.apply(tf.data.experimental.assert_cardinality(length))
    return ds.prefetch(tf.data.AUTOTUNE).with_options(input_options(deterministic, config.autotune))


def num_batches(manifest: schema.Manifest, split: str, config: InputConfig) -> int:
    """Batches in one pass over a split: its examples in `config.batch_size`s (the last
    smaller one dropped with `config.drop_remainder`)."""
    full, rest = divmod(manifest.splits[split].num_examples, config.batch_size)
    return full + (1 if rest and not config.drop_remainder else 0)


def train_dataset(
    records_dir: str, config: InputConfig = InputConfig(), split: str = "train",
    position: epochs.EpochPosition | None = None, steps_per_epoch: int | None = None,
    manifest: schema.Manifest | None = None,
) -> tf.data.Dataset:
    """Shuffled, optionally augmented batches of a split, one epoch per pass: `train_passes`' first.

    Returns:
      A dataset of (images, labels): images float32 [B, height, width, 3] in
      [0, 1] (`tf.uint8` in [0, 255] when `config.distributed`: what tf.data
      service workers make, see `service.train_passes`); labels as
      `config.class_mode` (binary: float32 [B]; categorical: float32
      [B, num_classes]; sparse: int32 [B]). Its stated length is its first pass's.
    """
    if config.distributed:
        return _on_workers(records_dir, config, split, manifest)
    passes = train_passes(records_dir, config, split, position, steps_per_epoch, manifest)
    return passes.epochs if passes.rest_of_epoch is None else passes.rest_of_epoch


def train_passes(
    records_dir: str, config: InputConfig = InputConfig(), split: str = "train",
    position: epochs.EpochPosition | None = None, steps_per_epoch: int | None = None,
    manifest: schema.Manifest | None = None,
) -> epochs.TrainPasses:
    """The training batches made in this process: each pass the epoch `position` names, from its batch.

    Order and augmentation come from (seed, epoch) alone, the same in every
    process: a run resumed mid-epoch sees the batches an uninterrupted one
    would have. Left-out records are not decoded.

    Args:
      records_dir: a folder written by convert.py.
      config: see InputConfig; `config.seed` None: one drawn here.
      split: the split to train on.
      position: the epoch and batch each pass starts at, moved by its owner;
        None: from epoch 0, each pass the next epoch (`EpochPosition.advance`).
      steps_per_epoch: batches an epoch: the epoch's own, then again from its
        first, as many as needed; None for one pass over the split.
      manifest: the folder's manifest, read by the caller; None reads it here.
    """
    if position is None:
        position = epochs.EpochPosition(advance=True)
    elif config.seed is None:
        raise ValueError("a training dataset with an EpochPosition needs a seed")
    source = _TrainSplit.of(records_dir, config, split, manifest)
    seed, batches = _seed(config), num_batches(source.manifest, split, config)

    def one_pass(_):
        # Every seed here is explicit. Under a global seed of 0, Dataset.shuffle
        # tests a seed tensor as a Python bool (TF 2.21): this graph takes none.
        tf.compat.v1.get_default_graph().seed = None
        epoch, skip = position.next_pass()
        seeds = epochs.epoch_seeds(seed, epoch)
        if steps_per_epoch is None:
            return _epoch(source, seeds, skip)
        again = _epoch(source, seeds, tf.constant(0, tf.int64)).repeat()
        return _epoch(source, seeds, skip % batches).concatenate(again).take(steps_per_epoch - skip)

    ds = tf.data.Dataset.from_tensors(0).flat_map(_plain(one_pass))
    length, skipped = steps_per_epoch or batches, int(position.skip_batches.numpy())
    rest = source.finish(ds, length - skipped) if skipped else None
    return epochs.TrainPasses(source.finish(ds, length), rest, length)


@dataclasses.dataclass(frozen=True)
class _TrainSplit:
    """What each pass of a training input reads: a split's records, or its decoded images
    (`cached`: decoded once, in shard order, kept after the first pass)."""

    records_dir: str
    config: InputConfig
    split: str
    manifest: schema.Manifest
    deterministic: bool
    cached: tf.data.Dataset | None

    @classmethod
    def of(cls, records_dir: str, config: InputConfig, split: str, manifest: schema.Manifest | None) -> "_TrainSplit":
        manifest = schema.read_manifest(records_dir) if manifest is None else manifest
        manifest.split(split, records_dir)
        deterministic = config.deterministic if config.deterministic is not None else config.seed is not None
        cached = None
        if config.cache:
            in_order = read.read_with_position(records_dir, manifest, split, deterministic=deterministic)
            cached = _decode(in_order, config, tf.uint8, deterministic, manifest.num_classes).cache()
        return cls(records_dir, config, split, manifest, deterministic, cached)

    def finish(self, ds: tf.data.Dataset, length: int | None) -> tf.data.Dataset:
        return _finish(ds, self.config, self.manifest, self.deterministic, length)


def _epoch(
    source: _TrainSplit, seeds: tf.Tensor | list[int], skip: tf.Tensor | int, reshuffle: bool = False
) -> tf.data.Dataset:
    """One epoch's uint8 batches from batch `skip`: the chain of every training input.

    Args:
      seeds: int64 [3] (`epoch_seeds`): shard order, record order, augmentation.
      reshuffle: each pass draws a new order and new augmentations from the
        seeds (tf.data service workers, which hold no position).
    """
    config, deterministic = source.config, source.deterministic
    if source.cached is not None:
        num_examples = source.manifest.splits[source.split].num_examples
        ds = source.cached.shuffle(num_examples, seed=seeds[1], reshuffle_each_iteration=reshuffle)
    else:
        ds = read.read_with_position(source.records_dir, source.manifest, source.split, shard_seed=seeds[0],
                                     reshuffle=reshuffle, deterministic=deterministic)
        ds = ds.shuffle(config.shuffle_buffer, seed=seeds[1], reshuffle_each_iteration=reshuffle)
    if not isinstance(skip, int) or skip:
        ds = ds.skip(skip * config.batch_size)
    if source.cached is None:
        ds = _decode(ds, config, tf.uint8, deterministic, source.manifest.num_classes)
    ds = ds.batch(config.batch_size, drop_remainder=config.drop_remainder)
    if config.augmentation is not None:
        ds = _augment(ds, config, deterministic, seeds[2], skip, reshuffle)
    return ds


def _on_workers(records_dir: str, config: InputConfig, split: str, manifest: schema.Manifest) -> tf.data.Dataset:
    """The training chain as tf.data service workers run it: no position (a variable
    cannot travel to them), the shard files its source (the dispatcher deals them
    out), new draws each pass; uint8 batches of no stated length."""
    source = _TrainSplit.of(records_dir, config, split, manifest)
    seeds = [int(seed) for seed in epochs.epoch_seeds(_seed(config), 0).numpy()]
    return source.finish(_epoch(source, seeds, 0, reshuffle=True), None)


def _seed(config: InputConfig) -> int:
    """`config.seed`, or one drawn now."""
    return config.seed if config.seed is not None else random.SystemRandom().getrandbits(31)


def eval_dataset(
    records_dir: str, split: str, config: InputConfig = InputConfig(), manifest: schema.Manifest | None = None
) -> tf.data.Dataset:
    """The batches of a split in a fixed order, never augmented.

    Args:
      records_dir: a folder written by convert.py.
      split: "validation", "test" or any split of the folder.
      config: see InputConfig; `augmentation` and `shuffle_buffer` are not used.
      manifest: the folder's manifest, read by the caller; None reads it here.

    Returns:
      A dataset of (images, labels), as `train_dataset`, the same every pass.
    """
    deterministic = config.deterministic if config.deterministic is not None else True
    manifest = schema.read_manifest(records_dir) if manifest is None else manifest
    ds = read.read_with_position(records_dir, manifest, split, deterministic=deterministic)
    # Without the cache nothing holds the images: skip the round trip through uint8.
    ds = _decode(ds, config, tf.uint8 if config.cache else tf.float32, deterministic, manifest.num_classes)
    ds = ds.batch(config.batch_size, drop_remainder=config.drop_remainder)
    if config.cache:
        ds = ds.cache()
    return _finish(ds, config, manifest, deterministic, num_batches(manifest, split, config))


def split_filenames(records_dir: str, split: str, manifest: schema.Manifest | None = None) -> list[str]:
    """Each record's source path (relative to its split folder), in `eval_dataset`'s order."""
    ds = read.read_records(records_dir, split, manifest)
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
