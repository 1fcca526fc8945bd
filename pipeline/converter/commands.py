"""convert.py (and make_sample.py): an image folder tree to sharded TFRecord files, once.

    python convert.py --src cat_dog_small            # writes records/
    python convert.py --src photos --out /data/records --image_size=150 --overwrite
    python convert.py --src gs://bucket/photos --out gs://bucket/records
    python convert.py --src photos --out records --resume   # after an interrupted run

Each flag is a field of `pipeline.converter.conversion.ConversionConfig`, of the
same name, default and help.
"""

from __future__ import annotations

import dataclasses
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow's first import

from pipeline import cli  # noqa: E402
from pipeline.converter import conversion  # noqa: E402
from pipeline.converter import sample_data  # noqa: E402


def _convert(config: conversion.ConversionConfig) -> None:
    config = dataclasses.replace(config, show_progress=sys.stderr.isatty())
    print(conversion.convert_folder(config).format())


CONVERT = cli.Command("convert.py", __doc__, conversion.ConversionConfig, _convert)


@dataclasses.dataclass(frozen=True)
class SampleConfig:
    """make_sample.py's flags, a field each (`sample_data.write_sample` takes them)."""

    out: str = cli.setting(sample_data.DEFAULT_OUT, help="Folder to write.")
    seed: int = cli.setting(0, help="Generator seed: the same seed writes the same files.")

    def __post_init__(self):
        cli.check_settings(self)


def _sample(config: SampleConfig) -> None:
    count = sample_data.write_sample(config.out, seed=config.seed)
    print(f"Wrote {count} sample images to {config.out}")


SAMPLE = cli.Command(
    "make_sample.py",
    "Writes the small, deterministic, photo-like sample the quick start trains on.\n\n"
    "    python make_sample.py                              # sample_data/cats_vs_dogs\n"
    "    python make_sample.py --out /tmp/pets --seed 3",
    SampleConfig,
    _sample,
)
