"""Writes a conversion's shards on this machine: decoding processes feed one writer.

    images of every shard still to write, as one stream
      --decoders.bounded_imap(encode_record)-->  (a window of tasks per worker)
      --shards.write_shard, shard by shard, in planned order-->  scratch/<shard> + its sidecar

Shards that `--resume` kept are not written again; their images are added to
the duplicate search again, in their place in the plan. The Beam runner
(`beam`) does the same with Beam's workers.
"""

from __future__ import annotations

import functools
import multiprocessing.pool
from collections.abc import Callable, Iterable, Iterator, Sequence

from tqdm import tqdm

from pipeline import schema
from pipeline.converter import decoders
from pipeline.converter import duplicates
from pipeline.converter import resume
from pipeline.converter import rules
from pipeline.converter import sharding
from pipeline.converter import shards
from pipeline.converter import sources

Encode = Callable[[Iterable[sources.SourceImage]], Iterator[shards.Encoded]]


def encoder(
    pool: multiprocessing.pool.Pool | None,
    workers: int,
    stored_size: tuple[int, int] | None,
    max_pixels: int,
    fingerprint: bool = False,
) -> Encode:
    """`shards.encode_record` over a stream of images: in `pool`, or in this process if None."""
    task = functools.partial(
        shards.encode_record, stored_size=stored_size, max_pixels=max_pixels, fingerprint=fingerprint
    )
    if pool is None:
        return functools.partial(map, task)
    return functools.partial(decoders.bounded_imap, pool, task, workers)


def write_splits(
    plans: Sequence[sharding.SplitPlan],
    scan: sources.FolderScan,
    scratch: str,
    encode: Encode,
    strict: bool,
    show_progress: bool,
    kept: dict[str, shards.ShardResult],
    index: duplicates.DuplicateIndex | None = None,
) -> tuple[dict[str, schema.SplitInfo], list[schema.SkippedFile]]:
    """Writes every split's shards into `scratch`, but those in `kept`, each with its sidecar.

    Every image, written or kept, goes through `index` (if any) in plan order.

    Returns:
      (split name -> SplitInfo, for every plan, even one whose files were
      all skipped; the skipped files: the scan's, then the decoders').
    """
    todo = [images for plan in plans for filename, images in plan.shards() if filename not in kept]
    encoded = encode(image for images in todo for image in images)  # one stream: no pause between shards
    splits: dict[str, schema.SplitInfo] = {}
    skipped = list(scan.skipped)
    with tqdm(total=scan.num_files, unit="img", desc="converting", disable=not show_progress) as bar:
        for plan in plans:
            results = []
            for filename, images in plan.shards():
                result = kept.get(filename)
                if result is None:
                    result = shards.write_shard(
                        plan.name, filename, images, encoded, scratch, scan.class_names, lambda: bar.update(1),
                        index,
                    )
                    resume.write_result(scratch, result)  # after the shard is whole
                else:
                    bar.update(len(images))
                    if index is not None:
                        index.replay(plan.name, result.fingerprints)
                results.append(result)
            split, split_skipped = shards.gather_split(plan.name, results, scan.class_names)
            splits[split.name] = split
            skipped += split_skipped
            if strict:
                rules.check_strict(skipped)
    return splits, skipped
