"""The run: which rows are measured, in which order, into typed results.

In order: ImageDataGenerator and image_dataset_from_directory, without and with
augmentation; the pipeline's cold first epochs and the decode ceilings they are
held against, timed in turns (the ceilings are listed last); its steady epochs;
pre-resized records; the CNN trained through `model.training`, fed from memory
and as train.py feeds it; the resident size over `STREAMING_EPOCHS` epochs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import enum
import gc
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import keras
import numpy as np
import psutil
import tensorflow as tf

from pipeline import cli
from pipeline import schema
from pipeline.converter import conversion
from pipeline.reader import augment
from pipeline.reader import dataset
from pipeline.reader import guard
from pipeline.reader import service
from benchmark import BenchmarkError
from benchmark import loaders
from benchmark import timing
from model import inference
from model import run_config
from model import run_plan
from model import training

STREAMING_EPOCHS = 10


class Group(enum.Enum):
    """The table's sections and the chart's colours, in order."""

    IDG = "ImageDataGenerator"
    KERAS = "image_dataset_from_directory"
    PIPELINE = "pipeline"
    RESIZED = "pipeline, pre-resized records"
    CEILING = "decode ceiling"
    SERVICE = "tf.data service (local workers)"
    TRAINING = "training (CNN)"


@dataclasses.dataclass(frozen=True)
class BenchmarkConfig:
    """What to benchmark, how long, and where the report goes: bench.py's flags are its fields (`cli.setting`)."""

    src: str = cli.setting(help="Image folder: {train,validation,test}/<class>/*.jpg.")
    records: str | None = cli.setting(
        None, help="Records converted from --src at the original sizes. Default: convert --src into a temporary "
                   "folder. The pre-resized copy is always converted.")
    split: str = cli.setting("train", help="The split every loader reads.")
    image_size: tuple[int, int] = cli.setting(dataset.DEFAULT_IMAGE_SIZE, help="Square: the CNN's input.", flag=False)
    batch_size: int = cli.setting(dataset.DEFAULT_BATCH_SIZE, help="Images per batch.", at_least=1)
    passes: int = cli.setting(
        5, help="Timed passes per loader; the figure is their median, after one warm-up pass.", at_least=1)
    cold_runs: int = cli.setting(
        3, help="Freshly built datasets per cold figure (bench.py: --passes).", at_least=1, flag=False)
    max_batches: int | None = cli.setting(
        None, help="Cap on batches per pass (smoke tests). Default: whole epochs.", at_least=1)
    train_steps: int = cli.setting(
        30, help="Timed training steps per input for the training-stall rows; --backends: per epoch.", at_least=1)
    train_warmup_steps: int = cli.setting(3, help="Steps of the untimed fit per training input.", at_least=1, flag=False)
    train_rounds: int = cli.setting(
        3, help="Timed fits per training input (bench.py: --passes, at most 3).", at_least=1, flag=False)
    out: str = cli.setting("bench_out", help="Folder for results.json and throughput.png.")
    backends: bool = cli.setting(False, help="Instead of the loaders: train.py on each Keras backend, processes of "
                                             "their own, --passes + 1 epochs of --train_steps (the first untimed).")

    def __post_init__(self):
        cli.check_settings(self, BenchmarkError)
        if min(self.image_size) < 1 or self.image_size[0] != self.image_size[1]:
            raise BenchmarkError(f"image_size must be square and positive, got {self.image_size}")


@dataclasses.dataclass(frozen=True)
class Spec:
    """A row: its key in results.json, label, section, and the row its ratio is to (itself, earlier, None)."""

    name: str
    label: str
    group: Group
    baseline: str | None


@dataclasses.dataclass(frozen=True)
class Row:
    """A measured row. Rows measured together share `memory` and `seconds` (building included)."""

    spec: Spec
    measurement: timing.Measurement
    memory: timing.Memory
    seconds: float


@dataclasses.dataclass(frozen=True)
class Data:
    """The split every row reads, and its records."""

    split: str
    split_dir: str
    images: int
    class_names: tuple[str, ...]
    class_mode: str
    records: str | None
    conversion_seconds: dict[str, float]
    original_records_mb: float
    resized_records_mb: float


@dataclasses.dataclass(frozen=True)
class Results:
    """What `run_benchmark` measured; `report.to_json` gives its JSON form."""

    config: BenchmarkConfig
    image_data_generator: str  # the module it came from
    machine: dict[str, Any]
    date: str
    command: str
    data: Data
    rows: tuple[Row, ...]
    streaming_rss_mib: tuple[float, ...]
    peak_rss_mib: float
    ru_maxrss_mib: float
    cpu_contention: timing.CpuContention
    wall_seconds: float

    def row(self, name: str) -> Row:
        return next(row for row in self.rows if row.spec.name == name)


class _Run:
    """Measures the rows one at a time, in order, each with the memory it used."""

    def __init__(self, config: BenchmarkConfig, data: Data, original: str, resized: str, manifest: schema.Manifest,
                 log: Callable[[str], None]):
        self.config, self.data, self.log = config, data, log
        self.original, self.resized, self.manifest = original, resized, manifest  # manifest: the original's
        self.plain = dataset.InputConfig(
            image_size=config.image_size, batch_size=config.batch_size, class_mode=data.class_mode)
        self.augmented = dataclasses.replace(self.plain, augmentation=augment.NOTEBOOK_AUGMENTATION)
        self.rows: list[Row] = []

    def train_plan(self, cache: bool) -> run_plan.RunPlan:
        """train.py's run of the records for bench.py's sizes, --augment_on=host, --[no]cache, defaults else."""
        flags = run_config.TrainConfig(records=self.original, batch_size=self.config.batch_size, cache=cache,
                                       image_size=self.config.image_size[0], augment_on=run_config.AugmentOn.HOST)
        return run_plan.plan_run(flags, self.manifest)

    def measure(self, message: str, run: Callable[[], dict[Spec, timing.Measurement]]) -> dict[Spec, Row]:
        """Calls `run`, which builds and measures; its rows share the memory it used and its seconds."""
        self.log(message)
        gc.collect()
        started = time.perf_counter()
        measured, memory = timing.sampled(run)  # what `run` built is freed by now
        seconds = time.perf_counter() - started
        return {spec: Row(spec, measurement, memory, seconds) for spec, measurement in measured.items()}

    def add(self, row: Row) -> None:
        self.rows.append(row)
        self.log(f"  {row.spec.label}: {row.measurement.images_per_second:,.1f} images/s "
                 f"({row.seconds:.1f} s, peak RSS {row.memory.peak_rss_mib:.0f} MiB)")

    def steady(self, spec: Spec, build: Callable[[], Iterable[timing.Batch]]) -> None:
        """Builds one loader, then times passes over it, each a new iterator."""
        passes, cap = self.config.passes, self.config.max_batches
        self.add(self.measure(f"{spec.label} ...", lambda: {spec: timing.measure(build(), passes, cap)})[spec])

    def cold(self, message: str, builds: dict[Spec, Callable[[], Iterable[timing.Batch]]]) -> dict[Spec, Row]:
        """Times the first passes of fresh datasets, the specs in turns."""
        runs, cap = self.config.cold_runs, self.config.max_batches
        return self.measure(message, lambda: timing.measure_cold(builds, runs, cap))

    def throughput_rows(self) -> None:
        """The throughput rows: Keras' loaders, the pipeline and the decode ceilings."""
        split_dir, split, mode = self.data.split_dir, self.data.split, self.data.class_mode
        size, batch, original = self.config.image_size, self.config.batch_size, self.original
        notebook, plain, augmented = augment.NOTEBOOK_AUGMENTATION, self.plain, self.augmented
        self.steady(Spec("idg_rescale", "ImageDataGenerator, rescale only", Group.IDG, "idg_rescale"),
                    lambda: loaders.idg_loader(split_dir, size, batch, mode, None))
        self.steady(Spec("idg_augment", "ImageDataGenerator, notebook augmentation", Group.IDG, "idg_augment"),
                    lambda: loaders.idg_loader(split_dir, size, batch, mode, notebook))
        self.steady(Spec("keras_rescale", "image_dataset_from_directory, rescale", Group.KERAS, "idg_rescale"),
                    lambda: loaders.keras_directory_loader(split_dir, size, batch, mode, None))
        self.steady(Spec("keras_augment", "image_dataset_from_directory + aug layers", Group.KERAS, "idg_augment"),
                    lambda: loaders.keras_directory_loader(split_dir, size, batch, mode, notebook))
        # In turns: a drift in the machine's speed hits the cold epochs and their ceilings alike.
        cold = Spec("pipeline_cold", "pipeline, cold 1st epoch", Group.PIPELINE, "idg_rescale")
        cold_nodct = Spec("pipeline_cold_nodct", "pipeline, cold 1st epoch, dct_scaling=False", Group.PIPELINE,
                          "idg_rescale")
        ceilings = {
            Spec("ceiling", "decode ceiling, dct_scaling=True", Group.CEILING, "idg_rescale"):
                lambda: loaders.decode_ceiling(original, split, size, batch, dct_scaling=True),
            Spec("ceiling_autotune", "decode ceiling, dct_scaling=True, autotune", Group.CEILING, "idg_rescale"):
                lambda: loaders.decode_ceiling(original, split, size, batch, dct_scaling=True, autotune=True),
            Spec("ceiling_nodct", "decode ceiling, dct_scaling=False", Group.CEILING, "idg_rescale"):
                lambda: loaders.decode_ceiling(original, split, size, batch, dct_scaling=False),
        }
        cold_rows = self.cold("cold epochs and decode ceilings, in turns ...", {
            cold: lambda: dataset.eval_dataset(original, split, plain),
            cold_nodct: lambda: dataset.eval_dataset(original, split, dataclasses.replace(plain, dct_scaling=False)),
            **ceilings,
        })
        self.add(cold_rows[cold])
        self.add(cold_rows[cold_nodct])
        self.steady(Spec("pipeline_steady", "pipeline, steady, no cache", Group.PIPELINE, "idg_rescale"),
                    lambda: dataset.eval_dataset(original, split, plain))
        files = inference.image_files([split_dir])
        self.steady(Spec("predict_files", "predict.py's reading, image files, steady", Group.PIPELINE, "idg_rescale"),
                    lambda: dataset.files_dataset(files, size, batch))
        self.steady(Spec("pipeline_steady_cached", "pipeline, steady, cache", Group.PIPELINE, "idg_rescale"),
                    lambda: dataset.eval_dataset(original, split, dataclasses.replace(plain, cache=True)))
        self.steady(Spec("pipeline_aug", "pipeline, steady, host aug, no cache", Group.PIPELINE, "idg_augment"),
                    lambda: dataset.train_dataset(original, augmented, split))
        self.steady(Spec("pipeline_aug_cached", "pipeline, steady, host aug, cache", Group.PIPELINE, "idg_augment"),
                    lambda: dataset.train_dataset(original, dataclasses.replace(augmented, cache=True), split))
        resized_cold = Spec("resized_cold", "pre-resized records, cold 1st epoch", Group.RESIZED, "idg_rescale")
        self.add(self.cold(f"{resized_cold.label} ...",
                           {resized_cold: lambda: dataset.eval_dataset(self.resized, split, plain)})[resized_cold])
        self.steady(Spec("resized_steady", "pre-resized records, steady, no cache", Group.RESIZED, "idg_rescale"),
                    lambda: dataset.eval_dataset(self.resized, split, plain))
        for spec in ceilings:
            self.add(cold_rows[spec])

    def tensorflow_warp_rows(self) -> None:
        """The augmentation in TensorFlow ops only, the one tf.data service workers can run."""
        split, original = self.data.split, self.original
        tf_ops = dataclasses.replace(self.augmented, host_warp=augment.HostWarp.TENSORFLOW)
        self.steady(Spec("pipeline_aug_tfops", "pipeline, steady, TF-ops aug, no cache", Group.PIPELINE, "idg_augment"),
                    lambda: dataset.train_dataset(original, tf_ops, split))
        self.steady(Spec("pipeline_aug_tfops_cached", "pipeline, steady, TF-ops aug, cache", Group.PIPELINE,
                         "idg_augment"),
                    lambda: dataset.train_dataset(original, dataclasses.replace(tf_ops, cache=True), split))

    def service_rows(self) -> None:
        """train.py's --data_service input through a dispatcher and 1, then 2, workers.

        The servers run in this process on 127.0.0.1 (their pipelines are C++,
        so they share its cores as separate processes would); the in-process
        row to hold them against is "pipeline, steady, TF-ops aug, no cache".
        """
        split, original = self.data.split, self.original
        distributed = dataclasses.replace(self.augmented, host_warp=augment.HostWarp.TENSORFLOW, distributed=True)
        dispatcher = service.start_dispatcher(port=0)
        address = service.local_address(dispatcher)
        workers = []
        for count, name in ((1, "service_1_worker"), (2, "service_2_workers")):
            while len(workers) < count:
                workers.append(service.start_worker(address, port=0, host="127.0.0.1"))
            self.steady(Spec(name, f"tf.data service, {count} local worker(s), TF-ops aug", Group.SERVICE,
                             "pipeline_aug_tfops"),
                        lambda: service.on_trainer(
                            service.distribute(dataset.train_dataset(original, distributed, split), address),
                            distributed.batch_size))
        for worker in workers:
            worker.stop()
        dispatcher.stop()

    def training_rows(self) -> None:
        """The CNN's training speed fed from memory and by train.py's own input (`train_plan`, `RunPlan.batches`)."""
        config = self.config
        specs = [Spec(name, label, Group.TRAINING, "train_in_memory") for name, label in (
            ("train_in_memory", "training, one batch held in memory"),
            ("train_pipeline_aug_cached", "training, pipeline host aug + cache"),
            ("train_pipeline_aug", "training, pipeline host aug, no cache"))]

        def fit_each() -> dict[Spec, timing.Measurement]:
            cached, streamed = self.train_plan(cache=True), self.train_plan(cache=False)
            model = training.build_model(cached)
            one = next(iter(dataset.eval_dataset(self.original, "train", streamed.eval_input, self.manifest)))
            cached_data = cached.batches().passes.epochs
            for _ in cached_data:  # fill the cache: the timed fits see epochs 2+
                pass
            # The pipeline's options (no autotuner) for the in-memory feed too:
            # with the autotuner it trained up to 25% slower on 2 cores (docs/performance.md).
            in_memory = tf.data.Dataset.from_tensors(one).repeat().with_options(dataset.input_options(True))
            images = self.manifest.splits["train"].num_examples
            feeds = dict(zip(specs, (
                timing.TrainingFeed(in_memory, int(one[0].shape[0]), None),
                timing.TrainingFeed(cached_data.repeat(), config.batch_size, images),
                timing.TrainingFeed(streamed.batches().passes.epochs.repeat(), config.batch_size, images))))
            try:
                return timing.measure_training(
                    model, feeds, config.train_steps, config.train_warmup_steps, config.train_rounds)
            finally:
                keras.backend.clear_session()

        rows = self.measure(f"training rows: {config.train_rounds} round(s) of {config.train_steps} steps ...", fit_each)
        for spec in specs:
            self.add(rows[spec])


def _prepare_records(
        config: BenchmarkConfig, scratch: str, log: Callable[[str], None]) -> tuple[str, str, schema.Manifest, Data]:
    """(original-size records, pre-resized records, the original's manifest, their Data), converted as needed."""
    seconds, original = {}, config.records
    if original is None:
        original = os.path.join(scratch, "original")
        log(f"converting {config.src} to {original} (original sizes)")
        seconds["original"] = conversion.convert_folder(conversion.ConversionConfig(config.src, original)).seconds
    manifest = schema.read_manifest(original)
    if manifest.stored_size is not None:  # only --records can be
        raise BenchmarkError(f"--records {original} holds images resized to {manifest.stored_size}; "
                             "the benchmark needs records at the original sizes")
    resized = os.path.join(scratch, "resized")
    log(f"converting {config.src} to {resized} (pre-resized to {config.image_size})")
    seconds["resized"] = conversion.convert_folder(
        conversion.ConversionConfig(config.src, resized, image_size=config.image_size)).seconds
    resized_manifest = schema.read_manifest(resized)
    for records_dir, m in ((original, manifest), (resized, resized_manifest)):
        if config.split not in m.splits:
            raise BenchmarkError(f"records {records_dir} have no split {config.split!r}")
    split = manifest.splits[config.split]
    return original, resized, manifest, Data(
        split=config.split, split_dir=os.path.abspath(os.path.join(config.src, config.split)),
        images=split.num_examples, class_names=tuple(manifest.class_names),
        class_mode="binary" if manifest.num_classes == 2 else "categorical",
        records=os.path.abspath(config.records) if config.records else None, conversion_seconds=seconds,
        original_records_mb=split.num_bytes / 1e6,
        resized_records_mb=resized_manifest.splits[config.split].num_bytes / 1e6)


def machine_info() -> dict[str, Any]:
    """Cores, CPU model, memory, library versions and the load now."""
    cpu_model = platform.processor() or "unknown"
    if os.path.exists("/proc/cpuinfo"):  # Linux: processor() says nothing there
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            cpu_model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu_model)
    return {
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_total_mib": psutil.virtual_memory().total / timing.MIB,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "load_average_at_start": list(os.getloadavg()),
    }


def log_to_stderr(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def run_benchmark(
    config: BenchmarkConfig, command: Sequence[str] | None = None, log: Callable[[str], None] = log_to_stderr
) -> Results:
    """Converts the records as needed, then measures every row.

    Args:
      config: what to measure.
      command: the command line to record; default `sys.argv`.
      log: receives each progress message.

    Raises:
      BenchmarkError, sources.SourceError, conversion.ConversionError: the run cannot be made as asked.
    """
    started, cpu_start = time.perf_counter(), timing.cpu_snapshot()
    if not os.path.isdir(split_dir := os.path.join(config.src, config.split)):
        raise BenchmarkError(f"{split_dir} is not a folder: --src needs a {config.split}/ folder")
    _, idg_module = loaders.image_data_generator_class()
    machine, date = machine_info(), datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    held = guard.hold(config.records) if config.records else contextlib.nullcontext()  # no conversion under it
    with held, timing.frozen_heap(), tempfile.TemporaryDirectory(prefix="bench-records-") as scratch:
        original, resized, manifest, data = _prepare_records(config, scratch, log)
        run = _Run(config, data, original, resized, manifest, log)
        run.throughput_rows()
        run.tensorflow_warp_rows()
        run.service_rows()
        run.training_rows()
        log(f"memory while streaming {STREAMING_EPOCHS} uncached epochs of train.py's input ...")
        streaming = timing.streaming_rss_mib(
            run.train_plan(cache=False).batches().passes.epochs, STREAMING_EPOCHS, config.max_batches)
    ru_maxrss = timing.ru_maxrss_mib()
    return Results(
        config=config, image_data_generator=idg_module,
        machine={**machine, "load_average_at_end": list(os.getloadavg())}, date=date,
        command=shlex.join(list(sys.argv if command is None else command)), data=data, rows=tuple(run.rows),
        streaming_rss_mib=tuple(streaming),
        peak_rss_mib=max([ru_maxrss, *(row.memory.peak_rss_mib for row in run.rows)]), ru_maxrss_mib=ru_maxrss,
        cpu_contention=timing.cpu_contention(cpu_start), wall_seconds=time.perf_counter() - started)
