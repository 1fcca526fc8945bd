"""Throughput benchmark: Keras' image loaders against this project's pipeline.

Everything reads the same split of an image folder, resized to the same size
and batched the same way, and is timed as images per second:

* the notebook's `ImageDataGenerator.flow_from_directory`, rescale only and
  with the notebook's augmentation (the baselines);
* `keras.utils.image_dataset_from_directory`, rescale only and with Keras'
  random layers in `map`;
* `pipeline.dataset.build_dataset`: the cold first epoch, and steady-state
  epochs with and without host augmentation and cache, from records at the
  original sizes and from records pre-resized at conversion;
* the decode ceiling: parse + decode + resize of the same records and nothing
  else, with and without DCT scaling;
* the CNN's training speed fed by one batch held in memory and by the pipeline.

A pass is one epoch of the split (at most `max_batches` batches). A steady
figure is the median over `passes` timed passes that follow one untimed
warm-up pass over the same iterable; a cold figure is the median over
`cold_runs` first passes of freshly built datasets. The decode ceilings are
timed the same way, in turns with the pipeline's cold epochs they are held
against. Pass times are wall-clock and include creating the iterator. The benchmark reports; it never asserts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import gc
import importlib
import io
import json
import math
import os
import platform
import resource
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import keras
import numpy as np
import psutil
import tensorflow as tf

from model import cnn
from pipeline import augment
from pipeline import dataset
from pipeline import schema
from pipeline import writer

Batch = tuple[Any, Any]
MakeIterable = Callable[[], Iterable[Batch]]

RESULTS_FILENAME = "results.json"
PLOT_FILENAME = "throughput.png"
_MIB = 1024 * 1024

# Plot colours and table sections, in the order they appear.
GROUP_IDG = "ImageDataGenerator"
GROUP_KERAS = "image_dataset_from_directory"
GROUP_PIPELINE = "pipeline"
GROUP_RESIZED = "pipeline, pre-resized records"
GROUP_CEILING = "decode ceiling"
GROUP_TRAINING = "training (CNN)"
_GROUP_COLOURS = {
    GROUP_IDG: "#8c8c8c",
    GROUP_KERAS: "#4c72b0",
    GROUP_PIPELINE: "#55a868",
    GROUP_RESIZED: "#2e7d4f",
    GROUP_CEILING: "#dd8452",
    GROUP_TRAINING: "#8172b2",
}
# Short names of the figures other rows are compared with.
_BASELINE_NAMES = {
    "idg_rescale": "IDG rescale",
    "idg_augment": "IDG + aug",
    "train_in_memory": "in-memory",
}

# The targets.
TARGET_AUG_SPEEDUP = 20.0
TARGET_PLAIN_SPEEDUP = 20.0
TARGET_COLD_OF_CEILING = 0.9
TARGET_TRAINING_OF_IN_MEMORY = 0.95
TARGET_PEAK_MEMORY_MIB = 2048.0  # 2 GiB
# Uncached streaming holds fixed-size buffers: its resident size wobbles by
# tens of MiB (the allocator) but must not climb with the images read. Memory
# that grew with the data would add at least the split's encoded size (45 MB
# for cat_dog_small's train split) each epoch.
TARGET_STREAMING_GROWTH_MIB = 100.0
STREAMING_EPOCHS = 10
_STREAMING_WINDOW = 3  # epochs averaged at each end


class BenchmarkError(ValueError):
    """The benchmark cannot run as asked; the message says why."""


@dataclasses.dataclass(frozen=True)
class BenchmarkConfig:
    """What to benchmark and how long.

    Attributes:
      src: image folder laid out as {train,validation,test}/<class>/*.
      records: records converted from `src` at the original sizes, or None to
        convert `src` into a temporary folder.
      split: the split every loader reads.
      image_size: (height, width) every loader outputs.
      batch_size: images per batch.
      passes: timed passes per steady-state figure (after one warm-up pass).
      cold_runs: freshly built datasets timed per cold figure.
      max_batches: cap on batches per pass, or None for whole epochs.
      train_steps: steps of each timed training `fit`.
      train_warmup_steps: untimed training steps per input first, to trace
        and compile the train step for that input.
      train_rounds: timed `fit`s per training input (interleaved across the
        inputs); the figure is their median.
    """

    src: str
    records: str | None = None
    split: str = "train"
    image_size: tuple[int, int] = (150, 150)
    batch_size: int = 20
    passes: int = 5
    cold_runs: int = 3
    max_batches: int | None = None
    train_steps: int = 30
    train_warmup_steps: int = 3
    train_rounds: int = 3

    def __post_init__(self):
        positive = (
            "batch_size", "passes", "cold_runs", "train_steps", "train_warmup_steps",
            "train_rounds",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise BenchmarkError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_batches is not None and self.max_batches < 1:
            raise BenchmarkError(f"max_batches must be at least 1, got {self.max_batches}")
        if min(self.image_size) < 1:
            raise BenchmarkError(f"image_size must be positive, got {self.image_size}")


@dataclasses.dataclass(frozen=True)
class Measurement:
    """Timed passes of one loader.

    Attributes:
      kind: "steady", "cold" or "training".
      pass_images: images delivered in each timed pass.
      pass_seconds: wall-clock seconds of each timed pass.
      first_batch_seconds: seconds from the start of each timed pass to its
        first batch (iterator creation + pipeline start-up); empty for
        training.
    """

    kind: str
    pass_images: tuple[int, ...]
    pass_seconds: tuple[float, ...]
    first_batch_seconds: tuple[float, ...] = ()

    @property
    def pass_rates(self) -> list[float]:
        """Images per second of each pass."""
        return [n / s if s > 0 else math.inf for n, s in zip(self.pass_images, self.pass_seconds)]

    @property
    def images_per_second(self) -> float:
        """Median over the passes of images / seconds."""
        return float(statistics.median(self.pass_rates))

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "images_per_second": self.images_per_second,
            "images_per_second_min": min(self.pass_rates),
            "images_per_second_max": max(self.pass_rates),
            "images_per_pass": list(self.pass_images),
            "pass_seconds": list(self.pass_seconds),
            "first_batch_seconds": list(self.first_batch_seconds),
        }


# --------------------------------------------------------------------------
# Timing.


def timed_pass(
    iterable: Iterable[Batch], max_batches: int | None = None
) -> tuple[int, float, float]:
    """Iterates once over `iterable` (at most `max_batches` batches).

    Args:
      iterable: yields (images, labels) batches, numpy arrays or tensors.
      max_batches: stop after this many batches; None for all.

    Returns:
      (images, seconds, first_batch_seconds): the images delivered, the
      wall-clock time of the pass including the call to `iter()`, and the
      time until the first batch arrived.
    """
    start = time.perf_counter()
    first_batch = math.nan
    images = 0
    for count, batch in enumerate(iterable, start=1):
        if count == 1:
            first_batch = time.perf_counter() - start
        images += int(batch[0].shape[0])
        if max_batches is not None and count >= max_batches:
            break
    return images, time.perf_counter() - start, first_batch


def _measurement(kind: str, runs: list[tuple[int, float, float]]) -> Measurement:
    images, seconds, first = zip(*runs)
    return Measurement(kind, tuple(images), tuple(seconds), tuple(first))


def measure(
    make_iterable: MakeIterable, passes: int, max_batches: int | None = None
) -> Measurement:
    """Steady-state throughput: one untimed warm-up pass, then `passes` timed.

    Args:
      make_iterable: returns the iterable of one pass; called once per pass.
        Return the same `tf.data.Dataset` every time to measure its steady
        state (a new iterator over the same dataset object, as each Keras
        epoch does).
      passes: timed passes.
      max_batches: see `timed_pass`.
    """
    timed_pass(make_iterable(), max_batches)
    runs = [timed_pass(make_iterable(), max_batches) for _ in range(passes)]
    return _measurement("steady", runs)


def measure_cold(builds: dict[str, MakeIterable], runs: int, max_batches: int | None = None) -> dict[str, Measurement]:
    """Cold throughput: the first pass of `runs` freshly built datasets each.

    The builders take turns (A, B, A, B, ...), so that a change in the
    machine's speed during the measurement hits every one of them alike: the
    figures are compared with each other.

    Args:
      builds: name -> builds a new dataset (not timed); its first pass is timed.
      runs: datasets to build and time per name.
      max_batches: see `timed_pass`.

    Returns:
      name -> Measurement.
    """
    results: dict[str, list[tuple[int, float, float]]] = {name: [] for name in builds}
    for _ in range(runs):
        for name, build in builds.items():
            fresh = build()
            results[name].append(timed_pass(fresh, max_batches))
            del fresh
    return {name: _measurement("cold", runs_of) for name, runs_of in results.items()}


def images_in_steps(steps: int, batch_size: int, epoch_images: int | None) -> int:
    """Images in the first `steps` batches of a repeated, batched split.

    Args:
      steps: batches taken from a fresh iterator.
      batch_size: images per batch.
      epoch_images: images in one epoch (its last batch may be smaller), or
        None when every batch is full.
    """
    if epoch_images is None:
        return steps * batch_size
    batches_per_epoch = math.ceil(epoch_images / batch_size)
    epochs, rest = divmod(steps, batches_per_epoch)
    return epochs * epoch_images + rest * batch_size


@dataclasses.dataclass(frozen=True)
class TrainingFeed:
    """One input to train on.

    Attributes:
      data: an endless (repeated) dataset of batches.
      batch_size: images per full batch.
      epoch_images: see `images_in_steps`.
    """

    data: tf.data.Dataset
    batch_size: int
    epoch_images: int | None


def measure_training(
    model: keras.Model,
    feeds: dict[str, TrainingFeed],
    steps: int,
    warmup_steps: int,
    rounds: int,
) -> dict[str, Measurement]:
    """Training throughput of `model.fit` on each feed, in interleaved rounds.

    Each feed first gets one untimed `fit` of `warmup_steps` steps, which
    traces and compiles the train step for that input. Then every round runs
    one timed `fit` of `steps` steps per feed, the feeds in turn, so that a
    change in the machine's speed during the run hits every feed alike.

    Args:
      model: a compiled model.
      feeds: name -> TrainingFeed.
      steps: steps of each timed `fit`.
      warmup_steps: steps of the untimed `fit`.
      rounds: timed `fit`s per feed.

    Returns:
      name -> Measurement with one pass per round.
    """
    for feed in feeds.values():
        model.fit(feed.data, steps_per_epoch=warmup_steps, epochs=1, verbose=0, shuffle=False)
    seconds: dict[str, list[float]] = {name: [] for name in feeds}
    for _ in range(rounds):
        for name, feed in feeds.items():
            start = time.perf_counter()
            model.fit(feed.data, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)
            seconds[name].append(time.perf_counter() - start)
    return {
        name: Measurement(
            "training",
            (images_in_steps(steps, feed.batch_size, feed.epoch_images),) * rounds,
            tuple(seconds[name]),
        )
        for name, feed in feeds.items()
    }


# --------------------------------------------------------------------------
# Memory.


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def ru_maxrss_bytes() -> int:
    """`getrusage` peak resident size of this process, in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class MemoryTracker:
    """Peak resident memory of this process: overall and per section.

    On Linux, writing "5" to /proc/self/clear_refs resets the peak (VmHWM) to
    the current size, so each section gets its own peak. That reset also
    lowers what `getrusage` reports afterwards, so the overall peak is kept
    here: the highest peak read before any reset. Where the reset is not
    available, section peaks are the process peak so far.
    """

    def __init__(self) -> None:
        self.overall_peak = self._peak()
        self.resettable = self._reset()

    @staticmethod
    def _peak() -> int:
        hwm = _status_kib("VmHWM")
        return max(hwm * 1024 if hwm is not None else 0, ru_maxrss_bytes())

    @staticmethod
    def _reset() -> bool:
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
                f.write("5")
            return True
        except OSError:
            return False

    def peak_mib(self) -> float:
        """The highest resident size of the process so far, in MiB."""
        self.overall_peak = max(self.overall_peak, self._peak())
        return self.overall_peak / _MIB

    @contextlib.contextmanager
    def section(self) -> Iterator[dict[str, float]]:
        """Yields a dict filled on exit with `peak_rss_mib` and `rss_after_mib`."""
        self.overall_peak = max(self.overall_peak, self._peak())
        if self.resettable:
            self._reset()
        stats: dict[str, float] = {}
        try:
            yield stats
        finally:
            peak = self._peak()
            self.overall_peak = max(self.overall_peak, peak)
            stats["peak_rss_mib"] = peak / _MIB
            stats["rss_after_mib"] = psutil.Process().memory_info().rss / _MIB


def streaming_rss_mib(data: tf.data.Dataset, epochs: int, max_batches: int | None = None) -> list[float]:
    """Resident size of this process after each of `epochs` passes over `data`.

    Each pass is a new iterator over the same dataset object, as each Keras
    epoch is; without a cache, later passes must not hold more memory.
    """
    sizes = []
    for _ in range(epochs):
        timed_pass(data, max_batches)
        gc.collect()
        sizes.append(psutil.Process().memory_info().rss / _MIB)
    return sizes


# --------------------------------------------------------------------------
# Loaders. Each returns what `measure` iterates: a dataset, or a function
# returning one epoch.


def image_data_generator_class() -> tuple[type, str]:
    """Keras' legacy ImageDataGenerator, wherever this Keras keeps it.

    Returns:
      (the class, the module it came from).
    """
    for module_name in (
        "keras.preprocessing.image",  # Keras 3 up to 3.x exports it here
        "keras.src.legacy.preprocessing.image",  # later Keras 3: unexported
        "tf_keras.preprocessing.image",  # the Keras 2 package
    ):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        if hasattr(module, "ImageDataGenerator"):
            return module.ImageDataGenerator, module_name
    raise BenchmarkError("this Keras has no ImageDataGenerator (install tf-keras)")


def notebook_generator_arguments() -> dict[str, Any]:
    """The notebook's ImageDataGenerator augmentation arguments.

    The fields of `augment.NOTEBOOK_AUGMENTATION` are ImageDataGenerator's
    argument names: rotation_range=20, width_shift_range=0.1, zoom_range=0.1,
    horizontal_flip=True, vertical_flip=True (height_shift_range=0).
    """
    return dataclasses.asdict(augment.NOTEBOOK_AUGMENTATION)


def idg_loader(
    split_dir: str,
    image_size: tuple[int, int],
    batch_size: int,
    class_mode: str,
    augmentation: bool,
) -> MakeIterable:
    """`ImageDataGenerator(rescale=1/255, ...).flow_from_directory(split_dir)`.

    Args:
      split_dir: a folder of class folders.
      image_size: target_size.
      batch_size: batch_size.
      class_mode: class_mode.
      augmentation: add the notebook's augmentation arguments.

    Returns:
      A function returning a generator over one epoch: len(iterator) batches
      in a new shuffled order, read by index as `model.fit` reads them.
    """
    generator_class, _ = image_data_generator_class()
    extra = notebook_generator_arguments() if augmentation else {}
    generator = generator_class(rescale=1.0 / 255, **extra)
    with contextlib.redirect_stdout(io.StringIO()):  # "Found N images ..."
        flow = generator.flow_from_directory(
            split_dir, target_size=image_size, batch_size=batch_size, class_mode=class_mode
        )

    def epoch() -> Iterator[Batch]:
        flow.on_epoch_end()  # a new shuffled order
        for index in range(len(flow)):
            yield flow[index]

    return epoch


def keras_augmentation_layers() -> list[keras.layers.Layer]:
    """Keras' random layers closest to the notebook's augmentation."""
    return [
        keras.layers.RandomFlip("horizontal_and_vertical"),
        keras.layers.RandomRotation(20 / 360, fill_mode="nearest"),
        keras.layers.RandomZoom(0.1, fill_mode="nearest"),
        keras.layers.RandomTranslation(0, 0.1, fill_mode="nearest"),
    ]


def keras_directory_loader(
    split_dir: str,
    image_size: tuple[int, int],
    batch_size: int,
    label_mode: str,
    augmentation: bool,
) -> tf.data.Dataset:
    """`keras.utils.image_dataset_from_directory` + rescale [+ aug layers].

    Args:
      split_dir: a folder of class folders.
      image_size: image_size.
      batch_size: batch_size.
      label_mode: label_mode.
      augmentation: apply `keras_augmentation_layers` (before the rescale, as
        ImageDataGenerator does) in the same `map`.

    Returns:
      The dataset, mapped with num_parallel_calls=AUTOTUNE and prefetched.
    """
    with contextlib.redirect_stdout(io.StringIO()):  # "Found N files ..."
        ds = keras.utils.image_dataset_from_directory(
            split_dir, image_size=image_size, batch_size=batch_size, label_mode=label_mode
        )
    layers = keras_augmentation_layers() if augmentation else []

    def prepare(images, labels):
        for layer in layers:
            images = layer(images, training=True)
        return images * (1.0 / 255.0), labels

    return ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def pipeline_loader(records_dir: str, split: str, config: dataset.InputConfig) -> tf.data.Dataset:
    """This project's pipeline: `pipeline.dataset.build_dataset`."""
    return dataset.build_dataset(records_dir, split, config)


def decode_ceiling_loader(
    records_dir: str,
    split: str,
    image_size: tuple[int, int],
    batch_size: int,
    dct_scaling: bool,
    autotune: bool = False,
) -> tf.data.Dataset:
    """Parse + decode + resize of the records and nothing else.

    Args:
      records_dir: a records folder.
      split: the split to read.
      image_size: (height, width) to resize to.
      batch_size: images per batch.
      dct_scaling: decode large JPEGs at a reduced DCT scale.
      autotune: tf.data's autotuner on; off gives every stage one thread per
        core, as the pipeline's default does.
    """
    files = schema.read_manifest(records_dir).shard_paths(records_dir, split)
    options = tf.data.Options()
    options.autotune.enabled = autotune
    return (
        tf.data.TFRecordDataset(files, num_parallel_reads=tf.data.AUTOTUNE)
        .map(
            lambda record: dataset.decode_example(record, image_size, dct_scaling),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
        .with_options(options)
    )


# --------------------------------------------------------------------------
# The run.


def _log_to_stderr(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def machine_info() -> dict[str, Any]:
    """Cores, CPU model, memory, library versions and the current load."""
    cpu_model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "cpu_model": cpu_model,
        "memory_total_mib": psutil.virtual_memory().total / _MIB,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "load_average_at_start": list(os.getloadavg()),
    }


class CpuContention:
    """How much CPU other processes used while the benchmark ran.

    Busy time of the whole machine minus this process's own (and its waited
    children's, i.e. the converter's pool) CPU time, as a fraction of the
    core-seconds the run had. Other work on the machine slows every figure.
    """

    def __init__(self) -> None:
        self._start = (time.perf_counter(), self._machine_busy(), self._own())

    @staticmethod
    def _machine_busy() -> float:
        # Linux counts guest time inside user time: add up the disjoint fields.
        times = psutil.cpu_times()
        fields = ("user", "nice", "system", "irq", "softirq", "steal")
        return sum(getattr(times, name, 0.0) for name in fields)

    @staticmethod
    def _own() -> float:
        times = psutil.Process().cpu_times()
        return times.user + times.system + times.children_user + times.children_system

    def report(self) -> dict[str, float]:
        """Own and other processes' CPU seconds since construction."""
        wall0, busy0, own0 = self._start
        wall = time.perf_counter() - wall0
        busy = self._machine_busy() - busy0
        own = self._own() - own0
        others = max(0.0, busy - own)
        capacity = wall * (os.cpu_count() or 1)
        return {
            "own_cpu_seconds": own,
            "other_processes_cpu_seconds": others,
            "other_processes_share": others / capacity if capacity > 0 else 0.0,
        }


# Share of the machine's CPU used by other processes above which the figures
# are flagged as disturbed.
CONTENTION_WARNING_SHARE = 0.1


def prepare_records(
    config: BenchmarkConfig, scratch: str, log: Callable[[str], None]
) -> dict[str, Any]:
    """The original-size and pre-resized records the pipeline rows read.

    Args:
      config: `records` is used if given, otherwise `src` is converted into
        `scratch`; the pre-resized copy (`image_size`) always is.
      scratch: a temporary folder.
      log: progress messages.

    Returns:
      {"original": dir, "resized": dir, "conversion_seconds": {...}}.

    Raises:
      BenchmarkError: `records` are not at the original sizes or lack the split.
    """
    seconds = {}
    original = config.records
    if original is None:
        original = os.path.join(scratch, "original")
        log(f"converting {config.src} to {original} (original sizes)")
        summary = writer.convert_folder(config.src, original, show_progress=False)
        seconds["original"] = summary.seconds
    else:
        manifest = schema.read_manifest(original)
        if manifest.stored_size is not None:
            raise BenchmarkError(
                f"--records {original} holds images resized to {manifest.stored_size}; "
                "the benchmark needs records at the original sizes"
            )
    resized = os.path.join(scratch, "resized")
    log(f"converting {config.src} to {resized} (pre-resized to {config.image_size})")
    summary = writer.convert_folder(
        config.src, resized, image_size=config.image_size, show_progress=False
    )
    seconds["resized"] = summary.seconds
    for records_dir in (original, resized):
        manifest = schema.read_manifest(records_dir)
        if config.split not in manifest.splits:
            raise BenchmarkError(f"records {records_dir} have no split {config.split!r}")
    return {"original": original, "resized": resized, "conversion_seconds": seconds}


class _Recorder:
    """Runs loaders one at a time and keeps their figures, with memory."""

    def __init__(self, memory: MemoryTracker, log: Callable[[str], None]):
        self.memory = memory
        self.log = log
        self.entries: dict[str, dict[str, Any]] = {}

    def run(
        self,
        name: str,
        label: str,
        group: str,
        measure_fn: Callable[[], Measurement],
        baseline: str | None = None,
    ) -> None:
        """Measures one loader and stores its entry under `name`.

        Args:
          name: key in the results.
          label: row label of the table and the plot.
          group: one of the GROUP_* constants.
          measure_fn: builds the loader and measures it; whatever it builds is
            released when it returns.
          baseline: name of an entry (this one or an earlier one) to report
            the ratio to.
        """
        self.log(f"{label} ...")
        gc.collect()
        started = time.perf_counter()
        with self.memory.section() as memory:
            measurement = measure_fn()
            gc.collect()
        self.add(name, label, group, measurement, memory, time.perf_counter() - started, baseline)

    def add(
        self,
        name: str,
        label: str,
        group: str,
        measurement: Measurement,
        memory: dict[str, float],
        seconds: float,
        baseline: str | None = None,
    ) -> None:
        """Stores a finished measurement; see `run` for the arguments.

        Args:
          name, label, group, baseline: see `run`.
          measurement: the figures.
          memory: from `MemoryTracker.section`.
          seconds: wall-clock time the row took, building included.
        """
        entry: dict[str, Any] = {"label": label, "group": group, **measurement.to_json()}
        entry["seconds_total"] = seconds
        entry["memory"] = memory
        if baseline is not None:
            reference = (
                measurement.images_per_second
                if baseline == name
                else self.entries[baseline]["images_per_second"]
            )
            entry["baseline"] = baseline
            entry["ratio"] = measurement.images_per_second / reference
        self.entries[name] = entry
        self.log(
            f"  {label}: {measurement.images_per_second:,.1f} images/s "
            f"({seconds:.1f} s, peak RSS {memory['peak_rss_mib']:.0f} MiB)"
        )


def input_configs(config: BenchmarkConfig, class_mode: str) -> dict[str, dataset.InputConfig]:
    """The pipeline variants the benchmark reads with.

    Returns:
      "plain" (no shuffle, augmentation or cache), "cached", "no_dct",
      "augmented" (training, host notebook augmentation) and
      "augmented_cached".
    """
    plain = dataset.InputConfig(
        image_size=config.image_size, batch_size=config.batch_size, class_mode=class_mode
    )
    augmented = dataclasses.replace(
        plain, training=True, augmentation=augment.NOTEBOOK_AUGMENTATION
    )
    return {
        "plain": plain,
        "cached": dataclasses.replace(plain, cache=True),
        "no_dct": dataclasses.replace(plain, dct_scaling=False),
        "augmented": augmented,
        "augmented_cached": dataclasses.replace(augmented, cache=True),
    }


def _measure_loaders(
    rec: _Recorder, config: BenchmarkConfig, records: dict[str, Any], class_mode: str
) -> None:
    """The throughput rows: Keras' loaders, the pipeline and the ceiling."""
    split_dir = os.path.join(config.src, config.split)
    size, batch, split = config.image_size, config.batch_size, config.split
    passes, cap = config.passes, config.max_batches
    original, resized = records["original"], records["resized"]

    def steady(build: Callable[[], Iterable[Batch]]) -> Callable[[], Measurement]:
        def run() -> Measurement:
            loader = build()  # built once: every pass iterates the same object
            return measure(lambda: loader, passes, cap)

        return run

    def cold(records_dir: str, input_config: dataset.InputConfig) -> Callable[[], Measurement]:
        return lambda: measure_cold(
            {"cold": lambda: pipeline_loader(records_dir, split, input_config)}, config.cold_runs, cap
        )["cold"]

    configs = input_configs(config, class_mode)
    plain, cached, no_dct = configs["plain"], configs["cached"], configs["no_dct"]
    augmented, augmented_cached = configs["augmented"], configs["augmented_cached"]

    rec.run(
        "idg_rescale", "ImageDataGenerator, rescale only", GROUP_IDG,
        lambda: measure(idg_loader(split_dir, size, batch, class_mode, False), passes, cap),
        baseline="idg_rescale",
    )
    rec.run(
        "idg_augment", "ImageDataGenerator, notebook augmentation", GROUP_IDG,
        lambda: measure(idg_loader(split_dir, size, batch, class_mode, True), passes, cap),
        baseline="idg_augment",
    )
    rec.run(
        "keras_rescale", "image_dataset_from_directory, rescale", GROUP_KERAS,
        steady(lambda: keras_directory_loader(split_dir, size, batch, class_mode, False)),
        baseline="idg_rescale",
    )
    rec.run(
        "keras_augment", "image_dataset_from_directory + aug layers", GROUP_KERAS,
        steady(lambda: keras_directory_loader(split_dir, size, batch, class_mode, True)),
        baseline="idg_augment",
    )
    # The cold epochs and the decode ceilings they are held against are timed
    # in turns, as first passes of fresh datasets alike.
    rows = {
        "pipeline_cold": ("pipeline, cold 1st epoch", GROUP_PIPELINE,
                          lambda: pipeline_loader(original, split, plain)),
        "pipeline_cold_nodct": ("pipeline, cold 1st epoch, dct_scaling=False", GROUP_PIPELINE,
                                lambda: pipeline_loader(original, split, no_dct)),
        "ceiling": ("decode ceiling, dct_scaling=True", GROUP_CEILING,
                    lambda: decode_ceiling_loader(original, split, size, batch, True)),
        "ceiling_autotune": ("decode ceiling, dct_scaling=True, autotune", GROUP_CEILING,
                             lambda: decode_ceiling_loader(original, split, size, batch, True, autotune=True)),
        "ceiling_nodct": ("decode ceiling, dct_scaling=False", GROUP_CEILING,
                          lambda: decode_ceiling_loader(original, split, size, batch, False)),
    }
    rec.log("cold epochs and decode ceilings, in turns ...")
    gc.collect()
    started = time.perf_counter()
    with rec.memory.section() as cold_memory:
        cold_runs = measure_cold({name: row[2] for name, row in rows.items()}, config.cold_runs, cap)
    cold_seconds = time.perf_counter() - started

    def add_cold(name: str) -> None:
        label, group, _ = rows[name]
        rec.add(name, label, group, cold_runs[name], cold_memory, cold_seconds, baseline="idg_rescale")

    add_cold("pipeline_cold")
    add_cold("pipeline_cold_nodct")
    rec.run(
        "pipeline_steady", "pipeline, steady, no cache", GROUP_PIPELINE,
        steady(lambda: pipeline_loader(original, split, plain)), baseline="idg_rescale",
    )
    rec.run(
        "pipeline_steady_cached", "pipeline, steady, cache", GROUP_PIPELINE,
        steady(lambda: pipeline_loader(original, split, cached)), baseline="idg_rescale",
    )
    rec.run(
        "pipeline_aug", "pipeline, steady, host aug, no cache", GROUP_PIPELINE,
        steady(lambda: pipeline_loader(original, split, augmented)), baseline="idg_augment",
    )
    rec.run(
        "pipeline_aug_cached", "pipeline, steady, host aug, cache", GROUP_PIPELINE,
        steady(lambda: pipeline_loader(original, split, augmented_cached)),
        baseline="idg_augment",
    )
    rec.run(
        "resized_cold", "pre-resized records, cold 1st epoch", GROUP_RESIZED,
        cold(resized, plain), baseline="idg_rescale",
    )
    rec.run(
        "resized_steady", "pre-resized records, steady, no cache", GROUP_RESIZED,
        steady(lambda: pipeline_loader(resized, split, plain)), baseline="idg_rescale",
    )
    for name in ("ceiling", "ceiling_autotune", "ceiling_nodct"):
        add_cold(name)


def _measure_training(
    rec: _Recorder,
    config: BenchmarkConfig,
    records_dir: str,
    num_classes: int,
    class_mode: str,
    epoch_images: int,
) -> None:
    """The training rows: the CNN fed from memory and by the pipeline."""
    split = config.split
    configs = input_configs(config, class_mode)
    rows = {
        "train_in_memory": "training, one batch held in memory",
        "train_pipeline_aug_cached": "training, pipeline host aug + cache",
        "train_pipeline_aug": "training, pipeline host aug, no cache",
    }
    rec.log(f"training rows: {config.train_rounds} round(s) of {config.train_steps} steps ...")
    gc.collect()
    started = time.perf_counter()
    with rec.memory.section() as memory:
        model = cnn.compile_cnn(cnn.build_cnn(config.image_size, num_classes))
        batch = next(iter(pipeline_loader(records_dir, split, configs["plain"])))
        cached = pipeline_loader(records_dir, split, configs["augmented_cached"])
        for _ in cached:  # fill the cache: the timed steps see epochs 2+
            pass
        # The in-memory baseline runs without tf.data's autotuner: with it, the
        # same feed trained up to 25% slower on 2 cores (see BUILD.md).
        no_autotune = tf.data.Options()
        no_autotune.autotune.enabled = False
        feeds = {
            "train_in_memory": TrainingFeed(
                tf.data.Dataset.from_tensors(batch).repeat().with_options(no_autotune),
                int(batch[0].shape[0]), None,
            ),
            "train_pipeline_aug_cached": TrainingFeed(
                cached.repeat(), config.batch_size, epoch_images
            ),
            "train_pipeline_aug": TrainingFeed(
                pipeline_loader(records_dir, split, configs["augmented"]).repeat(),
                config.batch_size, epoch_images,
            ),
        }
        measurements = measure_training(
            model, feeds, config.train_steps, config.train_warmup_steps, config.train_rounds
        )
        del model, batch, cached, feeds
        keras.backend.clear_session()
        gc.collect()
    seconds = time.perf_counter() - started
    for name, label in rows.items():
        rec.add(
            name, label, GROUP_TRAINING, measurements[name], memory, seconds,
            baseline="train_in_memory",
        )


def best_ceiling(loaders: dict[str, Any]) -> str:
    """The faster decode-ceiling row with DCT scaling: with or without autotune."""
    return max(("ceiling", "ceiling_autotune"), key=lambda n: loaders[n]["images_per_second"])


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with its value and whether it is met.

    Args:
      results: what `run_benchmark` returned (only "loaders" and "memory" are
        read).

    Returns:
      Dicts with "name", "description", "value" (from the median figures),
      "value_best_passes" (the same ratio from each row's fastest pass: on a
      machine whose speed wanders, a steadier estimate), "threshold", "unit"
      ("x" for ratios, "MiB") and "passed" (judged on "value").
    """
    loaders = results["loaders"]

    def ips(name: str) -> float:
        return loaders[name]["images_per_second"]

    def best(name: str) -> float:
        return loaders[name]["images_per_second_max"]

    plain_variants = ("pipeline_steady", "pipeline_steady_cached", "resized_steady")
    best_plain = max(plain_variants, key=ips)
    ceiling = best_ceiling(loaders)
    ratios = [
        (
            "aug_cached_vs_idg_aug",
            "steady host-aug cached pipeline vs ImageDataGenerator with augmentation",
            "pipeline_aug_cached", "idg_augment", TARGET_AUG_SPEEDUP,
        ),
        (
            "plain_vs_idg_rescale",
            f"steady no-aug pipeline (best: {loaders[best_plain]['label']}) "
            "vs ImageDataGenerator rescale only",
            best_plain, "idg_rescale", TARGET_PLAIN_SPEEDUP,
        ),
        (
            "cold_vs_ceiling",
            f"pipeline cold 1st epoch vs decode ceiling (best: {loaders[ceiling]['label']})",
            "pipeline_cold", ceiling, TARGET_COLD_OF_CEILING,
        ),
        (
            "training_vs_in_memory",
            "training fed by the pipeline (host aug, cache) vs one batch in memory",
            "train_pipeline_aug_cached", "train_in_memory", TARGET_TRAINING_OF_IN_MEMORY,
        ),
    ]
    targets = []
    for name, description, numerator, denominator, threshold in ratios:
        value = ips(numerator) / ips(denominator)
        targets.append(
            {
                "name": name,
                "description": description,
                "value": value,
                "value_best_passes": best(numerator) / best(denominator),
                "threshold": threshold,
                "unit": "x",
                "passed": value >= threshold,
            }
        )
    streaming = results["memory"]["uncached_streaming_rss_mib"]
    window = min(_STREAMING_WINDOW, len(streaming))
    growth = statistics.median(streaming[-window:]) - statistics.median(streaming[:window])
    targets.append(
        {
            "name": "streaming_memory_growth",
            "description": (
                f"resident memory growth over {len(streaming)} uncached host-aug epochs "
                f"(median of the last {window} vs the first {window})"
            ),
            "value": growth,
            "threshold": TARGET_STREAMING_GROWTH_MIB,
            "unit": "MiB",
            "passed": growth < TARGET_STREAMING_GROWTH_MIB,
        }
    )
    peak = results["memory"]["peak_rss_mib"]
    targets.append(
        {
            "name": "peak_memory",
            "description": "peak resident memory of the benchmark process",
            "value": peak,
            "threshold": TARGET_PEAK_MEMORY_MIB,
            "unit": "MiB",
            "passed": peak < TARGET_PEAK_MEMORY_MIB,
        }
    )
    return targets


def run_benchmark(
    config: BenchmarkConfig,
    command: Sequence[str] | None = None,
    log: Callable[[str], None] = _log_to_stderr,
) -> dict[str, Any]:
    """Converts the records if needed, then measures every loader.

    Args:
      config: what to measure.
      command: the command line to record; default `sys.argv`.
      log: receives one progress message at a time (default: stderr).

    Returns:
      A JSON-serializable dict: "machine", "date", "command", "settings",
      "data", "loaders" (name -> label, group, images_per_second, the passes,
      the ratio to its baseline and memory), "ceiling_ratios", "memory",
      "targets" and "wall_seconds".

    Raises:
      BenchmarkError: `src` has no such split, or unusable records.
      sources.SourceError, writer.ConversionError: the conversion failed.
    """
    started = time.perf_counter()
    split_dir = os.path.join(config.src, config.split)
    if not os.path.isdir(split_dir):
        raise BenchmarkError(f"{split_dir} is not a folder: --src needs a {config.split}/ folder")
    memory = MemoryTracker()
    contention = CpuContention()
    results: dict[str, Any] = {
        "machine": machine_info(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": shlex.join(list(sys.argv if command is None else command)),
        "settings": {
            **dataclasses.asdict(config),
            "src": os.path.abspath(config.src),
            "image_data_generator": image_data_generator_class()[1],
        },
    }
    with tempfile.TemporaryDirectory(prefix="bench-records-") as scratch:
        records = prepare_records(config, scratch, log)
        manifest = schema.read_manifest(records["original"])
        num_classes = manifest.num_classes
        class_mode = "binary" if num_classes == 2 else "categorical"
        epoch_images = manifest.splits[config.split].num_examples
        results["data"] = {
            "split": config.split,
            "split_dir": os.path.abspath(split_dir),
            "images": epoch_images,
            "class_names": list(manifest.class_names),
            "class_mode": class_mode,
            "records": os.path.abspath(config.records) if config.records else None,
            "conversion_seconds": records["conversion_seconds"],
            "original_records_mb": manifest.splits[config.split].num_bytes / 1e6,
            "resized_records_mb": schema.read_manifest(records["resized"])
            .splits[config.split]
            .num_bytes
            / 1e6,
        }
        rec = _Recorder(memory, log)
        _measure_loaders(rec, config, records, class_mode)
        _measure_training(rec, config, records["original"], num_classes, class_mode, epoch_images)
        log(f"memory while streaming {STREAMING_EPOCHS} uncached epochs ...")
        streaming = streaming_rss_mib(
            pipeline_loader(records["original"], config.split, input_configs(config, class_mode)["augmented"]),
            STREAMING_EPOCHS, config.max_batches,
        )
    loaders = rec.entries
    results["loaders"] = loaders
    results["ceiling_ratios"] = {
        "dct_scaling": loaders["pipeline_cold"]["images_per_second"]
        / loaders[best_ceiling(loaders)]["images_per_second"],
        "no_dct_scaling": loaders["pipeline_cold_nodct"]["images_per_second"]
        / loaders["ceiling_nodct"]["images_per_second"],
    }
    results["memory"] = {
        "peak_rss_mib": memory.peak_mib(),
        "ru_maxrss_mib": ru_maxrss_bytes() / _MIB,
        "per_loader_peaks": memory.resettable,
        "uncached_streaming_rss_mib": streaming,
    }
    results["machine"]["load_average_at_end"] = list(os.getloadavg())
    results["cpu_contention"] = contention.report()
    results["wall_seconds"] = time.perf_counter() - started
    results["targets"] = evaluate_targets(results)
    return results


# --------------------------------------------------------------------------
# Reporting.


def format_table(results: dict[str, Any]) -> str:
    """The loaders as a text table, then the cold / ceiling ratios."""
    loaders = results["loaders"]
    width = max(len(entry["label"]) for entry in loaders.values())
    header = (
        f"{'loader':<{width}}  {'images/s':>10}  {'ratio':>8}  {'vs':<11}  "
        f"{'img/pass':>8}  {'1st batch':>9}  {'peak RSS':>9}"
    )
    lines = [header, "-" * len(header)]
    group = None
    for name, entry in loaders.items():
        if group is not None and entry["group"] != group:
            lines.append("")
        group = entry["group"]
        baseline = entry.get("baseline")
        if baseline is None:
            ratio, versus = "", ""
        elif baseline == name:
            ratio, versus = "1.00x", "(baseline)"
        else:
            ratio, versus = f"{entry['ratio']:.2f}x", _BASELINE_NAMES.get(baseline, baseline)
        first = [s for s in entry["first_batch_seconds"] if s is not None and math.isfinite(s)]
        first_batch = f"{statistics.median(first) * 1000:,.0f} ms" if first else ""
        lines.append(
            f"{entry['label']:<{width}}  {entry['images_per_second']:>10,.1f}  {ratio:>8}  "
            f"{versus:<11}  {entry['images_per_pass'][0]:>8}  {first_batch:>9}  "
            f"{entry['memory']['peak_rss_mib']:>5,.0f} MiB"
        )
    ratios = results["ceiling_ratios"]
    lines += [
        "",
        "pipeline cold epoch / decode ceiling (same dct setting): "
        f"dct_scaling=True {ratios['dct_scaling']:.2f}, "
        f"dct_scaling=False {ratios['no_dct_scaling']:.2f}",
    ]
    lines.append(
        "images/s: median over the timed passes; 1st batch: median time from iter() to "
        "the first batch; peak RSS: resident peak while that row ran (the training rows "
        "share one)"
    )
    if not results["memory"]["per_loader_peaks"]:
        lines.append("(peak RSS per row is the process peak so far: it could not be reset)")
    return "\n".join(lines)


def format_targets(results: dict[str, Any]) -> str:
    """The issue's targets with PASS/FAIL, the peak memory and the wall time."""
    lines = ["Targets:"]
    for target in results["targets"]:
        verdict = "PASS" if target["passed"] else "FAIL"
        if target["unit"] == "x":
            figure = (
                f"{target['value']:.2f}x (target >= {target['threshold']:g}x; "
                f"fastest passes: {target['value_best_passes']:.2f}x)"
            )
        else:
            figure = f"{target['value']:,.0f} MiB (target < {target['threshold']:,.0f} MiB)"
        lines.append(f"  {verdict}  {target['description']}: {figure}")
    memory = results["memory"]
    lines.append(
        f"Peak memory: {memory['peak_rss_mib']:,.0f} MiB resident "
        f"(getrusage ru_maxrss now: {memory['ru_maxrss_mib']:,.0f} MiB)"
    )
    lines.append(
        "Resident memory after each uncached epoch: "
        + ", ".join(f"{mib:,.0f}" for mib in memory["uncached_streaming_rss_mib"])
        + " MiB"
    )
    lines.append(f"Wall time: {results['wall_seconds']:.1f} s")
    contention = results["cpu_contention"]
    share = contention["other_processes_share"]
    lines.append(
        f"Other processes used {share:.0%} of the machine's CPU during the run "
        f"({contention['other_processes_cpu_seconds']:.0f} CPU-s; the benchmark "
        f"{contention['own_cpu_seconds']:.0f} CPU-s)"
        + (": the figures are disturbed, run again on an idle machine"
           if share > CONTENTION_WARNING_SHARE else "")
    )
    if results["settings"]["max_batches"] is not None:
        lines.append(
            f"Note: --max_batches={results['settings']['max_batches']} caps every pass: "
            "the figures are not epochs and the targets mean little."
        )
    return "\n".join(lines)


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def save_results(results: dict[str, Any], path: str) -> str:
    """Writes `results` as JSON (non-finite numbers as null); returns the path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(_finite_or_none(results), f, indent=2, allow_nan=False)
        f.write("\n")
    return path


def plot_results(results: dict[str, Any], path: str) -> str:
    """Horizontal bars of images/s (log scale): loaders above, training below.

    Args:
      results: what `run_benchmark` returned.
      path: the PNG to write.

    Returns:
      `path`.
    """
    # The Agg canvas directly: no pyplot, no global backend state.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter, NullFormatter

    loaders = results["loaders"]
    panels = [
        ("Input pipelines: images/s delivered (log scale)",
         [n for n, e in loaders.items() if e["group"] != GROUP_TRAINING]),
        ("CNN training: images/s trained (log scale)",
         [n for n, e in loaders.items() if e["group"] == GROUP_TRAINING]),
    ]
    panels = [(title, names) for title, names in panels if names]
    rows = sum(len(names) for _, names in panels)
    fig = Figure(figsize=(11, 1.6 + 0.38 * rows + 0.9 * len(panels)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(
        len(panels), 1, squeeze=False,
        gridspec_kw={"height_ratios": [len(names) + 1 for _, names in panels]},
    )[:, 0]
    for ax, (title, names) in zip(axes, panels):
        values = [loaders[n]["images_per_second"] for n in names]
        positions = np.arange(len(names))
        colours = [_GROUP_COLOURS.get(loaders[n]["group"], "#999999") for n in names]
        ax.barh(positions, values, color=colours, height=0.7)
        ax.set_xscale("log")
        ax.set_yticks(positions, [loaders[n]["label"] for n in names], fontsize=9)
        ax.invert_yaxis()
        positive = [v for v in values if v > 0]
        if positive:
            ax.set_xlim(min(positive) / 2, max(positive) * 8)
        for position, name, value in zip(positions, names, values):
            entry = loaders[name]
            text = f"{value:,.0f}" if value >= 10 else f"{value:.2f}"
            if entry.get("baseline") == name:
                text += "  (baseline)"
            elif entry.get("baseline") is not None:
                text += f"  ({entry['ratio']:.2f}x {_BASELINE_NAMES.get(entry['baseline'], '')})"
            ax.text(value * 1.08, position, text, va="center", fontsize=8)
        ax.xaxis.set_major_formatter(
            FuncFormatter(lambda x, _: f"{x:,.0f}" if x >= 1 else f"{x:g}")
        )
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("images/s", fontsize=9)
        ax.set_title(title, fontsize=10, loc="left")
        ax.grid(axis="x", which="major", alpha=0.3)
    machine, data = results["machine"], results["data"]
    fig.suptitle(
        f"{data['images']} '{data['split']}' images -> "
        f"{results['settings']['image_size'][0]}x{results['settings']['image_size'][1]}, "
        f"batch {results['settings']['batch_size']}; {machine['usable_cores']} cores "
        f"({machine['cpu_model']}), TF {machine['tensorflow']}, {results['date'][:10]}",
        fontsize=10,
    )
    groups = list(dict.fromkeys(loaders[n]["group"] for _, names in panels for n in names))
    fig.legend(
        handles=[Patch(color=_GROUP_COLOURS.get(g, "#999999"), label=g) for g in groups],
        loc="outside lower center", ncols=min(len(groups), 3), fontsize=8,
    )
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
