"""Builds the tf.data input pipeline for one split of a records folder.

    shards (manifest) -> parallel interleaved reads -> [shuffle records]
      -> parse + decode + resize (parallel, uint8) -> [cache] -> [shuffle]
      -> batch -> [augment: one OpenCV warp per image] -> scale to [0, 1]
      -> labels in class_mode -> prefetch

When augmenting or caching training images, images stay uint8 until the last
stage: the cache, the shuffle buffer and the warp move a quarter of the bytes
of float32. Otherwise (evaluation, or training with neither) each image goes
from the resize straight to float32 [0, 1], and evaluation caches the
finished batches.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from pipeline import augment
from pipeline import schema
from pipeline import transforms

DEFAULT_IMAGE_SIZE = (150, 150)
DEFAULT_BATCH_SIZE = 20
# Serialized records waiting to be decoded, shuffled: bounded memory, however
# large the split (about 50 MB for full-size photos).
DEFAULT_SHUFFLE_BUFFER = 1000


@dataclasses.dataclass(frozen=True)
class InputConfig:
    """How to read one split. Defaults follow the notebook's generators.

    Attributes:
      image_size: (height, width) every image is resized to.
      batch_size: images per batch.
      class_mode: "binary", "categorical" or "sparse", as flow_from_directory.
      training: shuffle each epoch, and allow augmentation.
      augmentation: the ranges to augment with on the host, or None for no
        host augmentation. Only with `training`.
      cache: keep images in memory after the first epoch: for training the
        decoded, resized uint8 images (height * width * 3 bytes each), which
        are shuffled and augmented anew each epoch; otherwise the finished
        float32 batches (height * width * 12 bytes per image).
      shuffle_buffer: records in the shuffle buffer when not caching (with
        `cache`, the whole split is shuffled).
      drop_remainder: drop the last, smaller batch.
      dct_scaling: decode large JPEGs at 1/2, 1/4 or 1/8 scale when that stays
        at least `image_size`.
      seed: seed of shuffles and augmentation; None for a fresh one each run.
      deterministic: keep element order across parallel stages. Default: only
        when `training` is false or a seed is set.
      autotune: let tf.data's autotuner re-tune parallelism and buffer sizes
        while it runs. Off by default: every parallel stage then gets one
        thread per core (TensorFlow's starting point for AUTOTUNE), which
        read as fast here, while the autotuner's background work slowed a
        model training beside it on the same two cores by up to 25%.
    """

    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE
    batch_size: int = DEFAULT_BATCH_SIZE
    class_mode: str = "binary"
    training: bool = False
    augmentation: augment.AugmentationConfig | None = None
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
        if self.augmentation is not None and not self.training:
            raise ValueError("augmentation is for training only: set training=True")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")


def decode_example(
    serialized: tf.Tensor,
    image_size: tuple[int, int],
    dct_scaling: bool = True,
    dtype: tf.DType = tf.uint8,
):
    """Parses and decodes one record to a resized image.

    Args:
      serialized: scalar `tf.string`, a record written by `pipeline.writer`.
      image_size: (height, width).
      dct_scaling: see InputConfig.
      dtype: `tf.uint8` (rounded) or `tf.float32`, see
        `transforms.resize_image`.

    Returns:
      (image, label): [height, width, 3] of `dtype` in [0, 255], and an int64
      scalar.
    """
    features = schema.parse_example(serialized)
    if dct_scaling:
        image = transforms.decode_image(
            features[schema.IMAGE_KEY], features[schema.HEIGHT_KEY],
            features[schema.WIDTH_KEY], image_size,
        )
    else:
        image = transforms.decode_image(features[schema.IMAGE_KEY])
    image = transforms.resize_image(image, image_size, dtype)
    return image, features[schema.LABEL_KEY]


def _options(deterministic: bool, autotune: bool) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = deterministic
    options.autotune.enabled = autotune
    options.experimental_optimization.map_parallelization = True
    options.experimental_optimization.parallel_batch = True
    return options


def build_dataset(records_dir: str, split: str, config: InputConfig = InputConfig()) -> tf.data.Dataset:
    """The batched dataset of one split of a records folder.

    Args:
      records_dir: a folder written by convert.py (with its manifest.json).
      split: "train", "validation" or "test".
      config: see InputConfig.

    Returns:
      A dataset of (images, labels): images float32 [B, height, width, 3] in
      [0, 1]; labels as `config.class_mode` (binary: float32 [B]; categorical:
      float32 [B, num_classes]; sparse: int32 [B]). One pass over the split.
    """
    manifest = schema.read_manifest(records_dir)
    files = manifest.shard_paths(records_dir, split)
    num_examples = manifest.splits[split].num_examples
    autotune = tf.data.AUTOTUNE
    seed = config.seed
    deterministic = config.deterministic
    if deterministic is None:
        deterministic = not config.training or seed is not None

    ds = tf.data.Dataset.from_tensor_slices(files)
    if config.training:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = ds.interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(len(files), 8),
        num_parallel_calls=autotune,
        deterministic=deterministic,
    )
    if config.training and not config.cache:
        ds = ds.shuffle(config.shuffle_buffer, seed=seed, reshuffle_each_iteration=True)

    num_classes, class_mode = manifest.num_classes, config.class_mode
    augmentation = config.augmentation
    if augmentation is None and not (config.cache and config.training):
        # Nothing between decode and scale: go straight to float32 [0, 1],
        # skipping the round trip through uint8.
        def decode_and_scale(record):
            image, label = decode_example(record, config.image_size, config.dct_scaling, tf.float32)
            return transforms.scale_image(image), transforms.encode_label(label, num_classes, class_mode)

        ds = ds.map(decode_and_scale, num_parallel_calls=autotune, deterministic=deterministic)
        ds = ds.batch(config.batch_size, drop_remainder=config.drop_remainder)
    else:
        ds = ds.map(
            lambda record: decode_example(record, config.image_size, config.dct_scaling),
            num_parallel_calls=autotune,
            deterministic=deterministic,
        )
        if config.cache:
            # Cache decoded uint8 images; shuffle and augment them anew each epoch.
            ds = ds.cache().shuffle(num_examples, seed=seed, reshuffle_each_iteration=True)
        ds = ds.batch(config.batch_size, drop_remainder=config.drop_remainder)

        def augment_and_scale(images, labels, batch_seed=None):
            if batch_seed is not None:
                images = augment.augment_batch_on_host(images, batch_seed, augmentation)
            return transforms.scale_image(images), transforms.encode_label(labels, num_classes, class_mode)

        if augmentation is not None:
            # One stateless seed pair per batch, new every epoch.
            seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
            ds = tf.data.Dataset.zip(ds, seeds).map(
                lambda batch, batch_seed: augment_and_scale(*batch, batch_seed),
                num_parallel_calls=autotune,
                deterministic=deterministic,
            )
        else:
            ds = ds.map(augment_and_scale, num_parallel_calls=autotune, deterministic=deterministic)
    if config.cache and not config.training:
        # Without shuffling or augmentation every epoch is the same: keep the
        # finished float32 batches (image_size * 3 * 4 bytes per image).
        ds = ds.cache()
    num_batches = num_examples // config.batch_size
    if not config.drop_remainder and num_examples % config.batch_size:
        num_batches += 1
    # Interleaving hides the length; the manifest knows it (Keras shows it).
    ds = ds.apply(tf.data.experimental.assert_cardinality(num_batches))
    ds = ds.prefetch(autotune)
    return ds.with_options(_options(deterministic, config.autotune))
