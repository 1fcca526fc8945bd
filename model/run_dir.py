"""What a training run keeps in its model_dir, written so that a kill at any
moment leaves a folder that resumes from the last complete epoch.

    model_dir/
      run.json                      # the settings that define the run
      backup/state.json             # {"epoch": N, "weights": "epoch_000N.weights.h5"}
      backup/epoch_000N.weights.h5  # model and optimizer state after epoch N
      checkpoints/epoch_00N.keras   # one loadable model per epoch

Every file is written under a temporary name and renamed into place; the
backup's state.json is the commit point, renamed only once the weights it
names are whole.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import keras
import tensorflow as tf
from absl import logging

from pipeline import fileio

RUN_FILENAME = "run.json"
_STATE_FILENAME = "state.json"
_WEIGHTS_SUFFIX = ".weights.h5"


class RunMismatchError(ValueError):
    """A model_dir holds a run with other settings; the message says which."""


def save_model(model: keras.Model, path: str) -> str:
    """`model.save(path)`, all or nothing: a temporary file renamed over `path`."""
    folder, name = os.path.split(path)
    stem, extension = os.path.splitext(name)
    tmp = os.path.join(folder, f".{stem}.partial{extension}")  # Keras wants the extension
    model.save(tmp)
    tf.io.gfile.rename(tmp, path, overwrite=True)
    return path


def record_settings(model_dir: str, settings: Mapping[str, Any]) -> None:
    """Stores the run's settings, or checks them against the stored ones.

    Raises:
      RunMismatchError: `model_dir` holds a run with other settings.
    """
    path = os.path.join(model_dir, RUN_FILENAME)
    settings = fileio.normalize_json(settings)
    if not tf.io.gfile.exists(path):
        fileio.write_json(path, settings)
        return
    stored = fileio.read_state(
        path, _settings, f"delete it to keep the backup and record this command's settings, or delete {model_dir}"
    )
    changed = [
        f"{key}: {stored.get(key)!r} -> {settings.get(key)!r}"
        for key in sorted(set(stored) | set(settings))
        if stored.get(key) != settings.get(key)
    ]
    if changed:
        raise RunMismatchError(
            f"--model_dir {model_dir} holds a run with other settings ({'; '.join(changed)}): "
            f"pass another --model_dir, or delete {model_dir} to start over"
        )


def _settings(data: Any) -> dict:
    if not isinstance(data, dict):
        raise TypeError(f"a JSON object of settings, not {type(data).__name__}")
    return data


def _check_state(backup_dir: str) -> Callable[[Any], tuple[int, str]]:
    """What state.json must hold: a positive epoch and the name of a weights file that is there."""

    def check(data: Any) -> tuple[int, str]:
        epoch, weights = data["epoch"], data["weights"]
        if type(epoch) is not int or epoch < 1 or not isinstance(weights, str) or "/" in weights:
            raise ValueError(f"it holds epoch {epoch!r} and weights {weights!r}")
        if not tf.io.gfile.exists(os.path.join(backup_dir, weights)):
            raise ValueError(f"the weights file it names, {weights}, is not there")
        return epoch, weights

    return check


def read_backup_state(backup_dir: str) -> tuple[int, str] | None:
    """(epochs done, weights file name) of the backup, or None when there is none.

    Raises:
      fileio.DamagedFileError: state.json does not read, or names weights
        that are not there.
    """
    path = os.path.join(backup_dir, _STATE_FILENAME)
    if not tf.io.gfile.exists(path):
        return None
    remedy = f"delete {backup_dir} to train again from the first epoch (the checkpoints stay)"
    return fileio.read_state(path, _check_state(backup_dir), remedy)


def completed_epochs(backup_dir: str) -> int:
    """Epochs whose state the backup holds (0 for none); see `read_backup_state`."""
    state = read_backup_state(backup_dir)
    return state[0] if state else 0


class Backup(keras.callbacks.Callback):
    """Keras' BackupAndRestore, made safe against a kill in the middle of a write.

    Keras' callback overwrites one weights file in place, so a kill while it
    writes leaves a truncated file that every later resume fails on. Here each
    epoch's weights go to a new file; state.json, replaced atomically, then
    names it; older files are removed only after that.
    """

    def __init__(self, backup_dir: str):
        super().__init__()
        self.backup_dir = backup_dir

    def on_train_begin(self, logs=None):
        state = read_backup_state(self.backup_dir)
        if state is None:
            return
        epoch, weights = state
        with self.model.distribute_strategy.scope():  # variables are made and loaded in it
            if self.model.optimizer is not None and not self.model.optimizer.built:
                self.model.optimizer.build(self.model.trainable_variables)
            self.model.load_weights(os.path.join(self.backup_dir, weights))
        self.model._initial_epoch = epoch  # as Keras' BackupAndRestore does

    def on_epoch_end(self, epoch, logs=None):
        tf.io.gfile.makedirs(self.backup_dir)
        name = f"epoch_{epoch + 1:04d}{_WEIGHTS_SUFFIX}"
        self.model.save_weights(os.path.join(self.backup_dir, name), overwrite=True)
        fileio.write_json(os.path.join(self.backup_dir, _STATE_FILENAME), {"epoch": epoch + 1, "weights": name})
        for old in tf.io.gfile.listdir(self.backup_dir):
            if old.endswith(_WEIGHTS_SUFFIX) and old != name:
                tf.io.gfile.remove(os.path.join(self.backup_dir, old))
        logging.info("backup: the state after epoch %d is saved in %s", epoch + 1, self.backup_dir)


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves `checkpoints/epoch_NNN.keras` after every epoch, each one whole."""

    def __init__(self, folder: str):
        super().__init__()
        self.folder = folder

    def on_epoch_end(self, epoch, logs=None):
        tf.io.gfile.makedirs(self.folder)
        save_model(self.model, os.path.join(self.folder, f"epoch_{epoch + 1:03d}.keras"))
