"""Writes a conversion's shards on this machine, with a pool of decoding processes.

Each worker writes whole shards: it decodes, checks and encodes a shard's
images and writes the file itself, and this process only collects the
results in planned order (the launcher stays off the critical path):

    shards still to write --pool.imap(ShardWriter.write_whole)--> scratch/<shard>, ShardResult
      --in planned order--> the duplicate search (`duplicates`), the shard's sidecar (`resume`)

The last shards (as many as are left over when the shards are dealt out to the
workers) go out in a piece per worker, joined into the shard here.

With `--duplicates=drop` (whether an image is written depends on every image
before it) or a URL output (the workers stay free of TensorFlow's
filesystems), the workers only encode and this process writes:

    images of every shard still to write, as one stream
      --bounded_imap(encode_record)-->  (a window of tasks per worker)
      --ShardWriter.write, shard by shard, in planned order-->  scratch/<shard> + its sidecar

Both write the same bytes (`write`). Shards that `--resume` kept are not
written again; their images are added to the duplicate search again, in their
place in the plan. The Beam runner (`beam`) does the same with Beam's workers.

The pool (`fork_pool`) is forked before the converter touches any filesystem
through TensorFlow. A forked child inherits its parent's filesystem state
(open connections, auth threads, locks: `tf.io.gfile` on HDFS deadlocks in a
child forked after the parent used it, tensorflow/tensorflow#19322), so each
worker that reads a URL opens its own, as the first user of the filesystem in
its process. Locally the workers use Pillow only.
"""

from __future__ import annotations

import collections
import ctypes
import dataclasses
import functools
import itertools
import multiprocessing
import multiprocessing.pool
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

from tqdm import tqdm

from pipeline import fileio
from pipeline import schema
from pipeline.converter import config as config_lib
from pipeline.converter import duplicates
from pipeline.converter import plan
from pipeline.converter import resume
from pipeline.converter import rules
from pipeline.converter import write

Item = TypeVar("Item")
Result = TypeVar("Result")

# Images per task, and tasks in flight per worker: enough that a worker never
# waits for its next task, few enough that memory does not grow with the files
# (64 images per worker, about 3 MB of photos). Measured on 5,000 photos, 2
# workers: 16 x 4 wrote 960-980 images/s, 4 x 2 700-800 (a worker idled
# behind the oldest task, which the writer takes first).
CHUNK = 16
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
CHUNKS_PER_WORKER = 4


def _worker_start(parent: int) -> None:
    """Pool initializer. Ctrl-C reaches every process of the terminal's group;
    only the main process acts on it (one line, and it ends the pool), so the
    decoders do not each print a traceback. And a decoder ends with the
    converter, even one killed with SIGKILL, rather than finish its shard."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the converter died before prctl took effect
        os._exit(1)


def fork_pool(workers: int) -> multiprocessing.pool.Pool:
    """`workers` forked decoding processes that ignore Ctrl-C; fork it before any gfile use."""
    return multiprocessing.get_context("fork").Pool(workers, initializer=_worker_start, initargs=(os.getpid(),))


def _run_chunk(task: Callable[[Item], Result], items: Sequence[Item]) -> list[Result]:
    return [task(item) for item in items]


def bounded_imap(
    pool: multiprocessing.pool.Pool,
    task: Callable[[Item], Result],
    workers: int,
    items: Iterable[Item],
) -> Iterator[Result]:
    """`pool.imap(task, items)` with a bounded number of items in flight.

    Pool.imap queues every task at once and keeps every result not taken yet,
    so with a writer slower than the decoders (a remote --out) memory grew
    with the number of files. Here a chunk is submitted only when an earlier
    one is taken: at most CHUNK * CHUNKS_PER_WORKER items per worker in
    flight, and the results come in the order of `items`.
    """
    pending: collections.deque = collections.deque()
    items = iter(items)
    while chunk := list(itertools.islice(items, CHUNK)):
        pending.append(pool.apply_async(_run_chunk, (task, chunk)))
        if len(pending) >= workers * CHUNKS_PER_WORKER:
            yield from pending.popleft().get()
    while pending:
        yield from pending.popleft().get()


@dataclasses.dataclass(frozen=True)
class _Task:
    """What one worker writes: a whole shard, or piece `piece` of `pieces` of it (under the piece's name)."""

    file: plan.Shard
    shard: str  # the whole shard's file name
    piece: int = 0
    pieces: int = 1


def _in_pieces(shard: plan.Shard, count: int) -> list[_Task]:
    """`shard` as `count` tasks of consecutive images."""
    bounds = [len(shard.images) * k // count for k in range(count + 1)]
    return [
        _Task(
            plan.Shard(shard.split, write.piece_name(shard.filename, k), shard.images[bounds[k] : bounds[k + 1]]),
            shard.filename, k, count,
        )
        for k in range(count)
    ]


def _tasks(shards: Sequence[plan.Shard], workers: int) -> list[_Task]:
    """The shards as tasks: whole, but the last `len(shards) % workers` each in `workers` pieces,
    so that no worker idles while another writes the last shard alone."""
    tail = len(shards) % workers if len(shards) > workers else 0
    whole = [_Task(shard, shard.filename) for shard in shards[: len(shards) - tail]]
    return whole + [piece for shard in shards[len(shards) - tail :] for piece in _in_pieces(shard, workers)]


def _by_workers(
    tasks: Sequence[_Task], writer: write.ShardWriter, pool: multiprocessing.pool.Pool | None
) -> Iterator[write.ShardResult]:
    """Each task's shard written by the workers (or here, without a pool), results in order."""
    files = [task.file for task in tasks]
    results = pool.imap(writer.write_whole, files, chunksize=1) if pool is not None else map(writer.write_whole, files)
    pieces: list[write.ShardResult] = []
    for task in tasks:
        result = next(results)
        if task.pieces == 1:
            yield result
            continue
        pieces.append(result)
        if task.piece == task.pieces - 1:
            yield writer.join_pieces(task.shard, pieces)
            pieces = []


def _here(
    shards: Sequence[plan.Shard], writer: write.ShardWriter, pool: multiprocessing.pool.Pool | None, workers: int,
    index: duplicates.DuplicateIndex | None, bar: tqdm,
) -> Iterator[write.ShardResult]:
    """Each shard written by this process from the workers' encoded images, in order."""
    task = functools.partial(write.encode_record, encoding=writer.encoding)
    images = (image for shard in shards for image in shard.images)  # one stream: no pause between shards
    encoded = bounded_imap(pool, task, workers, images) if pool is not None else map(task, images)
    for shard in shards:
        yield writer.write(shard, encoded, lambda: bar.update(1), index)


def write_splits(
    config: config_lib.ConversionConfig,
    planned: plan.ConversionPlan,
    scratch: str,
    kept: dict[str, write.ShardResult],
    pool: multiprocessing.pool.Pool | None,
    index: duplicates.DuplicateIndex | None = None,
) -> tuple[dict[str, schema.SplitInfo], list[schema.SkippedFile]]:
    """Writes every planned shard into `scratch`, but those in `kept`, each with its sidecar.

    Every image, written or kept, goes through `index` (if any) in plan order.
    `pool` (of `config.num_workers` processes, or None to write here) decodes.

    Returns:
      (split name -> SplitInfo, for every plan, even one whose files were
      all skipped; the skipped files: the scan's, then the decoders').
    """
    shards = [shard for shard in planned.shards() if shard.filename not in kept]
    writer = write.ShardWriter(scratch, planned.class_names, write.Encoding.of(config))
    here = (index is not None and index.drop) or fileio.is_url(scratch)
    splits: dict[str, schema.SplitInfo] = {}
    skipped = list(planned.files.skipped)
    with tqdm(total=planned.files.num_files, unit="img", desc="converting", disable=not config.show_progress) as bar:
        if here:
            written = _here(shards, writer, pool, config.num_workers, index, bar)
        else:
            written = _by_workers(_tasks(shards, config.num_workers), writer, pool)
        for split_plan in planned.splits:
            results = []
            for shard in split_plan.shards():
                result = kept.get(shard.filename)
                if result is None:
                    result = next(written)
                    resume.write_result(scratch, result)  # after the shard is whole
                if not here or shard.filename in kept:
                    bar.update(len(shard.images))
                    if index is not None:
                        index.replay(split_plan.name, result.fingerprints)
                results.append(result)
            split, split_skipped = write.gather_split(split_plan.name, results, planned.class_names)
            splits[split.name] = split
            skipped += split_skipped
            if config.strict:
                rules.check_strict(skipped)
    return splits, skipped
