"""convert.py (and make_sample.py): an image folder tree to sharded TFRecord files, once.

    python convert.py --src cat_dog_small            # writes records/
    python convert.py --src photos --out /data/records --image_size=150 --overwrite
    python convert.py --src gs://bucket/photos --out gs://bucket/records
    python convert.py --src photos --out records --resume   # after an interrupted run
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow's first import

from absl import flags  # noqa: E402

from pipeline import cli  # noqa: E402
from pipeline import fileio  # noqa: E402
from pipeline.converter import conversion  # noqa: E402
from pipeline.converter import duplicates  # noqa: E402
from pipeline.converter import sample_data  # noqa: E402
from pipeline.converter import sharding  # noqa: E402
from pipeline.converter import sources  # noqa: E402

_DEFAULTS = cli.field_defaults(conversion.ConversionConfig)
FLAGS = flags.FlagValues()
flags.DEFINE_string(
    "src", None,
    "Image folder: {train,validation,test}/<class>/* or <class>/*. A local path or a URL "
    "(gs://, s3://, hdfs://: any filesystem tf.io.gfile knows).",
    flag_values=FLAGS,
)
flags.DEFINE_string("out", _DEFAULTS.out, "Records folder to write (not inside --src): a local path or a URL.", flag_values=FLAGS)
flags.DEFINE_list("classes", _DEFAULTS.classes, "Class folder names in label order. Default: sorted folder names.", flag_values=FLAGS)
flags.DEFINE_integer(
    "num_shards", _DEFAULTS.num_shards,
    f"Shards per split. Default: shards of up to --shard_mb, at least {sharding.DEFAULT_MIN_SHARDS}.",
    lower_bound=1, flag_values=FLAGS,
)
flags.DEFINE_float("shard_mb", _DEFAULTS.shard_mb, "Target shard size in MiB.", flag_values=FLAGS)
flags.register_validator("shard_mb", lambda value: value > 0, "must be positive", flag_values=FLAGS)
cli.define_int_pair(
    "image_size", _DEFAULTS.image_size,
    "Store images resized to this size, S (square, e.g. 150) or H,W, so readers decode fewer "
    "pixels. Default: keep the originals.",
    FLAGS,
    square=True,
)
flags.DEFINE_integer("workers", _DEFAULTS.workers, "Decoding processes. Default: the number of cores.", lower_bound=1, flag_values=FLAGS)
flags.DEFINE_integer("seed", _DEFAULTS.seed, "Seed of the shuffle before sharding.", flag_values=FLAGS)
flags.DEFINE_float(
    "validation_fraction", _DEFAULTS.validation_fraction,
    "With no split folders: fraction of each class held out as validation, in [0, 1).",
    flag_values=FLAGS,
)
flags.register_validator(
    "validation_fraction", lambda value: 0.0 <= value < 1.0, "must be in [0, 1)", flag_values=FLAGS
)
flags.DEFINE_boolean("strict", _DEFAULTS.strict, "Fail on any file that would be skipped.", flag_values=FLAGS)
flags.DEFINE_boolean(
    "overwrite", _DEFAULTS.overwrite, "Replace records (and TFDS metadata files) already in --out.", flag_values=FLAGS
)
flags.DEFINE_boolean(
    "follow_external_links", _DEFAULTS.follow_external_links,
    "Use the files that symlinks in --src lead to outside it. Default: skip them.",
    flag_values=FLAGS,
)
flags.DEFINE_integer(
    "max_file_mb", _DEFAULTS.max_file_mb, "Skip files larger than this many MiB.", lower_bound=1, flag_values=FLAGS
)
flags.DEFINE_integer(
    "max_pixels", _DEFAULTS.max_pixels, "Skip images of more pixels (width x height, read before decoding).",
    lower_bound=1, flag_values=FLAGS,
)
flags.DEFINE_boolean(
    "resume", _DEFAULTS.resume,
    "Keep the checked shards of an interrupted conversion into --out started with the same "
    "flags and files, and convert the rest. Local runner only.",
    flag_values=FLAGS,
)
flags.DEFINE_enum_class(
    "duplicates", _DEFAULTS.duplicates, duplicates.DuplicateMode,
    "Byte-identical and near-duplicate images: report them (summary, manifest.json), drop the later "
    "copies, or skip the search.",
    case_sensitive=False, flag_values=FLAGS,
)
flags.DEFINE_enum_class(
    "verify", _DEFAULTS.verify, conversion.Verification,
    "Check of the new records before they replace anything: records (checksums, counts, labels, "
    "sizes; each image was decoded when it was converted) or full (every image decoded again).",
    case_sensitive=False, flag_values=FLAGS,
)
flags.DEFINE_boolean(
    "data_report", _DEFAULTS.data_report,
    "Draw data_report.png into --out: class counts per split, image sizes, duplicate pairs.",
    flag_values=FLAGS,
)
flags.DEFINE_enum_class(
    "runner", _DEFAULTS.runner, conversion.Runner,
    "What writes the shards: this machine's decoding processes, or an Apache Beam pipeline "
    "(needs the beam extra).",
    case_sensitive=False, flag_values=FLAGS,
)
flags.DEFINE_list(
    "beam_pipeline_options", list(_DEFAULTS.beam_pipeline_options),
    "With --runner=beam: Beam options as key=value, comma separated, as tfds build takes them, "
    "e.g. runner=DataflowRunner,project=p,region=r. Default: the DirectRunner on --workers processes.",
    flag_values=FLAGS,
)


def _convert() -> None:
    config = cli.config_from_flags(conversion.ConversionConfig, FLAGS, show_progress=sys.stderr.isatty())
    print(conversion.convert_folder(config).format())


CONVERT = cli.Command(
    "convert.py", __doc__, FLAGS, _convert,
    errors=(sources.SourceError, conversion.ConversionError, fileio.LockedError),
)

SAMPLE_FLAGS = flags.FlagValues()
flags.DEFINE_string("out", sample_data.DEFAULT_OUT, "Folder to write.", flag_values=SAMPLE_FLAGS)
flags.DEFINE_integer("seed", 0, "Generator seed: the same seed writes the same files.", flag_values=SAMPLE_FLAGS)


def _sample() -> None:
    out = SAMPLE_FLAGS.out
    count = sample_data.write_sample(out, seed=SAMPLE_FLAGS.seed)
    print(f"Wrote {count} sample images to {out}")


SAMPLE = cli.Command(
    "make_sample.py",
    "Writes the small, deterministic, photo-like sample the quick start trains on.\n\n"
    "    python make_sample.py                              # sample_data/cats_vs_dogs\n"
    "    python make_sample.py --out /tmp/pets --seed 3",
    SAMPLE_FLAGS,
    _sample,
)
