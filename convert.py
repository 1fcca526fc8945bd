"""Converts an image folder tree into sharded TFRecord files, once.

    python convert.py --src cat_dog_small            # writes records/
    python convert.py --src photos --out /data/records --image_size=150 --overwrite
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from pipeline import sources  # noqa: E402
from pipeline import writer  # noqa: E402

_SRC = flags.DEFINE_string(
    "src", None, "Image folder: {train,validation,test}/<class>/* or <class>/*."
)
_OUT = flags.DEFINE_string("out", "records", "Records folder to write.")
_CLASSES = flags.DEFINE_list(
    "classes", None, "Class folder names in label order. Default: sorted folder names."
)
_NUM_SHARDS = flags.DEFINE_integer(
    "num_shards", None, "Shards per split. Default: shards of up to --shard_mb, at least 4."
)
_SHARD_MB = flags.DEFINE_integer("shard_mb", 100, "Target shard size in MB.")
_IMAGE_SIZE = flags.DEFINE_integer(
    "image_size", None,
    "Store images resized to this square size (e.g. 150) so readers decode fewer "
    "pixels. Default: keep the originals.",
)
_WORKERS = flags.DEFINE_integer("workers", None, "Decoding processes. Default: the number of cores.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the shuffle before sharding.")
_VALIDATION_FRACTION = flags.DEFINE_float(
    "validation_fraction", 0.0,
    "With no split folders: fraction of each class held out as validation.",
)
_STRICT = flags.DEFINE_boolean("strict", False, "Fail on any file that does not decode.")
_OVERWRITE = flags.DEFINE_boolean("overwrite", False, "Replace records already in --out.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    size = _IMAGE_SIZE.value
    try:
        summary = writer.convert_folder(
            _SRC.value,
            _OUT.value,
            classes=_CLASSES.value,
            num_shards=_NUM_SHARDS.value,
            shard_bytes=_SHARD_MB.value * 1024 * 1024,
            image_size=(size, size) if size else None,
            workers=_WORKERS.value,
            seed=_SEED.value,
            validation_fraction=_VALIDATION_FRACTION.value,
            strict=_STRICT.value,
            overwrite=_OVERWRITE.value,
            show_progress=sys.stderr.isatty(),
        )
    except (sources.SourceError, writer.ConversionError) as e:
        sys.exit(f"convert.py: error: {e}")
    print(summary.format())


if __name__ == "__main__":
    app.run(main)
