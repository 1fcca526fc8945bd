"""How a split's images are laid out in shard files: names, counts, order.

Each split is shuffled with the seed before sharding, so every shard holds
every class, and cut into contiguous runs, one per shard. Shards follow the
TFDS naming, `{dataset}-{split}.tfrecord-00000-of-00004`.
"""

from __future__ import annotations

import dataclasses
import math
import random
import re
from collections.abc import Iterator, Sequence

from pipeline import fileio
from pipeline import schema
from pipeline.converter import sources

DEFAULT_SHARD_BYTES = 100 * 1024 * 1024
# Several shards per split even when small: they are read in parallel.
DEFAULT_MIN_SHARDS = 4
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


def plan_num_shards(
    images: Sequence[sources.SourceImage],
    stored_size: tuple[int, int] | None,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> int:
    """Enough shards to keep each under `shard_bytes`, and several if possible."""
    if stored_size is None:  # the scan's sizes: no second stat (a request, on a URL)
        estimate = sum(fileio.size(im.path) if im.size is None else im.size for im in images)
    else:
        estimate = len(images) * stored_size[0] * stored_size[1] * _JPEG_BYTES_PER_PIXEL
    by_size = math.ceil(estimate / shard_bytes)
    return max(1, by_size, min(DEFAULT_MIN_SHARDS, len(images)))


@dataclasses.dataclass(frozen=True)
class SplitPlan:
    """One split, ready to write: its images in shard order, and the shard names."""

    name: str
    images: tuple[sources.SourceImage, ...]
    shard_filenames: tuple[str, ...]

    def shards(self) -> Iterator[tuple[str, tuple[sources.SourceImage, ...]]]:
        """(file name, images) of each shard: contiguous runs of `images`."""
        count = len(self.shard_filenames)
        bounds = [len(self.images) * i // count for i in range(count + 1)]
        for index, filename in enumerate(self.shard_filenames):
            yield filename, self.images[bounds[index] : bounds[index + 1]]


def plan_split(
    name: str,
    images: Sequence[sources.SourceImage],
    dataset_name: str,
    seed: int,
    num_shards: int | None,
    stored_size: tuple[int, int] | None,
    shard_bytes: int,
) -> SplitPlan:
    """Shuffles a split with the seed (every shard gets every class) and names its shards."""
    shuffled = list(images)
    random.Random(f"{seed}-{name}").shuffle(shuffled)
    count = min(num_shards or plan_num_shards(shuffled, stored_size, shard_bytes), len(shuffled))
    filenames = tuple(shard_filename(dataset_name, name, i, count) for i in range(count))
    return SplitPlan(name, tuple(shuffled), filenames)
