"""Conversion at scale on one machine: speed against decoding, and memory.

For a large folder (copies of the given photos, as many as asked):

- the machine's parallel decode rate for those files: one process per
  worker, each reading a file and decoding it fully with Pillow, the work
  the converter cannot avoid (the fastest of DECODE_PASSES passes after one
  that fills the page cache);
- `convert.py` on them, in a subprocess: images/s (the converter's own
  figure, verification apart and included) and the peak resident memory of
  its process tree (the launcher and its decoders; proportional set size, so
  pages shared since the fork count once), sampled;
- the same conversion on a fraction of the files, to show whether the peak
  grows with the number of files;
- the large conversion again, in turns with `--duplicates=off` and without:
  the time, CPU and writing-phase time the duplicate search (hashing in the
  decoders, the banded index in the writer) adds, from the fastest runs of
  each. The
  folder is copies of the photos, so each has many byte-identical copies: a
  worst case for the pair list (every copy is a pair), an easy one for the
  near search (only the distinct photos enter the hash bands);
- streaming the records for training with the cache off: resident memory
  after each epoch.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import math
import multiprocessing
import os
import re
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import psutil
from PIL import Image

from pipeline.converter import conversion as converter
from pipeline.converter import sources
from pipeline.reader import augment
from pipeline.reader import dataset
from benchmark import BenchmarkError
from benchmark import duplicate_search
from benchmark import timing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class ConversionRun:
    """One `convert.py` run, seen from outside."""

    images: int
    seconds: float  # the converter's own figure, verification included
    verify_seconds: float
    peak_mib: float  # proportional set size of the launcher and its decoders
    memory_timeline: tuple[tuple[float, float], ...]  # (seconds since start, MiB)
    cpu_seconds: float = 0.0  # user + system of its process tree (the decoders are reaped by it)
    wall_seconds: float = 0.0  # the process, from its start to its exit: start-up included

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds

    @property
    def images_per_second_before_verify(self) -> float:
        return self.images / (self.seconds - self.verify_seconds)


def _interleaved_photos(src: str) -> list[sources.SourceImage]:
    """The images under `src`, classes in turn, so that any count of them holds every class."""
    scan = sources.scan_image_folder(converter.ConversionConfig(src))
    by_class: dict[str, list[sources.SourceImage]] = {}
    for image in (image for images in scan.splits.values() for image in images):
        by_class.setdefault(image.class_name, []).append(image)
    originals = [image for row in itertools.zip_longest(*by_class.values()) for image in row if image]
    if not originals:
        raise BenchmarkError(f"no images under {src}")
    return originals


def copy_photos(src: str, dst: str, count: int) -> int:
    """Fills `dst/train/<class>/` with `count` copies of the photos of `src`, in turn.

    Copies, not links: the converter counts each real file once.

    Returns:
      The number of files written.
    """
    originals = _interleaved_photos(src)
    for index in range(count):
        image = originals[index % len(originals)]
        folder = os.path.join(dst, "train", image.class_name)
        os.makedirs(folder, exist_ok=True)
        stem, ext = os.path.splitext(os.path.basename(image.path))
        shutil.copyfile(image.path, os.path.join(folder, f"{stem}.{index:06d}{ext}"))
    return count


def _decode_file(path: str) -> int:
    with open(path, "rb") as f:
        data = f.read()
    with Image.open(io.BytesIO(data)) as image:
        image.load()
    return 1


def parallel_decode_rate(folder: str, workers: int) -> float:
    """Images/s of reading and fully decoding every file under `folder` in `workers` processes."""
    paths = [os.path.join(d, name) for d, _, names in os.walk(folder) for name in names]
    context = multiprocessing.get_context("fork")
    with context.Pool(workers) as pool:
        started = time.perf_counter()
        done = sum(pool.imap_unordered(_decode_file, paths, chunksize=64))
        return done / (time.perf_counter() - started)


def _tree_memory_mib(process: psutil.Process) -> float:
    """The proportional set size (PSS) of `process` and its children, summed.

    Forked decoders share their parent's pages: resident sizes would count
    them once per process, proportional sizes count them once in all.
    """
    try:
        members = [process, *process.children(recursive=True)]
    except psutil.Error:  # the converter just ended
        return 0.0
    total = 0
    for member in members:
        try:
            total += member.memory_full_info().pss
        except psutil.Error:  # a decoder that just ended
            pass
    return total / timing.MIB


# A PSS reading walks a process's whole memory map: about 30 ms of CPU for a
# process with TensorFlow loaded, times the converter and each decoder. At
# 0.05 s the sampler took over half a core from the conversion it measured.
PSS_INTERVAL_S = 0.5


def run_converter(
    src: str, out: str, workers: int, interval: float = PSS_INTERVAL_S, extra_flags: tuple[str, ...] = ()
) -> ConversionRun:
    """`convert.py --src src --out out` (and `extra_flags`), its memory sampled every `interval` seconds.

    Raises:
      RuntimeError: the conversion failed (its stderr's last line).
    """
    command = [
        sys.executable, os.path.join(REPO, "convert.py"), f"--src={src}", f"--out={out}",
        f"--workers={workers}", "--overwrite", *extra_flags,
    ]
    cpu_before = _children_cpu_seconds()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process, timeline, started = psutil.Process(child.pid), [], time.perf_counter()

    def sample() -> None:
        while child.poll() is None:
            if mib := _tree_memory_mib(process):
                timeline.append((time.perf_counter() - started, mib))
            time.sleep(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = child.communicate()
    wall_seconds = time.perf_counter() - started
    cpu_seconds = _children_cpu_seconds() - cpu_before
    sampler.join()
    if child.returncode != 0:
        raise BenchmarkError(f"convert.py failed: {(stderr.strip().splitlines() or ['?'])[-1]}")
    images = int(re.search(r"Wrote (\d+) images", stdout).group(1))
    seconds, verify_seconds = (
        float(x) for x in re.search(r"in ([\d.]+) s \(.*verified.* in ([\d.]+) s", stdout).groups()
    )
    return ConversionRun(
        images, seconds, verify_seconds, max(mib for _, mib in timeline), tuple(timeline), cpu_seconds, wall_seconds
    )


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def streaming_memory(records: str, epochs: int, batch_size: int = 20) -> list[float]:
    """Resident MiB of this process after each training epoch over `records`, cache off."""
    config = dataset.InputConfig(batch_size=batch_size, augmentation=augment.NOTEBOOK_AUGMENTATION, cache=False)
    return timing.streaming_rss_mib(dataset.train_dataset(records, config), epochs)


DECODE_PASSES = 2
# Issue #19's targets, ratios to the parallel decode rate in one run.
MARGINAL_TARGET = 0.7  # between the smaller and the large folder: start-up cancels out
WHOLE_TARGET = 0.45  # the large folder, process start to exit


@dataclasses.dataclass(frozen=True)
class ConversionBenchmark:
    images: int
    workers: int
    decode_rate: float
    full: ConversionRun
    fraction: ConversionRun  # the same photos, fewer of them
    streaming_rss_mib: tuple[float, ...]
    # The large folder again, in turns: --duplicates=off, default, off (the first default run is `full`).
    search_on: tuple[ConversionRun, ...] = ()
    search_off: tuple[ConversionRun, ...] = ()
    search_cost: duplicate_search.SearchCost | None = None
    fraction_again: tuple[ConversionRun, ...] = ()  # the smaller folder, again after the large runs

    @property
    def fractions(self) -> tuple[ConversionRun, ...]:
        return (self.fraction, *self.fraction_again)

    @property
    def conversion_vs_decode(self) -> float:
        return self.full.images_per_second / self.decode_rate

    def _fastest(self, runs: tuple[ConversionRun, ...]) -> ConversionRun:
        return min(runs, key=lambda run: run.wall_seconds)

    @property
    def whole_vs_decode(self) -> float:
        """The large folder's images over the fastest whole process (start-up included), to the decode rate."""
        fastest = self._fastest(self.search_on or (self.full,))
        return fastest.images / fastest.wall_seconds / self.decode_rate

    @property
    def marginal_rate(self) -> float:
        """Images/s between the smaller and the large folder, fastest whole processes of each."""
        large, small = self._fastest(self.search_on or (self.full,)), self._fastest(self.fractions)
        if large.images <= small.images or large.wall_seconds <= small.wall_seconds:
            return math.nan  # no larger run to compare with
        return (large.images - small.images) / (large.wall_seconds - small.wall_seconds)

    @property
    def marginal_vs_decode(self) -> float:
        return self.marginal_rate / self.decode_rate

    @property
    def duplicate_search_seconds(self) -> float | None:
        """What the duplicate search added to the large conversion: the fastest runs with and without it."""
        if not self.search_off:
            return None
        return min(r.seconds for r in self.search_on) - min(r.seconds for r in self.search_off)

    @property
    def duplicate_search_share(self) -> float | None:
        """That time as a fraction of the fastest conversion with the search."""
        added = self.duplicate_search_seconds
        return None if added is None else added / min(r.seconds for r in self.search_on)

    @property
    def duplicate_search_write_share(self) -> float | None:
        """What it added to the writing phase (the search runs there; verification does not use it),
        fastest of each, as a fraction of the fastest conversion with it: steadier than whole runs,
        whose verification alone varied by more than the search costs."""
        if not self.search_off:
            return None
        writing = [min(r.seconds - r.verify_seconds for r in runs) for runs in (self.search_on, self.search_off)]
        return (writing[0] - writing[1]) / min(r.seconds for r in self.search_on)

    @property
    def duplicate_search_cpu_share(self) -> float | None:
        """The CPU-seconds it added (less noisy than wall time on a shared machine), as that fraction."""
        if not self.search_off:
            return None
        with_it = min(r.cpu_seconds for r in self.search_on)
        return (with_it - min(r.cpu_seconds for r in self.search_off)) / with_it


def log_to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(
    photos: str,
    work_dir: str,
    images: int,
    workers: int,
    epochs: int,
    log: Callable[[str], None],
    fraction: float = 0.2,
) -> ConversionBenchmark:
    """Builds the folders under `work_dir` and measures; see the module docstring."""
    small, large = os.path.join(work_dir, "small"), os.path.join(work_dir, "large")
    for folder, count in ((small, max(2, int(images * fraction))), (large, images)):
        if not os.path.isdir(folder):
            log(f"copying {count} photos to {folder}")
            copy_photos(photos, folder, count)
    log(f"decoding {images} files in {workers} processes")
    parallel_decode_rate(large, workers)  # a first pass to put the files in the page cache
    # The fastest of as many passes as the large conversions it is held against (2 with each flag).
    decode_rate = max(parallel_decode_rate(large, workers) for _ in range(DECODE_PASSES))
    log("converting the smaller folder")
    fraction_run = run_converter(small, os.path.join(work_dir, "records_small"), workers)
    log("converting the large folder")
    records = os.path.join(work_dir, "records")
    full_run = run_converter(large, records, workers)
    search_on, search_off = [full_run], []
    for extra in (("--duplicates=off",), (), ("--duplicates=off",)):
        log(f"converting the large folder again, {' '.join(extra) or 'duplicates reported'}")
        run_ = run_converter(large, os.path.join(work_dir, "records_again"), workers, extra_flags=extra)
        (search_off if extra else search_on).append(run_)
    log("converting the smaller folder again")
    fraction_again = run_converter(small, os.path.join(work_dir, "records_small"), workers)
    log("timing the duplicate search's parts")
    search_cost = duplicate_search.measure(_interleaved_photos(photos), images, workers)
    log(f"streaming {epochs} epochs, cache off")
    streaming = streaming_memory(records, epochs)
    return ConversionBenchmark(
        images, workers, decode_rate, full_run, fraction_run, tuple(streaming), tuple(search_on), tuple(search_off),
        search_cost, (fraction_again,),
    )
