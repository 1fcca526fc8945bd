"""Per-epoch callbacks of a training run: throughput, what limits it, history."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf
from absl import logging

from pipeline import fileio
from pipeline import plots
from pipeline.reader import epochs

# Training that reaches this share of the input pipeline's own rate is
# waiting for input: the accelerator could go faster with a faster input.
INPUT_BOUND_SHARE = 0.8
_PROBE_BATCHES = 10


def probe_input_rate(data: tf.data.Dataset, batches: int = _PROBE_BATCHES) -> float | None:
    """Images/s the input pipeline delivers alone: up to `batches` after a warm-up
    one; None if a pass holds no batch after the warm-up.

    Args:
      data: batched (images, labels); images [B, ...].
      batches: timed batches.
    """
    iterator = iter(data)
    next(iterator, None)  # iterator start-up and shuffle-buffer fill: not the steady rate
    start, images = time.perf_counter(), 0
    for _ in range(batches):
        try:
            images += int(next(iterator)[0].shape[0])
        except StopIteration:
            break
    return images / max(time.perf_counter() - start, 1e-9) if images else None


class FollowEpochs(keras.callbacks.Callback):
    """Moves the training dataset's EpochPosition to each epoch as it begins; the
    epoch a run resumes in starts at the batch its backup holds."""

    def __init__(self, position: epochs.EpochPosition, resume_epoch: int = 0, resume_step: int = 0):
        super().__init__()
        self.position, self.resume_epoch, self.resume_step = position, resume_epoch, resume_step

    def on_epoch_begin(self, epoch, logs=None):
        self.position.move_to(epoch, self.resume_step if epoch == self.resume_epoch else 0)


class EpochThroughput(keras.callbacks.Callback):
    """Adds to each epoch's logs its training rate and, with `input_data`, what limits it.

    Logs `images_per_second` (training batches only); with `input_data` of
    two batches or more, also `input_images_per_second` (a short probe of the
    same pipeline, run alone after the epoch) and `input_bound`: 1.0 when training reached
    INPUT_BOUND_SHARE of the input's own rate, else 0.0 (logs stay numbers:
    TensorBoard plots every one).
    """

    def __init__(self, batch_size: int, input_data: tf.data.Dataset | None = None):
        super().__init__()
        self.batch_size = batch_size
        self.input_data = input_data

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._last = self._start
        self._batches = 0

    def on_train_batch_end(self, batch, logs=None):
        self._batches += 1
        self._last = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        rate = self._batches * self.batch_size / max(self._last - self._start, 1e-9)
        logs["images_per_second"] = rate
        if self.input_data is None:
            logging.info("epoch %d: %.0f training images/s", epoch + 1, rate)
            return
        input_rate = probe_input_rate(self.input_data)
        if input_rate is None:
            logging.info("epoch %d: %.0f training images/s (too few batches to time the input alone)", epoch + 1, rate)
            return
        input_bound = rate >= INPUT_BOUND_SHARE * input_rate
        logs["input_images_per_second"] = input_rate
        logs["input_bound"] = float(input_bound)
        logging.info(
            "epoch %d: %.0f training images/s; the input alone delivers %.0f images/s: %s-bound",
            epoch + 1, rate, input_rate, limited_by(input_bound),
        )


def limited_by(input_bound: float) -> str:
    """The verdict in words: "input" or "compute"."""
    return "input" if input_bound else "compute"


def read_history(path: str) -> list[dict]:
    """The epochs recorded in history.json, or [] when there is none.

    Raises:
      fileio.DamagedFileError: it does not read as a list of epochs.
    """
    if not fileio.exists(path):
        return []
    remedy = "delete it to go on training (the curves then start from the next epoch)"
    return fileio.read_state(path, _epochs, remedy)


def _epochs(data: Any) -> list[dict]:
    if not isinstance(data, list) or not all(isinstance(entry, dict) and "epoch" in entry for entry in data):
        raise TypeError("a JSON list of epochs, each with its \"epoch\"")
    return data


class HistoryFile(keras.callbacks.Callback):
    """Keeps history.json and the curves PNG (if it has a path) current after every epoch.

    Entries are keyed by epoch, so a resumed run replaces the epochs it
    repeats and keeps the ones before. An epoch with `input_bound` also gets
    `limited_by`, the verdict in words.
    """

    def __init__(self, history_path: str, plot_path: str | None):
        super().__init__()
        self.history_path = history_path
        self.plot_path = plot_path
        self.entries = {entry["epoch"]: entry for entry in read_history(history_path)}

    def on_epoch_end(self, epoch, logs=None):
        values = {k: float(v) for k, v in (logs or {}).items()}
        if "input_bound" in values:
            values["limited_by"] = limited_by(values["input_bound"])
        self.entries[epoch] = {"epoch": epoch, **values}
        history = [self.entries[e] for e in sorted(self.entries) if e <= epoch]
        fileio.write_json(self.history_path, history)
        if self.plot_path:
            plots.plot_history(history, self.plot_path)


class RecordsUnchanged(keras.callbacks.Callback):
    """Stops the run at an epoch's start or end if its records were replaced meanwhile.

    First in the list, so an epoch that read other records leaves no history,
    checkpoint or backup. `check` raises (`guard.HeldRecords.check`).
    """

    def __init__(self, check: Callable[[], None]):
        super().__init__()
        self.check = check

    def on_epoch_begin(self, epoch, logs=None):
        self.check()

    def on_epoch_end(self, epoch, logs=None):
        self.check()
