"""A training input's epochs: which epoch each pass makes, and how a trainer takes them.

Shard order, record order and augmentation come from `epoch_seeds(seed,
epoch)`, never from a count of the passes a process made: a run resumed in
another process, mid-epoch, sees the batches an uninterrupted one would have.
`TrainPasses` states each epoch's length, so the trainer need not know it.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf


class EpochPosition:
    """The epoch a training dataset's next pass makes, and how many of its batches to leave out.

    Two int64 variables, read as each pass begins. Its owner moves them (a
    Keras callback before each epoch; a resumed run starts them where the
    first one stopped), or, with `advance`, each pass moves them on to the next
    epoch's start: a dataset nobody moves makes a new epoch every pass.
    Make it outside any tf.distribute scope (its variables live on the host).
    """

    def __init__(self, epoch: int = 0, skip_batches: int = 0, advance: bool = False):
        with tf.device("/cpu:0"):
            self.epoch = tf.Variable(epoch, dtype=tf.int64, trainable=False, name="epoch")
            self.skip_batches = tf.Variable(skip_batches, dtype=tf.int64, trainable=False, name="skip_batches")
        self.advance = advance

    def move_to(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch.assign(epoch)
        self.skip_batches.assign(skip_batches)

    def next_pass(self) -> tuple[tf.Tensor, tf.Tensor]:
        """(epoch, batches to leave out) of the pass that begins, int64 scalars; with `advance`, moves on."""
        epoch, skip = self.epoch.read_value(), self.skip_batches.read_value()
        if not self.advance:
            return epoch, skip
        with tf.control_dependencies([epoch, skip]):
            moved = [self.epoch.assign_add(1, read_value=False), self.skip_batches.assign(0, read_value=False)]
        with tf.control_dependencies(moved):
            return tf.identity(epoch), tf.identity(skip)


def epoch_seeds(seed: int, epoch: tf.Tensor | int) -> tf.Tensor:
    """int64 [3] seeds of an epoch's shard order, record order and augmentation, from (seed, epoch) alone."""
    pair = tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64)])
    return tf.random.stateless_uniform([3], seed=pair, minval=None, maxval=None, dtype=tf.int64)


@dataclasses.dataclass(frozen=True)
class TrainPasses:
    """A training input as a trainer takes it: epochs of a stated length.

    Attributes:
      epochs: one epoch a pass, of `steps_per_epoch` batches (the dataset's
        stated length); with `endless`, epochs back to back in one pass.
      rest_of_epoch: the same passes, stated shorter by the batches the
        position left out when they were built: for the first pass of a run
        resumed mid-epoch; None when it began at an epoch's start.
      steps_per_epoch: batches an epoch.
      endless: the length is not stated (tf.data service: the workers' epochs
        come back to back): count `steps_per_epoch` batches an epoch.
    """

    epochs: tf.data.Dataset
    rest_of_epoch: tf.data.Dataset | None
    steps_per_epoch: int
    endless: bool = False
