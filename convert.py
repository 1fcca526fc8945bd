"""Converts an image folder tree into sharded TFRecord files, once.

    python convert.py --src cat_dog_small            # writes records/
    python convert.py --src photos --out /data/records --image_size=150 --overwrite
    python convert.py --src gs://bucket/photos --out gs://bucket/records
    python convert.py --src photos --out records --resume   # after an interrupted run
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from pipeline import cli  # noqa: E402
from pipeline import imaging  # noqa: E402
from pipeline import sharding  # noqa: E402
from pipeline import sources  # noqa: E402
from pipeline import writer  # noqa: E402

_SRC = flags.DEFINE_string(
    "src", None,
    "Image folder: {train,validation,test}/<class>/* or <class>/*. A local path or a URL "
    "(gs://, s3://, hdfs://: any filesystem tf.io.gfile knows).",
)
_OUT = flags.DEFINE_string(
    "out", "records", "Records folder to write (not inside --src): a local path or a URL."
)
_CLASSES = flags.DEFINE_list(
    "classes", None, "Class folder names in label order. Default: sorted folder names."
)
_NUM_SHARDS = flags.DEFINE_integer(
    "num_shards", None,
    f"Shards per split. Default: shards of up to --shard_mb, at least {sharding.DEFAULT_MIN_SHARDS}.",
    lower_bound=1,
)
_SHARD_MB = flags.DEFINE_integer(
    "shard_mb", sharding.DEFAULT_SHARD_BYTES // 2**20, "Target shard size in MiB.", lower_bound=1
)
_IMAGE_SIZE = flags.DEFINE_integer(
    "image_size", None,
    "Store images resized to this square size (e.g. 150) so readers decode fewer "
    "pixels. Default: keep the originals.",
    lower_bound=1,
)
_WORKERS = flags.DEFINE_integer(
    "workers", None, "Decoding processes. Default: the number of cores.", lower_bound=1
)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the shuffle before sharding.")
_VALIDATION_FRACTION = flags.DEFINE_float(
    "validation_fraction", 0.0,
    "With no split folders: fraction of each class held out as validation, in [0, 1).",
)
flags.register_validator(
    "validation_fraction", lambda value: 0.0 <= value < 1.0, "must be in [0, 1)"
)
_STRICT = flags.DEFINE_boolean("strict", False, "Fail on any file that would be skipped.")
_OVERWRITE = flags.DEFINE_boolean(
    "overwrite", False, "Replace records (and TFDS metadata files) already in --out."
)
_FOLLOW_EXTERNAL_LINKS = flags.DEFINE_boolean(
    "follow_external_links", False,
    "Use the files that symlinks in --src lead to outside it. Default: skip them.",
)
_MAX_FILE_MB = flags.DEFINE_integer(
    "max_file_mb", sources.DEFAULT_MAX_FILE_MB, "Skip files larger than this many MiB.",
    lower_bound=1,
)
_RESUME = flags.DEFINE_boolean(
    "resume", False,
    "Keep the checked shards of an interrupted conversion into --out started with the same "
    "flags and files, and convert the rest. Local runner only.",
)
_RUNNER = flags.DEFINE_enum(
    "runner", writer.Runner.LOCAL.value, [runner.value for runner in writer.Runner],
    "What writes the shards: this machine's decoding processes, or an Apache Beam pipeline "
    "(needs the beam extra).",
)
_BEAM_PIPELINE_OPTIONS = flags.DEFINE_list(
    "beam_pipeline_options", [],
    "With --runner=beam: Beam options as key=value, comma separated, as tfds build takes them, "
    "e.g. runner=DataflowRunner,project=p,region=r. Default: the DirectRunner on --workers processes.",
)
_MAX_PIXELS = flags.DEFINE_integer(
    "max_pixels", imaging.DEFAULT_MAX_PIXELS,
    "Skip images of more pixels (width x height, read before decoding).",
    lower_bound=1,
)


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
            shard_bytes=_SHARD_MB.value * 2**20,
            image_size=(size, size) if size else None,
            workers=_WORKERS.value,
            seed=_SEED.value,
            validation_fraction=_VALIDATION_FRACTION.value,
            strict=_STRICT.value,
            overwrite=_OVERWRITE.value,
            follow_external_links=_FOLLOW_EXTERNAL_LINKS.value,
            max_file_mb=_MAX_FILE_MB.value,
            max_pixels=_MAX_PIXELS.value,
            show_progress=sys.stderr.isatty(),
            resume=_RESUME.value,
            runner=_RUNNER.value,
            beam_options=_BEAM_PIPELINE_OPTIONS.value,
        )
    except (sources.SourceError, writer.ConversionError) as e:
        cli.fail("convert.py", e)
    print(summary.format())


def run() -> None:
    """The `tfr-convert` console entry point."""
    cli.run(main, "convert.py")


if __name__ == "__main__":
    run()
