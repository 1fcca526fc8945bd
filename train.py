"""Trains the notebook's CNN on records written by convert.py.

    python train.py --records=records/                      # the notebook's defaults
    python train.py --records=records/ --epochs=5 --model_dir=runs/quick
    python train.py --records=records/ --augment_on=device --mixed_precision --jit_compile  # GPU

Run it again with the same --model_dir to resume an interrupted run (or to
continue a finished one to a larger --epochs).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from model import training  # noqa: E402

_RECORDS = flags.DEFINE_string("records", None, "Records folder written by convert.py.")
_MODEL_DIR = flags.DEFINE_string("model_dir", "runs/cnn", "Output folder; rerun with it to resume.")
_EPOCHS = flags.DEFINE_integer("epochs", 50, "Epochs.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 20, "Images per batch.")
_STEPS_PER_EPOCH = flags.DEFINE_integer("steps_per_epoch", None, "Default: one pass over the train split.")
_VALIDATION_STEPS = flags.DEFINE_integer("validation_steps", None, "Default: the whole validation split.")
_LEARNING_RATE = flags.DEFINE_float("learning_rate", 1e-4, "Adam learning rate.")
_AUGMENT = flags.DEFINE_boolean("augment", True, "The notebook's augmentation (flips, rotation, zoom, shift).")
_AUGMENT_ON = flags.DEFINE_enum_class(
    "augment_on", training.AugmentOn.HOST, training.AugmentOn,
    "host: in tf.data on the CPU; device: as the model's first layer, on the GPU.",
    case_sensitive=False,
)
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 150, "Square input size.")
_CACHE = flags.DEFINE_boolean("cache", True, "Keep decoded images in memory after the first epoch.")
_MIXED_PRECISION = flags.DEFINE_boolean("mixed_precision", False, "float16 compute on GPU (bfloat16 on CPU).")
_JIT_COMPILE = flags.DEFINE_boolean("jit_compile", False, "Compile the train step with XLA.")
_SAVE_H5 = flags.DEFINE_boolean("save_h5", False, "Also save model.h5, as the notebook did.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of weights, shuffles and augmentation.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not _RECORDS.value:
        sys.exit("train.py: error: --records is required: a folder written by convert.py")
    config = training.TrainConfig(
        records=_RECORDS.value,
        model_dir=_MODEL_DIR.value,
        epochs=_EPOCHS.value,
        batch_size=_BATCH_SIZE.value,
        steps_per_epoch=_STEPS_PER_EPOCH.value,
        validation_steps=_VALIDATION_STEPS.value,
        learning_rate=_LEARNING_RATE.value,
        augment=_AUGMENT.value,
        augment_on=_AUGMENT_ON.value,
        image_size=(_IMAGE_SIZE.value, _IMAGE_SIZE.value),
        cache=_CACHE.value,
        mixed_precision=_MIXED_PRECISION.value,
        jit_compile=_JIT_COMPILE.value,
        save_h5=_SAVE_H5.value,
        seed=_SEED.value,
    )
    try:
        results = training.train_and_evaluate(config)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"train.py: error: {e}")
    logging.info("done: %s", results)
    print(f"Saved the model and plots to {config.model_dir}")
    if "test" in results:
        print("Test: " + ", ".join(f"{k} {v:.4f}" for k, v in results["test"].items()))


if __name__ == "__main__":
    app.run(main)
