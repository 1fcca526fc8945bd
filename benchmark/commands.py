"""bench.py (and bench_convert.py): input throughput, this pipeline against the usual loaders.

    python bench.py --src ../shared/data/cat_dog_small            # bench_out/
    python bench.py --src photos --records records --passes 3 --out /tmp/bench

Prints a table and the targets; writes results.json and throughput.png to
--out. See the `benchmark` package for what is measured.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow's first import

from absl import flags  # noqa: E402

from pipeline import cli  # noqa: E402
from pipeline import fileio  # noqa: E402
from pipeline import plots  # noqa: E402
from pipeline.converter import conversion as converter  # noqa: E402
from pipeline.converter import sources  # noqa: E402
from benchmark import BenchmarkError  # noqa: E402
from benchmark import conversion  # noqa: E402
from benchmark import conversion_report  # noqa: E402
from benchmark import plan  # noqa: E402
from benchmark import report  # noqa: E402

_DEFAULTS = plan.BenchmarkConfig
FLAGS = flags.FlagValues()
flags.DEFINE_string("src", None, "Image folder: {train,validation,test}/<class>/*.jpg.", required=True, flag_values=FLAGS)
flags.DEFINE_string(
    "records", _DEFAULTS.records,
    "Records converted from --src at the original sizes. Default: convert --src "
    "into a temporary folder. The pre-resized copy is always converted.",
    flag_values=FLAGS,
)
flags.DEFINE_integer("batch_size", _DEFAULTS.batch_size, "Images per batch.", flag_values=FLAGS)
flags.DEFINE_integer(
    "passes", _DEFAULTS.passes, "Timed passes per loader; the figure is their median, after one warm-up pass.",
    flag_values=FLAGS,
)
flags.DEFINE_string("split", _DEFAULTS.split, "The split every loader reads.", flag_values=FLAGS)
flags.DEFINE_string("out", "bench_out", "Folder for results.json and throughput.png.", flag_values=FLAGS)
flags.DEFINE_integer(
    "max_batches", _DEFAULTS.max_batches, "Cap on batches per pass (smoke tests). Default: whole epochs.",
    flag_values=FLAGS,
)
flags.DEFINE_integer(
    "train_steps", _DEFAULTS.train_steps, "Timed training steps per input for the training-stall rows.",
    flag_values=FLAGS,
)


def _bench() -> None:
    # Cold rows: one fresh dataset per pass. Training rows: timed fits per
    # input, up to 3 (each is 30 steps of the CNN).
    config = cli.config_from_flags(
        plan.BenchmarkConfig, FLAGS, train_rounds=min(FLAGS.passes, 3), cold_runs=FLAGS.passes,
        image_size=_DEFAULTS.image_size, train_warmup_steps=_DEFAULTS.train_warmup_steps,
    )
    results = plan.run_benchmark(config, command=cli.command_line(BENCH))
    print(report.format_table(results))
    print()
    print(report.format_targets(results))
    json_path, png_path = report.save(results, FLAGS.out)
    print(f"Wrote {json_path} and {png_path}")


BENCH = cli.Command(
    "bench.py", __doc__, FLAGS, _bench, errors=(BenchmarkError, sources.SourceError, converter.ConversionError, fileio.LockedError)
)

CONVERT_FLAGS = flags.FlagValues()
flags.DEFINE_string("photos", None, "Image folder whose photos are copied.", required=True, flag_values=CONVERT_FLAGS)
flags.DEFINE_integer("images", 25_000, "Files in the large folder.", lower_bound=10, flag_values=CONVERT_FLAGS)
flags.DEFINE_string(
    "work_dir", None, "Where the folders and records go (reused).", required=True, flag_values=CONVERT_FLAGS
)
flags.DEFINE_integer("workers", os.cpu_count() or 1, "Decoding processes.", lower_bound=1, flag_values=CONVERT_FLAGS)
flags.DEFINE_integer("epochs", 5, "Streaming epochs.", lower_bound=1, flag_values=CONVERT_FLAGS)
flags.DEFINE_string(
    "out", "bench_out", "Folder for conversion.json and conversion_memory.png.", flag_values=CONVERT_FLAGS
)


def _bench_convert() -> None:
    flags_ = CONVERT_FLAGS
    result = conversion.run(
        flags_.photos, flags_.work_dir, flags_.images, flags_.workers, flags_.epochs, conversion.log_to_stderr
    )
    print(conversion_report.format_report(result))
    json_path = fileio.write_json(os.path.join(flags_.out, "conversion.json"), conversion_report.to_json(result))
    png_path = plots.plot_line_panels(conversion_report.memory_panels(result), os.path.join(flags_.out, "conversion_memory.png"))
    print(f"Wrote {json_path} and {png_path}")


BENCH_CONVERT = cli.Command(
    "bench_convert.py",
    "Conversion at scale: a large folder converted against the decode rate, and memory.\n\n"
    "    python bench_convert.py --photos ../shared/data/cat_dog_small --images 25000 --work_dir /tmp/conv\n\n"
    "Copies the photos into a folder of --images files (and one of a fifth as many) under\n"
    "--work_dir, then prints and saves to --out: the parallel decode rate of those files, the\n"
    "converter's images/s and peak memory for both folders, and resident memory per epoch\n"
    "streaming the records with the cache off. See `benchmark.conversion`.",
    CONVERT_FLAGS,
    _bench_convert,
    errors=(sources.SourceError, RuntimeError, ValueError),
)
