"""train.py: trains the notebook's CNN on records written by convert.py.

    python train.py --records=records/                      # the notebook's defaults
    python train.py --records=records/ --epochs=5 --model_dir=runs/quick
    python train.py --records=records/ --augment_on=device --mixed_precision --jit_compile  # GPU
    KERAS_BACKEND=jax python train.py --records=records/    # the model on JAX (model/backend.py)

Run it again with the same --model_dir to resume an interrupted run (or to
continue a finished one to a larger --epochs). Each flag is a field of
`model.run_config.TrainConfig`, of the same name, default and help.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Iterator

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow's first import

from model import backend  # noqa: E402

backend.refuse_before_import()  # KERAS_BACKEND=torch: one line here, not Keras's ImportError below

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from tqdm import tqdm  # noqa: E402

from pipeline import cli  # noqa: E402
from pipeline import fileio  # noqa: E402
from pipeline import schema  # noqa: E402
from pipeline import verify  # noqa: E402
from pipeline.reader import dataset  # noqa: E402
from pipeline.reader import guard  # noqa: E402
from model import distribution  # noqa: E402
from model import evaluation  # noqa: E402
from model import inference  # noqa: E402
from model import run_config  # noqa: E402
from model import run_dir  # noqa: E402
from model import supervise  # noqa: E402
from model import training  # noqa: E402

@contextlib.contextmanager
def _stop_on_signals() -> Iterator[tuple[threading.Event, list[int]]]:
    """SIGTERM or a first Ctrl-C asks the run to stop at the next batch; a second Ctrl-C ends it at once.

    Yields (the event they set, the signals received). Outside the main
    thread (where Python takes no handlers) nothing is changed.
    """
    stop, received = threading.Event(), []
    if threading.current_thread() is not threading.main_thread():
        yield stop, received
        return

    def ask_to_stop(signum, frame):
        if signum == signal.SIGINT and stop.is_set():
            raise KeyboardInterrupt
        received.append(signum)
        stop.set()
        print(f"train.py: {signal.Signals(signum).name}: stopping at the next batch", file=sys.stderr, flush=True)

    kept = {signum: signal.signal(signum, ask_to_stop) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop, received
    finally:
        for signum, handler in kept.items():
            signal.signal(signum, handler)


# A run waiting on the service ends this long after SIGTERM or Ctrl-C if no batch came.
STOP_GRACE_S = 3
# Exit status of a run whose service input stalled: EX_TEMPFAIL, "try again later".
INPUT_STALLED_STATUS = 75


class _InputWatchdog(keras.callbacks.Callback):
    """Ends a run on tf.data service whose batches stop coming: a lost worker or dispatcher.

    A wait on the service is one C++ call (IteratorGetNext) that never returns
    to the interpreter, so Python's signal handlers do not run in it. The C
    handler still writes each signal's number to the wakeup fd: this thread
    reads it there. Backups are written atomically, so ending the process with
    os._exit keeps the last one usable.
    """

    def __init__(self, config: run_config.TrainConfig):
        super().__init__()
        self.config, self.last, self.armed = config, time.monotonic(), False
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        self._done = threading.Event()

    def _beat(self, *args, **kwargs) -> None:
        self.last = time.monotonic()

    on_train_batch_begin = on_train_batch_end = on_test_batch_end = on_epoch_begin = on_epoch_end = _beat

    def on_train_begin(self, logs=None):
        self.last, self.armed = time.monotonic(), True

    def on_train_end(self, logs=None):
        self.armed = False

    def _end(self, line: str, status: int) -> None:
        print(f"train.py: {line}", file=sys.stderr, flush=True)
        os._exit(status)

    def _watch(self) -> None:
        signalled = None  # (signal number, when) of the first SIGTERM or Ctrl-C
        while not self._done.is_set():
            ready, _, _ = select.select([self._read], [], [], 0.5)
            if ready and (byte := os.read(self._read, 1)) and signalled is None:
                signalled = (byte[0], time.monotonic())
            now = time.monotonic()
            if not self.armed or self._done.is_set():
                continue
            if signalled and now - max(signalled[1], self.last) > STOP_GRACE_S:  # no batch since it
                self._end(f"stopped by {signal.Signals(signalled[0]).name} while waiting for the tf.data service "
                          "input: the last complete epoch is backed up; run the same command to resume",
                          128 + signalled[0])
            if now - self.last > self.config.input_timeout:
                self._end(f"error: no training batch from the tf.data service at {self.config.data_service} for "
                          f"{self.config.input_timeout} s (--input_timeout): a worker or the dispatcher is lost; "
                          "restart it, then run the same command to resume at the last complete epoch",
                          INPUT_STALLED_STATUS)

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        """Runs the watch thread; in the main thread, signals also reach it through the wakeup fd."""
        main = threading.current_thread() is threading.main_thread()
        kept = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False) if main else None
        thread = threading.Thread(target=self._watch, name="input-watchdog", daemon=True)
        thread.start()
        try:
            yield
        finally:
            self._done.set()
            thread.join()
            if main:
                signal.set_wakeup_fd(kept)
            os.close(self._read)
            os.close(self._write)


def _stopped(config: run_config.TrainConfig, stopped: run_dir.Stopped, signum: int) -> int:
    """The one line a stopped run prints, and its exit status: 128 + the signal's number, as a shell shows it."""
    kept = (
        f"its state is backed up in {config.path('backup')}" if stopped.backed_up
        else "the last complete epoch is backed up (a run on tf.data service resumes at the epoch)"
    )
    print(f"train.py: stopped by {signal.Signals(signum).name} at {stopped}: {kept}; "
          "run the same command to resume", file=sys.stderr)
    return 128 + signum


_BACKUP_KEPT = "; the last backup is kept: run the same command to resume once the records are whole"


def _train(config: run_config.TrainConfig) -> int | None:
    processes = distribution.Processes.from_env()
    distribution.check(processes)
    if processes.several and not supervise.is_child():  # JAX ends a lost process's peers from C++
        return supervise.run_child(cli.command_line(TRAIN)[2:], processes, config.model_dir, TRAIN.prog)
    if processes.several:
        supervise.end_with_parent()
    backend.prepare()
    try:
        watchdog = _InputWatchdog(config) if config.data_service else None
        with _stop_on_signals() as (stop, received), watchdog.watching() if watchdog else contextlib.nullcontext():
            try:
                with supervise.peers_end_the_run() if processes.several else contextlib.nullcontext():
                    result = training.train_and_evaluate(config, stop, (watchdog,) if watchdog else ())
            except run_dir.Stopped as stopped:
                return _stopped(config, stopped, received[0])
    except tf.errors.DataLossError:  # its message names no file: find the damaged shard
        cli.fail(f"damaged records: {verify.find_damage(config.records).summary()}{_BACKUP_KEPT}")
    except tf.errors.InvalidArgumentError as e:  # a failed check of the reader names its shard
        cli.fail(cli.error_text(e) + _BACKUP_KEPT)
    except tf.errors.NotFoundError:  # a shard gone mid-run: TensorFlow's message is the whole graph's
        try:
            schema.check_shard_files(config.records, schema.read_manifest(config.records))
        except FileNotFoundError as gone:
            cli.fail(f"{gone}{_BACKUP_KEPT}")
        raise  # every shard is there: not the records
    except (OSError, tf.errors.ResourceExhaustedError) as e:
        if not fileio.is_disk_full(e):
            raise
        cli.fail(
            f"{fileio.disk_full_message(config.model_dir)}: the last complete backup is kept; "
            "free some space and run the same command again to resume"
        )
    if result.already_complete:
        print(
            f"{config.model_dir} already holds a finished run of {result.epochs_done} epochs: "
            f"nothing to train (pass --epochs above {result.epochs_done} to continue it)"
        )
    elif not processes.writer:
        print(f"Process {processes.index} of {processes.count} trained its share: process 0 saved the model "
              f"to {config.model_dir}")
    else:
        saved = (("its export", config.export), ("pictures", config.pictures))
        also = " and ".join(name for name, wanted in saved if wanted)
        print(f"Saved the model{' with ' + also if also else ''} to {config.model_dir}")
    if result.test is not None:
        print("Test: " + ", ".join(f"{k} {v:.4f}" for k, v in result.test.items()))


TRAIN = cli.Command("train.py", __doc__, run_config.TrainConfig, _train)


# --------------------------------------------------------------------------
# After training: evaluate.py, predict.py, export.py, each on a model_dir.

EVALUATE_DOC = """evaluate.py: where a trained model goes wrong, on one split of its records.

    python evaluate.py --model_dir=runs/cats_vs_dogs                  # its records' test split
    python evaluate.py --model_dir=runs/cats_vs_dogs --split=validation --records=other_records/

Prints a per-class table; writes metrics.json, predictions.csv,
confusion_matrix.png and mistakes.png into --out (default MODEL_DIR/eval_SPLIT).
"""
_MODEL_DIR_HELP = "A folder written by train.py (its --model_dir)."


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """evaluate.py's flags, a field each."""

    model_dir: str = cli.setting(help=_MODEL_DIR_HELP)
    records: str | None = cli.setting(None, help="Records folder; default: the run's own.")
    split: str = cli.setting("test", help="The split to evaluate.")
    out: str | None = cli.setting(None, help="Report folder; default: MODEL_DIR/eval_SPLIT.")
    batch_size: int = cli.setting(dataset.DEFAULT_BATCH_SIZE, help="Images per batch.", at_least=1)

    def __post_init__(self):
        cli.check_settings(self)


def _evaluate(config: EvaluateConfig) -> None:
    backend.prepare()
    run = inference.open_run(config.model_dir)
    records = config.records or run.records
    if not records:
        cli.fail(f"{run.model_dir}/results.json names no records folder: pass --records")
    with guard.reading(records) as held:
        manifest = held.manifest
        manifest.split(config.split, records)
        if manifest.class_names != run.class_names:
            cli.fail(f"{records} holds the classes {', '.join(manifest.class_names)}, "
                     f"the model {', '.join(run.class_names)}: pass the records it was trained on")
        inputs = dataset.InputConfig(image_size=run.image_size, batch_size=config.batch_size)
        report = evaluation.evaluate_split(run.load_model(), records, config.split, inputs, run.class_names,
                                            held.manifest)
        held.check("no report was written: run evaluate.py again")
    out = config.out or os.path.join(run.model_dir, f"eval_{config.split}")
    evaluation.write_report(report, out, config.split)
    print(evaluation.per_class_table(report))
    print(f"Wrote metrics.json, predictions.csv, confusion_matrix.png and mistakes.png to {out}")


EVALUATE = cli.Command("evaluate.py", EVALUATE_DOC, EvaluateConfig, _evaluate)

PREDICT_DOC = """predict.py: classifies photos with a trained model, as it was trained to read them.

    python predict.py --model_dir=runs/cats_vs_dogs new_photos/ one.jpg gs://bucket/more/
    python predict.py --model_dir=runs/cats_vs_dogs --output=out.csv --strict photos/

PATH: image files, folders (searched recursively; hidden files and folders,
names starting with ".", are passed over and counted) or URLs tf.io.gfile
reads. The class names, the image size and the records' stored size come
from the run: a photo is read as its record was. Writes a CSV: path,
predicted, confidence, p_<class> per class, error. A file that does not
decode gets a row with its error; exit 1 if no file could be predicted, or
with --strict if any could not.
"""


@dataclasses.dataclass(frozen=True)
class PredictConfig:
    """predict.py's flags, a field each (its paths follow them)."""

    model_dir: str = cli.setting(help=_MODEL_DIR_HELP)
    output: str = cli.setting("predictions.csv", help="The CSV to write.")
    batch_size: int = cli.setting(dataset.DEFAULT_BATCH_SIZE, help="Images per batch.", at_least=1)
    strict: bool = cli.setting(False, help="Exit 1 if any file could not be read or decoded.")

    def __post_init__(self):
        cli.check_settings(self)


# Above this many files a progress bar is drawn.
_PROGRESS_FROM = 200


def _predict(config: PredictConfig, paths: list[str]) -> int:
    backend.prepare()
    run = inference.open_run(config.model_dir)
    if not paths:
        cli.fail("no PATH given: name image files, folders or URLs after the flags")
    if fileio.isdir(config.output):
        cli.fail(f"--output={config.output} is a folder: name the CSV file to write")
    hidden: list[str] = []
    files = inference.image_files(paths, on_hidden=hidden.append)
    passed_over = (f"{len(hidden)} hidden {'entry' if len(hidden) == 1 else 'entries'} (names starting "
                   "with '.') passed over: name a hidden file to predict it") if hidden else ""
    if not files:
        cli.fail(f"no image files ({', '.join(inference.IMAGE_SUFFIXES)}) under {' '.join(paths)}"
                 + (f"; {passed_over}" if hidden else ""))
    model = run.load_model()
    with tqdm(total=len(files), unit="img", desc="predicting", disable=len(files) < _PROGRESS_FROM) as bar:
        predictions = inference.predict_files(run, model, files, config.batch_size,
                                              progress=lambda done: bar.update(done - bar.n))
    text = io.StringIO()
    csv.writer(text).writerows(inference.predictions_table(run, predictions))
    fileio.write_text(config.output, text.getvalue())
    failed = [p for p in predictions if p.error]
    print(f"Predicted {len(predictions) - len(failed)} of {len(predictions)} files into {config.output}"
          + (f"; {len(failed)} could not be read or decoded (the error column says why)" if failed else "")
          + (f"; {passed_over}" if hidden else ""))
    # Nothing predicted at all is a failure even without --strict: no caller wants an empty result.
    return 1 if failed and (config.strict or len(failed) == len(predictions)) else 0


PREDICT = cli.Command("predict.py", PREDICT_DOC, PredictConfig, _predict, positional=True)

EXPORT_DOC = """export.py: writes MODEL_DIR/export, a SavedModel that takes encoded images.

    python export.py --model_dir=runs/cats_vs_dogs

train.py writes it at the end of every run; this is for older runs. Its
serving_default signature takes image_bytes (tf.string [None]) and returns
probabilities (float32 [None, classes]) and classes (tf.string [None]).
"""


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """export.py's flags, a field each."""

    model_dir: str = cli.setting(help=_MODEL_DIR_HELP)
    out: str | None = cli.setting(
        None, help="The SavedModel folder, new or an earlier export (replaced); default: MODEL_DIR/export.")

    def __post_init__(self):
        cli.check_settings(self)


def _export(config: ExportConfig) -> None:
    backend.prepare()
    run = inference.open_run(config.model_dir)
    path = inference.export_model(run, run.load_model(), config.out)
    print(f"Wrote the SavedModel to {path} (signature serving_default: image_bytes -> probabilities, classes)")


EXPORT = cli.Command("export.py", EXPORT_DOC, ExportConfig, _export)
