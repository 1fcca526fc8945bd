"""Measures input throughput: ImageDataGenerator vs tf.data vs this pipeline.

    python bench.py --src ../shared/data/cat_dog_small            # bench_out/
    python bench.py --src photos --records records --passes 3 --out /tmp/bench

Prints a table and the issue's targets; writes results.json and
throughput.png to --out. See the `benchmark` package for what is measured.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from benchmark import BenchmarkError  # noqa: E402
from benchmark import plan  # noqa: E402
from benchmark import report  # noqa: E402
from pipeline import cli  # noqa: E402
from pipeline import sources  # noqa: E402
from pipeline import writer  # noqa: E402

_DEFAULTS = plan.BenchmarkConfig
_SRC = flags.DEFINE_string(
    "src", None, "Image folder: {train,validation,test}/<class>/*.jpg.", required=True
)
_RECORDS = flags.DEFINE_string(
    "records", _DEFAULTS.records,
    "Records converted from --src at the original sizes. Default: convert --src "
    "into a temporary folder. The pre-resized copy is always converted.",
)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", _DEFAULTS.batch_size, "Images per batch.")
_PASSES = flags.DEFINE_integer(
    "passes", _DEFAULTS.passes,
    "Timed passes per loader; the figure is their median, after one warm-up pass.",
)
_SPLIT = flags.DEFINE_string("split", _DEFAULTS.split, "The split every loader reads.")
_OUT = flags.DEFINE_string("out", "bench_out", "Folder for results.json and throughput.png.")
_MAX_BATCHES = flags.DEFINE_integer(
    "max_batches", _DEFAULTS.max_batches, "Cap on batches per pass (smoke tests). Default: whole epochs."
)
_TRAIN_STEPS = flags.DEFINE_integer(
    "train_steps", _DEFAULTS.train_steps, "Timed training steps per input for the training-stall rows."
)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        config = plan.BenchmarkConfig(
            src=_SRC.value,
            records=_RECORDS.value,
            split=_SPLIT.value,
            batch_size=_BATCH_SIZE.value,
            passes=_PASSES.value,
            max_batches=_MAX_BATCHES.value,
            train_steps=_TRAIN_STEPS.value,
            # Cold rows: one fresh dataset per pass. Training rows: timed fits
            # per input, up to 3 (each is 30 steps of the CNN).
            train_rounds=min(_PASSES.value, 3),
            cold_runs=_PASSES.value,
        )
        results = plan.run_benchmark(config, command=[sys.executable, *sys.argv])
    except (BenchmarkError, sources.SourceError, writer.ConversionError) as e:
        cli.fail("bench.py", e)
    print(report.format_table(results))
    print()
    print(report.format_targets(results))
    json_path, png_path = report.save(results, _OUT.value)
    print(f"Wrote {json_path} and {png_path}")


def run() -> None:
    """The `tfr-bench` console entry point."""
    cli.run(main, "bench.py")


if __name__ == "__main__":
    run()
