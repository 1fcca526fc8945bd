"""How a conversion's images are laid out in shard files: names, counts, order.

Each split is shuffled with the seed before sharding, so every shard holds
every class, and cut into contiguous runs, one per shard. Shards follow the
TFDS naming, `{dataset}-{split}.tfrecord-00000-of-00004`. Both runners write
the plan as it is made here (`local`, `beam`), through `write`.
"""

from __future__ import annotations

import dataclasses
import math
import random
import re
from collections.abc import Iterator, Sequence

from pipeline import fileio
from pipeline import schema
from pipeline.converter import config as config_lib
from pipeline.converter import sources

DEFAULT_MIN_SHARDS = config_lib.DEFAULT_MIN_SHARDS  # stated in config: --num_shards' help names it
# Bytes per pixel of a 95-quality JPEG of a photo, to plan resized shards.
_JPEG_BYTES_PER_PIXEL = 0.5


def dataset_name_for(src: str) -> str:
    """A TFDS-valid snake_case name from the source folder's name."""
    base = fileio.basename(src).lower()
    name = re.sub(r"[^a-z0-9]+", "_", base).strip("_")
    if not name or not name[0].isalpha():
        name = f"images_{name}".rstrip("_")
    return name


def shard_filename(dataset_name: str, split: str, index: int, count: int) -> str:
    """The TFDS default naming: `{dataset}-{split}.tfrecord-00000-of-00004`."""
    return f"{dataset_name}-{split}.{schema.FILE_FORMAT}-{index:05d}-of-{count:05d}"


def plan_num_shards(images: Sequence[sources.SourceImage], config: config_lib.ConversionConfig) -> int:
    """Enough shards to keep each under `config.shard_bytes` (at `config.image_size`), and several if possible."""
    if config.image_size is None:  # the scan's sizes: no second stat (a request, on a URL)
        estimate = sum(fileio.size(im.path) if im.size is None else im.size for im in images)
    else:
        estimate = len(images) * config.image_size[0] * config.image_size[1] * _JPEG_BYTES_PER_PIXEL
    by_size = math.ceil(estimate / config.shard_bytes)
    return max(1, by_size, min(DEFAULT_MIN_SHARDS, len(images)))


@dataclasses.dataclass(frozen=True)
class Shard:
    """One shard file to write: its split, its name, its images in order."""

    split: str
    filename: str
    images: tuple[sources.SourceImage, ...]


@dataclasses.dataclass(frozen=True)
class SplitPlan:
    """One split, ready to write: its images in shard order, and the shard names."""

    name: str
    images: tuple[sources.SourceImage, ...]
    shard_filenames: tuple[str, ...]

    def shards(self) -> Iterator[Shard]:
        """Each shard: contiguous runs of `images`, in order."""
        count = len(self.shard_filenames)
        bounds = [len(self.images) * i // count for i in range(count + 1)]
        for index, filename in enumerate(self.shard_filenames):
            yield Shard(self.name, filename, self.images[bounds[index] : bounds[index + 1]])


def plan_split(
    name: str, images: Sequence[sources.SourceImage], dataset_name: str, config: config_lib.ConversionConfig
) -> SplitPlan:
    """Shuffles a split with `config.seed` (every shard gets every class) and names its shards."""
    shuffled = list(images)
    random.Random(f"{config.seed}-{name}").shuffle(shuffled)
    count = min(config.num_shards or plan_num_shards(shuffled, config), len(shuffled))
    filenames = tuple(shard_filename(dataset_name, name, i, count) for i in range(count))
    return SplitPlan(name, tuple(shuffled), filenames)


@dataclasses.dataclass(frozen=True)
class ConversionPlan:
    """What a conversion writes: the files found, each split's shard plan, the dataset's name."""

    files: sources.FolderScan
    splits: tuple[SplitPlan, ...]
    dataset_name: str

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.files.class_names

    def shards(self) -> Iterator[Shard]:
        """Every shard of every split, in plan order."""
        for split in self.splits:
            yield from split.shards()


def plan_conversion(files: sources.FolderScan, config: config_lib.ConversionConfig) -> ConversionPlan:
    """Every split of `files` planned as `config` asks, named after `config.src`."""
    dataset_name = dataset_name_for(config.src)
    splits = tuple(plan_split(name, images, dataset_name, config) for name, images in files.splits.items())
    return ConversionPlan(files, splits, dataset_name)
