"""Writes a conversion's shards on this machine, with a pool of decoding processes.

Each worker writes whole shards: it decodes, checks and encodes a shard's
images and writes the file itself, and this process only collects the
results in planned order (the launcher stays off the critical path):

    shards still to write --pool.imap(shards.write_whole_shard)--> scratch/<shard>, ShardResult
      --in planned order--> the duplicate search (`duplicates`), the shard's sidecar (`resume`)

The last shards (as many as are left over when the shards are dealt out to the
workers) go out in a piece per worker, joined into the shard here.

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
    """One shard to write, or one of its `pieces` (a worker's task)."""

    split: str
    filename: str
    images: Sequence[sources.SourceImage]
    piece: int = 0
    pieces: int = 1


def _in_pieces(job: _Job, count: int) -> list[_Job]:
    """`job` as `count` tasks of consecutive images."""
    bounds = [len(job.images) * k // count for k in range(count + 1)]
    return [
        _Job(job.split, job.filename, job.images[bounds[k] : bounds[k + 1]], k, count) for k in range(count)
    ]


def _tasks(jobs: Sequence[_Job], workers: int) -> list[_Job]:
    """The jobs as tasks: whole shards, but the last `len(jobs) % workers` each in `workers` pieces,
    so that no worker idles while another writes the last shard alone."""
    tail = len(jobs) % workers if len(jobs) > workers else 0
    whole = list(jobs[: len(jobs) - tail])
    return whole + [piece for job in jobs[len(jobs) - tail :] for piece in _in_pieces(job, workers)]


def _write_task(job: _Job, folder: str, class_names: Sequence[str], encoding: Encoding) -> shards.ShardResult:
    name = job.filename if job.pieces == 1 else shards.piece_name(job.filename, job.piece)
    return shards.write_whole_shard(
        job.split, name, job.images, folder, class_names, encoding.stored_size, encoding.max_pixels,
        encoding.fingerprint,
    )


def _by_workers(
    jobs: Sequence[_Job], pool: multiprocessing.pool.Pool | None, workers: int, folder: str,
    class_names: Sequence[str], encoding: Encoding,
) -> Iterator[shards.ShardResult]:
    """Each job's shard written by the workers (or here, without a pool), results in order."""
    task = functools.partial(_write_task, folder=folder, class_names=class_names, encoding=encoding)
    tasks = _tasks(jobs, workers)
    results = pool.imap(task, tasks, chunksize=1) if pool is not None else map(task, tasks)
    pieces: list[shards.ShardResult] = []
    for task_ in tasks:
        result = next(results)
        if task_.pieces == 1:
            yield result
            continue
        pieces.append(result)
        if task_.piece == task_.pieces - 1:
            yield shards.join_pieces(folder, task_.filename, pieces)
            pieces = []


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
            written = _by_workers(jobs, pool, workers, scratch, scan.class_names, encoding)
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
