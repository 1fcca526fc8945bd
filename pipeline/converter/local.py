"""Writes a conversion's shards on this machine, with a pool of decoding processes.

Each worker writes whole shards: it decodes, checks and encodes a shard's
images and writes the file itself, and this process only collects the
results in planned order (the launcher stays off the critical path):

    shards still to write --pool.imap(shards.write_whole_shard)--> scratch/<shard>, ShardResult
      --in planned order--> the duplicate search (`duplicates`), the shard's sidecar (`resume`)

With `--duplicates=drop` (whether an image is written depends on every image
before it) or a URL output (the workers stay free of TensorFlow's
filesystems), the workers only encode and this process writes:

    images of every shard still to write, as one stream
      --decoders.bounded_imap(encode_record)-->  (a window of tasks per worker)
      --shards.write_shard, shard by shard, in planned order-->  scratch/<shard> + its sidecar

Both write the same bytes (`shards`). Shards that `--resume` kept are not
written again; their images are added to the duplicate search again, in their
place in the plan. The Beam runner (`beam`) does the same with Beam's workers.
"""

from __future__ import annotations

import dataclasses
import functools
import multiprocessing.pool
from collections.abc import Iterator, Sequence

from tqdm import tqdm

from pipeline import fileio
from pipeline import schema
from pipeline.converter import decoders
from pipeline.converter import duplicates
from pipeline.converter import resume
from pipeline.converter import rules
from pipeline.converter import sharding
from pipeline.converter import shards
from pipeline.converter import sources


@dataclasses.dataclass(frozen=True)
class Encoding:
    """How every image is stored: what each worker needs besides the images."""

    stored_size: tuple[int, int] | None
    max_pixels: int
    fingerprint: bool  # for the duplicate search


@dataclasses.dataclass(frozen=True)
class _Job:
    """One shard to write."""

    split: str
    filename: str
    images: Sequence[sources.SourceImage]


def _whole_shard(job: _Job, folder: str, class_names: Sequence[str], encoding: Encoding) -> shards.ShardResult:
    return shards.write_whole_shard(
        job.split, job.filename, job.images, folder, class_names, encoding.stored_size, encoding.max_pixels,
        encoding.fingerprint,
    )


def _by_workers(
    jobs: Sequence[_Job], pool: multiprocessing.pool.Pool | None, folder: str, class_names: Sequence[str],
    encoding: Encoding,
) -> Iterator[shards.ShardResult]:
    """Each job's shard written by a worker (or here, without a pool), results in order."""
    task = functools.partial(_whole_shard, folder=folder, class_names=class_names, encoding=encoding)
    return pool.imap(task, jobs, chunksize=1) if pool is not None else map(task, jobs)


def _here(
    jobs: Sequence[_Job], pool: multiprocessing.pool.Pool | None, workers: int, folder: str,
    class_names: Sequence[str], encoding: Encoding, index: duplicates.DuplicateIndex | None, bar: tqdm,
) -> Iterator[shards.ShardResult]:
    """Each job's shard written by this process from the workers' encoded images, in order."""
    task = functools.partial(
        shards.encode_record, stored_size=encoding.stored_size, max_pixels=encoding.max_pixels,
        fingerprint=encoding.fingerprint,
    )
    images = (image for job in jobs for image in job.images)  # one stream: no pause between shards
    encoded = decoders.bounded_imap(pool, task, workers, images) if pool is not None else map(task, images)
    for job in jobs:
        yield shards.write_shard(
            job.split, job.filename, job.images, encoded, folder, class_names, lambda: bar.update(1), index
        )


def write_splits(
    plans: Sequence[sharding.SplitPlan],
    scan: sources.FolderScan,
    scratch: str,
    pool: multiprocessing.pool.Pool | None,
    workers: int,
    encoding: Encoding,
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
    jobs = [_Job(plan.name, name, images) for plan in plans for name, images in plan.shards() if name not in kept]
    here = (index is not None and index.drop) or fileio.is_url(scratch)
    splits: dict[str, schema.SplitInfo] = {}
    skipped = list(scan.skipped)
    with tqdm(total=scan.num_files, unit="img", desc="converting", disable=not show_progress) as bar:
        if here:
            written = _here(jobs, pool, workers, scratch, scan.class_names, encoding, index, bar)
        else:
            written = _by_workers(jobs, pool, scratch, scan.class_names, encoding)
        for plan in plans:
            results = []
            for filename, images in plan.shards():
                result = kept.get(filename)
                if result is None:
                    result = next(written)
                    resume.write_result(scratch, result)  # after the shard is whole
                if not here or filename in kept:
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
