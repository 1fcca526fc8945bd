"""A process's share of the records, when several processes train one model.

    the manifest --share_manifest(split, Share(i, n))--> the manifest process i reads:
    the split's shards i, i + n, i + 2n, ... (dealt out in manifest order)

Each process reads and decodes only its own shards, never all of them: the
reader's builders take the shared manifest as they take any other. Every
process must make as many batches of the same size (a global batch is one
array over all of them), so an epoch is the batches of the smallest share
(`common_steps`), and an evaluation pads the shares to one length with
examples of weight 0 (`weighted_eval_dataset`): the metrics count every
image of the split once.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from pipeline import cli
from pipeline import schema
from pipeline.reader import dataset


@dataclasses.dataclass(frozen=True)
class Share:
    """Process `index` of `count`: it reads the shards `index`, `index + count`, ..."""

    index: int = 0
    count: int = 1

    def __post_init__(self):
        if not 0 <= self.index < self.count:
            raise ValueError(f"process {self.index} of {self.count}: the index must be in [0, {self.count})")


class TooFewShardsError(cli.InputError):
    """A split has fewer shards than processes: some would read nothing."""


def share_manifest(manifest: schema.Manifest, split: str, share: Share, records_dir: str) -> schema.Manifest:
    """`manifest` with `split` cut down to the shards process `share.index` reads.

    Raises:
      TooFewShardsError: the split has fewer shards than processes (names --num_shards).
    """
    if share.count == 1:
        return manifest
    info = manifest.split(split, records_dir)
    if len(info.shards) < share.count:
        raise TooFewShardsError(
            f"the {split} split of {records_dir} has {len(info.shards)} shard(s) for {share.count} processes: "
            f"each process reads shards of its own; convert again with --num_shards={share.count} or more "
            f"(a multiple of {share.count} gives every process as many images)")
    mine = info.shards[share.index::share.count]
    # The class counts stay the split's: no one reads a share's per-class counts.
    splits = {**manifest.splits, split: dataclasses.replace(info, shards=mine)}
    return dataclasses.replace(manifest, splits=splits)


def share_sizes(manifest: schema.Manifest, split: str, count: int) -> list[int]:
    """The images of each process's share of `split`, process 0 first."""
    shards = manifest.splits[split].shards
    return [sum(shard.num_examples for shard in shards[index::count]) for index in range(count)]


def common_steps(manifest: schema.Manifest, split: str, count: int, local_batch: int) -> int:
    """Full batches of `local_batch` every process's share of `split` makes: the smallest share's."""
    return min(share_sizes(manifest, split, count)) // local_batch


def weighted_eval_dataset(
    records_dir: str, split: str, config: dataset.InputConfig, manifest: schema.Manifest, share: Share,
) -> tuple[tf.data.Dataset, int]:
    """Process `share.index`'s evaluation batches of `split`, as many and as large as every other process's.

    `config.batch_size` is the local batch. Each share is padded to the largest
    share's full batches with black images of weight 0; the real images weigh
    padded / real examples of the split, so that Keras' loss (summed over a
    batch, divided by its size, batches averaged by their size) is the mean over
    the real images alone, as the weighted metrics are.

    Returns:
      (dataset of (images float32 [B, H, W, 3], labels as `config.class_mode`,
      weights float32 [B]), its number of batches).
    """
    sizes = share_sizes(manifest, split, share.count)
    steps = -(-max(sizes) // config.batch_size)
    weight = steps * config.batch_size * share.count / sum(sizes)
    mine = share_manifest(manifest, split, share, records_dir)
    ds = dataset.eval_dataset(records_dir, split, config, mine).unbatch()
    ds = ds.map(lambda images, labels: (images, labels, tf.constant(weight, tf.float32)))
    image, label, _ = ds.element_spec
    blank = (tf.zeros(image.shape, image.dtype), tf.zeros(label.shape, label.dtype), tf.constant(0.0))
    padding = tf.data.Dataset.from_tensors(blank).repeat(steps * config.batch_size - sizes[share.index])
    ds = ds.concatenate(padding).batch(config.batch_size, drop_remainder=True)
    return ds.apply(tf.data.experimental.assert_cardinality(steps)).prefetch(tf.data.AUTOTUNE), steps
