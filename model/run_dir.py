"""What a training run keeps in its model_dir, written so that a kill at any
moment leaves a folder that resumes from its last backup.

    model_dir/
      run.json                      # the settings that define the run
      backup/state.json             # {"epoch": N, "step": S, "weights": ..., "metrics": [...]}
      backup/epoch_000N[_step_00000S].weights.h5
                                    # model and optimizer state after N epochs and S batches
      checkpoints/epoch_00N.keras   # one loadable model per epoch

A backup is taken after every epoch, every --backup_every_steps batches and
when the run is asked to stop. It holds counters, not data: with them the
training dataset restarts at the same batch (`epochs.EpochPosition`), and
the running training metrics of the epoch go on from their saved totals.
Every file is written under a temporary name and renamed into place; the
backup's state.json is the commit point, renamed only once the weights it
names are whole.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import keras
from absl import logging

from pipeline import cli
from pipeline import fileio
from model import backend

RUN_FILENAME = "run.json"
RECORDS_KEY = "records"  # in run.json: a fingerprint of the records' manifest, not their folder (it may move)
STORED_SIZE_KEY = "stored_size"  # in run.json: the records' [height, width], null for originals
BACKEND_KEY = "backend"  # in run.json: the Keras backend that trains the run (backend.name())
# Keys run.json gained after runs were kept without them: an older run.json lacking
# one gains it at its next start. The stored size is a fact of the records, which the
# fingerprint decides already (any value is the same run); runs kept before the
# backend was were TensorFlow's, so a run.json lacking it says "tensorflow".
_ADDED_KEYS = (STORED_SIZE_KEY, BACKEND_KEY)
_IMPLIED = {BACKEND_KEY: backend.TENSORFLOW}
_STATE_FILENAME = "state.json"
_WEIGHTS_SUFFIX = ".weights.h5"


class RunMismatchError(cli.UserError, ValueError):
    """A model_dir holds a run with other settings; the message says which."""


@contextlib.contextmanager
def undistributed() -> Iterator[None]:
    """Keras' saving without the run's keras.distribution (JAX): saving makes a few variables, which
    under it would be laid out over every process, a step process 0 cannot take alone."""
    distribution = keras.distribution.distribution() if backend.name() == backend.JAX else None
    if distribution is None:
        yield
        return
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(distribution)


def save_model(model: keras.Model, path: str) -> str:
    """`model.save(path)`, all or nothing: a temporary file renamed over `path`."""
    folder, name = os.path.split(path)
    stem, extension = os.path.splitext(name)
    tmp = os.path.join(folder, f".{stem}.partial{extension}")  # Keras wants the extension
    with undistributed():
        model.save(tmp)
    fileio.replace(tmp, path)
    return path


def record_settings(model_dir: str, settings: Mapping[str, Any]) -> None:
    """Stores the run's settings, or checks them against the stored ones
    (and adds to an older run.json the `_ADDED_KEYS` it lacks).

    Raises:
      RunMismatchError: `model_dir` holds a run with other settings.
    """
    path = os.path.join(model_dir, RUN_FILENAME)
    settings = fileio.normalize_json(settings)
    if not fileio.exists(path):
        fileio.write_json(path, settings)
        return
    stored = fileio.read_state(
        path, _settings, f"delete it to keep the backup and record this command's settings, or delete {model_dir}"
    )
    gained = {key: _IMPLIED.get(key, settings[key]) for key in _ADDED_KEYS if key in settings and key not in stored}
    stored = {**stored, **gained}
    changed = [
        _change(key, stored.get(key), settings.get(key))
        for key in sorted(set(stored) | set(settings))
        if stored.get(key) != settings.get(key)
    ]
    if changed:
        # Another backend: the same run on the run's own backend is the remedy, before any other.
        other = stored[BACKEND_KEY] if stored.get(BACKEND_KEY) != settings.get(BACKEND_KEY) else None
        raise RunMismatchError(
            f"--model_dir {model_dir} holds a run with other settings ({'; '.join(changed)}): "
            + (f"run with {backend.ENV_VAR}={other} to resume it, " if other else "")
            + f"pass another --model_dir, or delete {model_dir} to start over"
        )
    if gained:
        fileio.write_json(path, stored)


def _change(key: str, old: Any, new: Any) -> str:
    if key == RECORDS_KEY:
        return f"records: another set than the run's (manifest fingerprint {old} -> {new})"
    if key == BACKEND_KEY:
        return (f"Keras backend: trained under {old}, this process runs {new} (their random streams of dropout and "
                "augmentation and their compiled numerics differ: the run would not resume exactly)")
    return f"{key}: {old!r} -> {new!r}"


def _settings(data: Any) -> dict:
    if not isinstance(data, dict):
        raise TypeError(f"a JSON object of settings, not {type(data).__name__}")
    return data


@dataclasses.dataclass(frozen=True)
class BackupState:
    """What a backup holds: the weights after `epoch` epochs and `step` batches of the next.

    Attributes:
      epoch: epochs complete.
      step: batches of epoch `epoch` (0-based) done as well; 0 at an epoch's end.
      weights: the weights file's name in the backup folder.
      metrics: the values of the model's metric variables (`model.metrics_variables`)
        mid-epoch, so that the epoch's training metrics go on from them; () at an epoch's end.
      counters: the values of the model's integer variables (`counters`): the
        random generators' states (dropout's, the device augmentation's),
        which Keras' weights files leave out.
    """

    epoch: int
    step: int
    weights: str
    metrics: tuple = ()
    counters: tuple = ()


def counters(model: keras.Model) -> list:
    """The model's integer non-trainable variables: its random generators' states, and any counter."""
    return [v for v in model.non_trainable_variables if str(v.dtype).startswith(("int", "uint"))]


def _check_state(backup_dir: str) -> Callable[[Any], BackupState]:
    """What state.json must hold: counters past the start and the name of a weights file that is there."""

    def check(data: Any) -> BackupState:
        epoch, step, weights = data["epoch"], data.get("step", 0), data["weights"]
        position = (epoch, step)
        if any(type(n) is not int or n < 0 for n in position) or position == (0, 0):
            raise ValueError(f"it holds epoch {epoch!r} and step {step!r}")
        if not isinstance(weights, str) or "/" in weights:
            raise ValueError(f"it holds weights {weights!r}")
        if not fileio.exists(os.path.join(backup_dir, weights)):
            raise ValueError(f"the weights file it names, {weights}, is not there")
        return BackupState(epoch, step, weights, tuple(data.get("metrics", ())), tuple(data.get("counters", ())))

    return check


def read_backup_state(backup_dir: str) -> BackupState | None:
    """The backup's state, or None when there is none.

    Raises:
      fileio.DamagedFileError: state.json does not read, or names weights
        that are not there.
    """
    path = os.path.join(backup_dir, _STATE_FILENAME)
    if not fileio.exists(path):
        return None
    remedy = f"delete {backup_dir} to train again from the first epoch (the checkpoints stay)"
    return fileio.read_state(path, _check_state(backup_dir), remedy)


def completed_epochs(backup_dir: str) -> int:
    """Epochs whose end the backup holds (0 for none); see `read_backup_state`."""
    state = read_backup_state(backup_dir)
    return state.epoch if state else 0


def restore(model: keras.Model, backup_dir: str) -> BackupState | None:
    """Loads the backup's weights and optimizer state into `model`; its state, or None without one."""
    state = read_backup_state(backup_dir)
    if state is None:
        return None
    with _scope(model):  # variables are made and loaded in it
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        model.load_weights(os.path.join(backup_dir, state.weights))
        for variable, value in zip(counters(model), state.counters, strict=bool(state.counters)):
            variable.assign(value)
    return state


def _scope(model: keras.Model) -> contextlib.AbstractContextManager:
    """The model's tf.distribute scope under TensorFlow; none under JAX (its layouts come with the variables)."""
    return model.distribute_strategy.scope() if backend.name() == backend.TENSORFLOW else contextlib.nullcontext()


class Stopped(Exception):
    """Training stopped when asked (SIGTERM, Ctrl-C), at a batch boundary."""

    def __init__(self, epoch: int, step: int, backed_up: bool):
        self.epoch, self.step, self.backed_up = epoch, step, backed_up
        where = f"epoch {epoch + 1}, after batch {step}" if step else f"the end of epoch {epoch}"
        super().__init__(where)


class Backup(keras.callbacks.Callback):
    """Keras' BackupAndRestore, made safe against a kill in the middle of a write, and mid-epoch.

    Keras' callback overwrites one weights file in place, so a kill while it
    writes leaves a truncated file that every later resume fails on; and it
    resumes a mid-epoch backup from the epoch's first batch. Here each backup's
    weights go to a new file; state.json, replaced atomically, then names it;
    older files are removed only after that.

    Args:
      backup_dir: the backup folder.
      every_steps: also back up after every this many batches of an epoch; None: at epoch ends only.
      stop: when set, the next batch's end backs up (with `mid_epoch`) and raises Stopped.
      resume: the state this fit starts from mid-epoch: its first epoch counts
        batches from `resume.step`, and its metrics add `resume.metrics` (the
        totals and counts of the batches before) to their own.
      mid_epoch: take mid-epoch backups at all (not on tf.data service, which
        resumes at the epoch).
      check: called before every backup; raises to keep the last one (records
        replaced under the run: `guard.HeldRecords.check`).
    """

    def __init__(
        self, backup_dir: str, every_steps: int | None = None, stop: threading.Event | None = None,
        resume: BackupState | None = None, mid_epoch: bool = True, check: Callable[[], None] = lambda: None,
    ):
        super().__init__()
        self.backup_dir = backup_dir
        self.every_steps = every_steps if mid_epoch else None
        self.stop = stop
        self.resume = resume
        self.mid_epoch = mid_epoch
        self.check = check
        self._epoch, self._first_step, self._saved_totals = 0, 0, ()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        resumed = self.resume is not None and epoch == self.resume.epoch and self.resume.step
        self._first_step = self.resume.step if resumed else 0
        self._saved_totals = self.resume.metrics if resumed else ()

    def on_train_batch_end(self, batch, logs=None):
        if self._saved_totals:  # the metrics exist once the first step has run: add the saved totals
            variables = self.model.metrics_variables
            if len(variables) != len(self._saved_totals):
                raise ValueError(f"the backup holds {len(self._saved_totals)} metric values, the model has "
                                 f"{len(variables)}")
            for variable, total in zip(variables, self._saved_totals):
                variable.assign_add(keras.ops.cast(total, variable.dtype))
            self._saved_totals = ()
        step = self._first_step + batch + 1
        last = batch + 1 == self.params.get("steps")
        stopping = self.stop is not None and self.stop.is_set()
        if last:
            if stopping:  # the epoch's end saves it: validation, history and checkpoint come first
                self.model.stop_training = True
            return
        if self.every_steps and step % self.every_steps == 0 and not stopping:
            self._save(self._epoch, step)
        if stopping:
            if self.mid_epoch:
                self._save(self._epoch, step)
            raise Stopped(self._epoch, step, backed_up=self.mid_epoch)

    def on_epoch_end(self, epoch, logs=None):
        self._save(epoch + 1, 0)

    def _save(self, epoch: int, step: int) -> None:
        self.check()
        fileio.makedirs(self.backup_dir)
        name = f"epoch_{epoch:04d}" + (f"_step_{step:06d}" if step else "") + _WEIGHTS_SUFFIX
        with undistributed():
            self.model.save_weights(os.path.join(self.backup_dir, name), overwrite=True)
        state = {"epoch": epoch, "step": step, "weights": name,
                 "counters": [variable.numpy().tolist() for variable in counters(self.model)]}
        if step:
            state["metrics"] = [variable.numpy().tolist() for variable in self.model.metrics_variables]
        fileio.write_json(os.path.join(self.backup_dir, _STATE_FILENAME), state)
        for old in fileio.listdir(self.backup_dir):
            if old.endswith(_WEIGHTS_SUFFIX) and old != name:
                fileio.remove(os.path.join(self.backup_dir, old))
        if step:
            logging.info("backup: the state at epoch %d, batch %d is saved in %s", epoch + 1, step, self.backup_dir)
        else:
            logging.info("backup: the state after epoch %d is saved in %s", epoch, self.backup_dir)


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves `checkpoints/epoch_NNN.keras` after every epoch, each one whole."""

    def __init__(self, folder: str):
        super().__init__()
        self.folder = folder

    def on_epoch_end(self, epoch, logs=None):
        fileio.makedirs(self.folder)
        save_model(self.model, os.path.join(self.folder, f"epoch_{epoch + 1:03d}.keras"))


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What a run did: the contents of results.json.

    Attributes:
      epochs_done: epochs trained in all, over every resume.
      last_epoch: the last epoch's logs (loss, accuracy, val_*, rates), or None.
      files: "model" (and "model_h5") -> the path written.
      setup: what the run used, as logged at start (`describe_setup`).
      test: the test split's metrics (loss, accuracy), None without a test split;
        the whole report is in `model_dir/eval_test/` (model.evaluation).
      records: the records folder trained on, absolute (evaluate.py's default).
      already_complete: the model_dir held a finished run of `epochs` or more,
        so nothing was trained (not kept in results.json).
    """

    epochs_done: int
    last_epoch: dict[str, float] | None
    files: dict[str, str]
    setup: dict[str, str]
    test: dict[str, float] | None = None
    already_complete: bool = False
    records: str = ""

    def to_json(self) -> dict:
        data = {name: getattr(self, name) for name in ("epochs_done", "last_epoch", "files", "setup", "records")}
        return data if self.test is None else {**data, "test": self.test}

    @classmethod
    def from_json(cls, data: dict, already_complete: bool = False) -> "TrainResult":
        return cls(
            int(data["epochs_done"]), data["last_epoch"], dict(data["files"]), dict(data["setup"]),
            data.get("test"), already_complete, str(data.get("records", "")),
        )
