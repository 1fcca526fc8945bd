"""How a row is measured: timed passes, the memory it used, the machine's CPU.

A pass is one epoch (at most `max_batches` batches), timed by the wall clock
from the call to `iter()`. Steady figures are the median of timed passes after
an untimed one; cold figures the median first pass of fresh datasets.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from typing import Any, Literal, TypeVar

import keras
import psutil
import tensorflow as tf

Batch = tuple[Any, Any]
K = TypeVar("K", bound=Hashable)
T = TypeVar("T")
MIB = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Measurement:
    """Timed passes of one loader; `first_batch_seconds` is empty for training."""

    kind: Literal["steady", "cold", "training"]
    pass_images: tuple[int, ...]
    pass_seconds: tuple[float, ...]
    first_batch_seconds: tuple[float, ...] = ()

    @property
    def pass_rates(self) -> list[float]:
        return [n / s if s > 0 else math.inf for n, s in zip(self.pass_images, self.pass_seconds)]

    @property
    def images_per_second(self) -> float:
        """The median pass rate."""
        return float(statistics.median(self.pass_rates))


def timed_pass(loader: Iterable[Batch], max_batches: int | None = None) -> tuple[int, float, float]:
    """Iterates once over `loader`; returns (images, seconds, seconds to the first batch)."""
    start = time.perf_counter()
    first_batch, images = math.nan, 0
    for count, batch in enumerate(loader, start=1):
        if count == 1:
            first_batch = time.perf_counter() - start
        images += int(batch[0].shape[0])
        if max_batches is not None and count >= max_batches:
            break
    return images, time.perf_counter() - start, first_batch


def measure(loader: Iterable[Batch], passes: int, max_batches: int | None = None) -> Measurement:
    """One untimed pass, then `passes` timed ones: each a new iterator, as each Keras epoch."""
    timed_pass(loader, max_batches)
    images, seconds, first = zip(*(timed_pass(loader, max_batches) for _ in range(passes)))
    return Measurement("steady", images, seconds, first)


def measure_cold(
    builds: Mapping[K, Callable[[], Iterable[Batch]]], runs: int, max_batches: int | None = None
) -> dict[K, Measurement]:
    """The first pass of `runs` datasets built afresh (untimed) per key.

    The keys take turns (A, B, A, B, ...) so that a drift in the machine's
    speed hits them alike and their figures can be compared.
    """
    timed: dict[K, list[tuple[int, float, float]]] = {key: [] for key in builds}
    for _ in range(runs):
        for key, build in builds.items():
            timed[key].append(timed_pass(build(), max_batches))
    return {key: Measurement("cold", *zip(*passes)) for key, passes in timed.items()}


def images_in_steps(steps: int, batch_size: int, epoch_images: int | None) -> int:
    """Images in `steps` batches of a repeated epoch whose last batch may be short (None: all full)."""
    if epoch_images is None:
        return steps * batch_size
    epochs, rest = divmod(steps, math.ceil(epoch_images / batch_size))
    return epochs * epoch_images + rest * batch_size


@dataclasses.dataclass(frozen=True)
class TrainingFeed:
    data: tf.data.Dataset  # endless
    batch_size: int
    epoch_images: int | None  # see images_in_steps


def measure_training(
    model: keras.Model, feeds: Mapping[K, TrainingFeed], steps: int, warmup_steps: int, rounds: int
) -> dict[K, Measurement]:
    """`model.fit` speed per feed: an untimed fit each (it traces the step), then rounds of a timed fit each."""
    for feed in feeds.values():
        model.fit(feed.data, steps_per_epoch=warmup_steps, epochs=1, verbose=0, shuffle=False)
    seconds: dict[K, list[float]] = {key: [] for key in feeds}
    for _ in range(rounds):  # interleaved: a drift in speed hits every feed alike
        for key, feed in feeds.items():
            start = time.perf_counter()
            model.fit(feed.data, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)
            seconds[key].append(time.perf_counter() - start)
    return {key: Measurement("training", (images_in_steps(steps, f.batch_size, f.epoch_images),) * rounds,
                             tuple(seconds[key])) for key, f in feeds.items()}


@dataclasses.dataclass(frozen=True)
class Memory:
    peak_rss_mib: float
    rss_after_mib: float


def rss_mib() -> float:
    return psutil.Process().memory_info().rss / MIB


def ru_maxrss_mib() -> float:
    """The kernel's peak resident size of this process."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == "darwin" else peak / 1024


def sampled(run: Callable[[], T], interval: float = 0.01) -> tuple[T, Memory]:
    """`run()` and the memory it used, sampled by a thread every `interval` seconds.

    The kernel's peak cannot be reset per row portably; sampling catches any
    peak that lasts longer than `interval`, at a negligible cost.
    """
    peak, done = rss_mib(), threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(interval):
            peak = max(peak, rss_mib())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = run()
        gc.collect()
    finally:
        done.set()
        sampler.join()
    after = rss_mib()
    return result, Memory(max(peak, after), after)


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Collections inside this block skip the objects that exist at its start.

    TensorFlow and Keras hold millions of objects; a full collection walks them
    all (about 0.25 s here), and the rows collect before and after each
    measurement. What the rows build is still collected.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def streaming_rss_mib(loader: Iterable[Batch], epochs: int, max_batches: int | None = None) -> list[float]:
    """The resident size after each of `epochs` passes over the same dataset."""
    sizes = []
    for _ in range(epochs):
        timed_pass(loader, max_batches)
        gc.collect()
        sizes.append(rss_mib())
    return sizes


@dataclasses.dataclass(frozen=True)
class CpuContention:
    own_cpu_seconds: float
    other_processes_cpu_seconds: float
    other_processes_share: float  # of the core-seconds the run had


def cpu_snapshot() -> tuple[float, float, float]:
    """(wall clock, the machine's busy CPU-s, this process's and its waited children's CPU-s)."""
    # Linux counts guest time inside user time: add up the disjoint fields only.
    machine = psutil.cpu_times()
    busy = sum(getattr(machine, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal"))
    own = psutil.Process().cpu_times()  # children: the converter's decoding pool
    return time.perf_counter(), busy, own.user + own.system + own.children_user + own.children_system


def cpu_contention(start: tuple[float, float, float]) -> CpuContention:
    """CPU used by this process and by the others since `start`, a `cpu_snapshot()`."""
    wall, busy, own = (now - then for now, then in zip(cpu_snapshot(), start))
    others = max(0.0, busy - own)
    return CpuContention(own, others, others / max(wall * (psutil.cpu_count() or 1), 1e-9))
