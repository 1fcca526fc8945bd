"""Trains the notebook's CNN on records written by convert.py.

    python train.py --records=records/                      # the notebook's defaults
    python train.py --records=records/ --epochs=5 --model_dir=runs/quick
    python train.py --records=records/ --augment_on=device --mixed_precision --jit_compile  # GPU

Run it again with the same --model_dir to resume an interrupted run (or to
continue a finished one to a larger --epochs). Each flag is a field of
`model.training.TrainConfig`, of the same name and default.
"""

from __future__ import annotations

import dataclasses
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import tensorflow as tf  # noqa: E402

from model import training  # noqa: E402
from pipeline import cli  # noqa: E402
from pipeline import verify  # noqa: E402

_DEFAULTS = training.TrainConfig()
_BOUNDS = training.LOWER_BOUNDS
flags.DEFINE_string("records", _DEFAULTS.records, "Records folder written by convert.py.")
flags.DEFINE_string("model_dir", _DEFAULTS.model_dir, "Output folder; rerun with it to resume.")
flags.DEFINE_integer("epochs", _DEFAULTS.epochs, lower_bound=_BOUNDS["epochs"], help="Epochs.")
flags.DEFINE_integer(
    "batch_size", _DEFAULTS.batch_size, lower_bound=_BOUNDS["batch_size"],
    help="Images per batch.",
)
flags.DEFINE_integer(
    "steps_per_epoch", _DEFAULTS.steps_per_epoch, lower_bound=_BOUNDS["steps_per_epoch"],
    help="Default: one pass over the train split.",
)
flags.DEFINE_integer(
    "validation_steps", _DEFAULTS.validation_steps, lower_bound=_BOUNDS["validation_steps"],
    help="Default: the whole validation split.",
)
flags.DEFINE_float("learning_rate", _DEFAULTS.learning_rate, "Adam learning rate (positive).")
flags.register_validator("learning_rate", lambda rate: rate > 0, "--learning_rate must be positive")
flags.DEFINE_boolean("augment", _DEFAULTS.augment, "The notebook's augmentation (flips, rotation, zoom, shift).")
flags.DEFINE_enum_class(
    "augment_on", _DEFAULTS.augment_on, training.AugmentOn,
    "host: in tf.data on the CPU; device: as the model's first layer, on the GPU; "
    "auto: device when a GPU is found, else host.",
    case_sensitive=False,
)
flags.DEFINE_enum_class(
    "strategy", _DEFAULTS.strategy, training.Strategy,
    "default: one device; mirrored: every local GPU, one replica each (--batch_size is the global batch).",
    case_sensitive=False,
)
flags.DEFINE_integer(
    "image_size", _DEFAULTS.image_size, lower_bound=_BOUNDS["image_size"],
    help="Square input size.",
)
flags.DEFINE_boolean("cache", _DEFAULTS.cache, "Keep decoded images in memory after the first epoch.")
flags.DEFINE_boolean("mixed_precision", _DEFAULTS.mixed_precision, "float16 compute on GPU (bfloat16 on CPU).")
flags.DEFINE_boolean("jit_compile", _DEFAULTS.jit_compile, "Compile the train step with XLA.")
flags.DEFINE_boolean("save_h5", _DEFAULTS.save_h5, "Also save model.h5, as the notebook did.")
flags.DEFINE_string(
    "data_service", _DEFAULTS.data_service,
    "grpc://HOST:PORT of a tf.data service dispatcher whose workers prepare the training batches "
    "(start them with data_service.py). Default: prepare them in this process.",
)
cli.define_int_pair(
    "profile_batches", _DEFAULTS.profile_batches,
    "Write a TensorBoard profiler trace of training batches A to B (e.g. 10,20) to <model_dir>/logs.",
)
flags.register_validator(
    "profile_batches", lambda pair: pair is None or 1 <= pair[0] <= pair[1], "needs 1 <= A <= B"
)
flags.DEFINE_integer("seed", _DEFAULTS.seed, "Seed of weights, shuffles and augmentation.")
flags.DEFINE_integer(
    "verbose", _DEFAULTS.verbose, lower_bound=0, upper_bound=2,
    help="Keras progress output: 0 silent, 1 bar, 2 a line per epoch.",
)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    config = training.TrainConfig(
        **{field.name: flags.FLAGS[field.name].value for field in dataclasses.fields(training.TrainConfig)}
    )
    try:
        results = training.train_and_evaluate(config)
    except (FileNotFoundError, ValueError) as e:
        cli.fail("train.py", e)
    except tf.errors.DataLossError:  # its message names no file: find the damaged shard
        cli.fail("train.py", f"damaged records: {verify.find_damage(config.records).summary()}")
    except tf.errors.InvalidArgumentError as e:  # a failed check of the reader names its shard
        cli.fail("train.py", verify.error_text(e))
    logging.info("done: %s", results)
    if results.get("already_complete"):
        print(
            f"{config.model_dir} already holds a finished run of {results['epochs_done']} epochs: "
            f"nothing to train (pass --epochs above {results['epochs_done']} to continue it)"
        )
    else:
        print(f"Saved the model and plots to {config.model_dir}")
    if "test" in results:
        print("Test: " + ", ".join(f"{k} {v:.4f}" for k, v in results["test"].items()))


def run() -> None:
    """The `tfr-train` console entry point."""
    cli.run(main, "train.py")


if __name__ == "__main__":
    run()
