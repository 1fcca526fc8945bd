"""bench.py --backends: the notebook CNN trained by train.py on each Keras backend, in one run.

Keras takes its backend once, at import, so each row is train.py in processes
of its own (spawned, never forked from this process, which has TensorFlow
loaded), with the same flags (--strategy aside) and the same records:

    tensorflow        KERAS_BACKEND=tensorflow
    jax               KERAS_BACKEND=jax
    jax_2_devices     ... XLA_FLAGS=--xla_force_host_platform_device_count=2, --strategy=mirrored
    jax_2_processes   ... two processes, KERAS_DISTRIBUTION_{JOB_ADDRESSES,NUM_PROCESSES,PROCESS_ID}
                      (127.0.0.1, a free port), one --model_dir: process 0 writes it

A row's rate is what train.py records itself: history.json's per-epoch
`images_per_second` (`model.callbacks.EpochThroughput`: the global batch times
the epoch's batches over the time to its last batch), the median of epochs 2+
(the first compiles). Beside it what the backend costs: the time from the
first process's start to the first epoch's end, its one-off part, and each
process's peak resident memory and CPU time (the kernel's figures, wait4).
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import os
import shlex
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pipeline import fileio
from pipeline import schema
from pipeline.converter import conversion
from pipeline.reader import guard
from benchmark import BenchmarkError
from benchmark import plan
from benchmark import timing
from model import callbacks
from model import run_config
from model import run_dir

TRAIN_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "train.py")
TRAIN_SPLIT = "train"  # the split train.py trains on
HISTORY_FILE, TRAIN_RESULTS_FILE = "history.json", "results.json"  # what train.py writes into --model_dir
POLL_SECONDS = 0.05  # how often the processes' ends and history.json are looked at
ROW_TIMEOUT_SECONDS = 3600  # a row still running then is killed: a multi-process job can wait for ever
# Variables each row sets for itself: taken out of the environment bench.py runs in.
ROW_VARIABLES = ("KERAS_BACKEND", "XLA_FLAGS", "KERAS_DISTRIBUTION_JOB_ADDRESSES",
                 "KERAS_DISTRIBUTION_NUM_PROCESSES", "KERAS_DISTRIBUTION_PROCESS_ID", "JAX_COORDINATOR_BIND_ADDRESS")


@dataclasses.dataclass(frozen=True)
class Backend:
    """A row: its key in results.json, label, Keras backend, processes, and devices per process."""

    name: str
    label: str
    keras_backend: str
    processes: int = 1
    local_devices: int = 1  # XLA's host platform split into this many devices

    @property
    def strategy(self) -> run_config.Strategy:
        return run_config.Strategy.MIRRORED if self.local_devices > 1 else run_config.Strategy.DEFAULT


BACKENDS = (
    Backend("tensorflow", "TensorFlow, 1 device", "tensorflow"),
    Backend("jax", "JAX, 1 device", "jax"),
    Backend("jax_2_devices", "JAX, 2 local devices (mirrored)", "jax", local_devices=2),
    Backend("jax_2_processes", "JAX, 2 processes x 1 device", "jax", processes=2),
)


def train_epochs(config: plan.BenchmarkConfig) -> int:
    """Epochs each row trains: one to compile, then --passes timed."""
    return config.passes + 1


def train_argv(config: plan.BenchmarkConfig, records: str, model_dir: str, backend: Backend) -> list[str]:
    """A row's command line: train.py with the venv's python; every row's flags but --strategy are the same."""
    return [sys.executable, TRAIN_SCRIPT, f"--records={records}", f"--model_dir={model_dir}",
            f"--epochs={train_epochs(config)}", f"--steps_per_epoch={config.train_steps}",
            f"--batch_size={config.batch_size}",  # the global batch, on every row
            f"--image_size={config.image_size[0]}", f"--augment_on={run_config.AugmentOn.HOST.value}",
            f"--strategy={backend.strategy.value}", "--nopictures", "--noexport", "--verbose=0"]


def row_variables(backend: Backend, process_id: int, port: int) -> dict[str, str]:
    """The variables (of ROW_VARIABLES) a row's process `process_id` runs with; `port`: the job's, 127.0.0.1."""
    variables = {"KERAS_BACKEND": backend.keras_backend}
    if backend.local_devices > 1:
        variables["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={backend.local_devices}"
    if backend.processes > 1:
        # The coordinator bound to 127.0.0.1 too (JAX binds every interface by default).
        variables.update(KERAS_DISTRIBUTION_JOB_ADDRESSES=f"127.0.0.1:{port}",
                         KERAS_DISTRIBUTION_NUM_PROCESSES=str(backend.processes),
                         KERAS_DISTRIBUTION_PROCESS_ID=str(process_id),
                         JAX_COORDINATOR_BIND_ADDRESS=f"127.0.0.1:{port}")
    return variables


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass(frozen=True)
class ProcessRun:
    """One train.py process of a row: how it ended and what it cost (wait4's figures for it alone)."""

    process_id: int
    variables: dict[str, str]  # row_variables
    exit_status: int  # -N: ended by signal N
    wall_seconds: float  # the row's start to this process's end, to POLL_SECONDS
    cpu_seconds: float  # user + system
    peak_rss_mib: float  # the kernel's ru_maxrss: exact, no sampling
    output: str  # its stdout and stderr


@dataclasses.dataclass(frozen=True)
class BackendRow:
    """A row as measured; `error` says why it failed (the figures it has are kept)."""

    backend: Backend
    argv: tuple[str, ...]
    epoch_rates: tuple[float, ...]  # history.json's images_per_second, epoch by epoch
    epoch_ends: tuple[float, ...]  # seconds from the first process's start to each epoch's history.json entry
    processes: tuple[ProcessRun, ...]
    setup: dict[str, str]  # train.py's own account of the run (its results.json), {} without one
    error: str | None = None

    @property
    def images_per_second(self) -> float | None:
        """The median rate of epochs 2+; None with fewer than 2 epochs."""
        return statistics.median(self.epoch_rates[1:]) if len(self.epoch_rates) > 1 else None

    @property
    def epoch_seconds(self) -> float | None:
        """A steady epoch's wall time, history.json to history.json (training, validation, checkpoint, backup)."""
        ends = self.epoch_ends
        return statistics.median(b - a for a, b in zip(ends, ends[1:])) if len(ends) > 1 else None

    @property
    def first_epoch_seconds(self) -> float | None:
        return self.epoch_ends[0] if self.epoch_ends else None

    @property
    def one_off_seconds(self) -> float | None:
        """The first epoch's end less a steady epoch: what a run pays once (start-up, imports, set-up, compiling)."""
        if self.epoch_seconds is None:
            return None
        return self.epoch_ends[0] - self.epoch_seconds


class _Watch:
    """A row's processes until they end: their ends (wait4), and the epochs as history.json grows."""

    def __init__(self, pids: list[int], history: str, started: float):
        self.pids, self.history, self.started = pids, history, started  # pids: appended to as they start
        self.ended: dict[int, tuple[int, float, Any]] = {}  # process id -> (exit status, wall seconds, rusage)
        self.epoch_ends: list[float] = []
        self._seen: int | None = None  # history.json's mtime_ns when last read
        self.culprit = 0  # the process whose output says why the row failed

    def running(self) -> list[int]:
        return [i for i in range(len(self.pids)) if i not in self.ended]

    def poll(self) -> None:
        """Reaps the processes that ended; notes each new epoch in history.json with the time now."""
        now = time.monotonic() - self.started
        for i in self.running():
            pid, status, usage = os.wait4(self.pids[i], os.WNOHANG)
            if pid:
                self.ended[i] = (os.waitstatus_to_exitcode(status), now, usage)
        try:
            mtime = os.stat(self.history).st_mtime_ns
        except FileNotFoundError:
            return
        if mtime != self._seen:  # written whole (renamed into place): it reads complete
            self._seen = mtime
            epochs = len(callbacks.read_history(self.history))
            self.epoch_ends += [now] * (epochs - len(self.epoch_ends))

    def kill(self) -> None:
        """Kills every process still running (its session: it and anything it started), then reaps it."""
        for i in self.running():
            try:
                os.killpg(self.pids[i], signal.SIGKILL)
            except ProcessLookupError:  # ended since the last poll, not yet reaped
                pass
        while self.running():
            self.poll()
            time.sleep(POLL_SECONDS)

    def wait(self, timeout: float) -> str | None:
        """Until every process ends; None, or why the row failed. One failing process ends the others."""
        try:
            while self.running():
                time.sleep(POLL_SECONDS)
                self.poll()
                failed = sorted(i for i, (status, _, _) in self.ended.items() if status != 0)
                if failed:
                    self.culprit = failed[0]
                    self.kill()  # the others would wait for it in their collectives
                    return f"process {failed[0]} ended with exit status {self.ended[failed[0]][0]}"
                if time.monotonic() - self.started > timeout:
                    self.kill()
                    return f"still running after {timeout:.0f} s: killed"
            self.poll()  # history.json's last write
            return None
        finally:
            self.kill()  # Ctrl-C: no train.py left behind


def _spawn(argv: Sequence[str], environment: Mapping[str, str], log: str) -> int:
    """Starts `argv` in a session of its own, its stdout and stderr into `log`; returns its PID."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)  # not inherited: the dup2s are
    try:
        return os.posix_spawn(argv[0], list(argv), dict(environment), setsid=True, file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, fd, 1), (os.POSIX_SPAWN_DUP2, fd, 2)])
    finally:
        os.close(fd)


def _last_line(text: str) -> str:
    return next((line.strip() for line in reversed(text.splitlines()) if line.strip()), "(no output)")


def run_row(config: plan.BenchmarkConfig, records: str, backend: Backend, scratch: str,
            timeout: float = ROW_TIMEOUT_SECONDS) -> BackendRow:
    """Trains `backend`'s row in `scratch`/<its name> and reads what train.py recorded."""
    model_dir = os.path.join(scratch, backend.name)
    argv = train_argv(config, records, model_dir, backend)
    port = free_port() if backend.processes > 1 else 0
    base = {key: value for key, value in os.environ.items() if key not in ROW_VARIABLES}
    variables = [row_variables(backend, i, port) for i in range(backend.processes)]
    logs = [os.path.join(scratch, f"{backend.name}.{i}.log") for i in range(backend.processes)]
    started, pids = time.monotonic(), []
    watch = _Watch(pids, os.path.join(model_dir, HISTORY_FILE), started)
    try:
        for v, log in zip(variables, logs):
            pids.append(_spawn(argv, {**base, **v}, log))
    except BaseException:
        watch.kill()  # the processes already started
        raise
    error = watch.wait(timeout)
    processes = []
    for i, log in enumerate(logs):
        status, wall, usage = watch.ended[i]
        with open(log, encoding="utf-8", errors="replace") as f:
            output = f.read()
        processes.append(ProcessRun(i, variables[i], status, wall, usage.ru_utime + usage.ru_stime,
                                    usage.ru_maxrss / 1024, output))  # ru_maxrss: KiB on Linux
    if error:
        error = f"{error}: {_last_line(processes[watch.culprit].output)}"
    history = callbacks.read_history(os.path.join(model_dir, HISTORY_FILE))
    if not error and len(history) != train_epochs(config):
        error = f"train.py ended well but history.json holds {len(history)} epoch(s), not {train_epochs(config)}"
    result_path = os.path.join(model_dir, TRAIN_RESULTS_FILE)
    setup = run_dir.TrainResult.from_json(fileio.read_json(result_path)).setup if os.path.exists(result_path) else {}
    return BackendRow(backend, tuple(argv), tuple(float(epoch["images_per_second"]) for epoch in history),
                      tuple(watch.epoch_ends), tuple(processes), setup, error)


@dataclasses.dataclass(frozen=True)
class BackendResults:
    """What `run` measured; `report.backends_to_json` gives its JSON form."""

    config: plan.BenchmarkConfig
    machine: dict[str, Any]
    date: str
    command: str
    records: str
    train_images: int
    rows: tuple[BackendRow, ...]
    cpu_contention: timing.CpuContention
    wall_seconds: float

    def failed(self) -> list[BackendRow]:
        return [row for row in self.rows if row.error]


def _records(config: plan.BenchmarkConfig, scratch: str, log: Callable[[str], None]) -> tuple[str, int]:
    """(the records every row trains on, their train split's images): --records, or --src converted."""
    records = config.records
    if records is None:
        records = os.path.join(scratch, "records")
        log(f"converting {config.src} to {records} (original sizes)")
        conversion.convert_folder(conversion.ConversionConfig(config.src, records))
    manifest = schema.read_manifest(records)
    if TRAIN_SPLIT not in manifest.splits:
        raise BenchmarkError(f"records {records} have no split {TRAIN_SPLIT!r}: train.py trains on it")
    return fileio.absolute(records), manifest.splits[TRAIN_SPLIT].num_examples


def run(config: plan.BenchmarkConfig, command: Sequence[str] | None = None,
        log: Callable[[str], None] = plan.log_to_stderr, backends: Sequence[Backend] = ()) -> BackendResults:
    """Converts --src unless --records is given, then trains each of `backends` (default: BACKENDS) in turn.

    A row that fails is kept with its error; the others still run.

    Raises:
      BenchmarkError, conversion.ConversionError: the run cannot be made as asked.
    """
    if not os.path.exists(TRAIN_SCRIPT):
        raise BenchmarkError(f"--backends runs train.py from a checkout: {TRAIN_SCRIPT} not found")
    started, cpu_start = time.perf_counter(), timing.cpu_snapshot()
    machine = {**plan.machine_info(), "jax": _version("jax")}
    date = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    with tempfile.TemporaryDirectory(prefix="bench-backends-") as scratch:
        records, images = _records(config, scratch, log)
        rows = []
        with guard.hold(records):  # no conversion replaces them between rows
            for backend in backends or BACKENDS:
                log(f"{backend.label}: {backend.processes} x train.py ...")
                rows.append(run_row(config, records, backend, scratch))
                log(f"  {_summary(rows[-1])}")
    return BackendResults(
        config, {**machine, "load_average_at_end": list(os.getloadavg())}, date,
        shlex.join(list(sys.argv if command is None else command)), records, images, tuple(rows),
        timing.cpu_contention(cpu_start), time.perf_counter() - started)


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _summary(row: BackendRow) -> str:
    if row.error:
        return f"failed: {row.error}"
    return (f"{row.images_per_second:,.1f} images/s, first epoch's end at {row.first_epoch_seconds:,.1f} s, "
            f"peak RSS {' + '.join(f'{p.peak_rss_mib:,.0f}' for p in row.processes)} MiB")
