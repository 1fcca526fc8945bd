"""Measures input throughput: ImageDataGenerator vs tf.data vs this pipeline.

    python bench.py --src ../shared/data/cat_dog_small            # bench_out/
    python bench.py --src photos --records records --passes 3 --out /tmp/bench

Prints a table and the issue's targets; writes results.json and
throughput.png to --out. See pipeline/benchmark.py for what is measured.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from pipeline import benchmark  # noqa: E402
from pipeline import sources  # noqa: E402
from pipeline import writer  # noqa: E402

_SRC = flags.DEFINE_string(
    "src", None, "Image folder: {train,validation,test}/<class>/*.jpg.", required=True
)
_RECORDS = flags.DEFINE_string(
    "records", None,
    "Records converted from --src at the original sizes. Default: convert --src "
    "into a temporary folder. The pre-resized copy is always converted.",
)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 20, "Images per batch.")
_PASSES = flags.DEFINE_integer(
    "passes", 5, "Timed passes per loader; the figure is their median, after one warm-up pass."
)
_SPLIT = flags.DEFINE_string("split", "train", "The split every loader reads.")
_OUT = flags.DEFINE_string("out", "bench_out", "Folder for results.json and throughput.png.")
_MAX_BATCHES = flags.DEFINE_integer(
    "max_batches", None, "Cap on batches per pass (smoke tests). Default: whole epochs."
)
_TRAIN_STEPS = flags.DEFINE_integer(
    "train_steps", 30, "Timed training steps per input for the training-stall rows."
)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        config = benchmark.BenchmarkConfig(
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
        results = benchmark.run_benchmark(config, command=[sys.executable, *sys.argv])
    except (benchmark.BenchmarkError, sources.SourceError, writer.ConversionError) as e:
        sys.exit(f"bench.py: error: {e}")
    print(benchmark.format_table(results))
    print()
    print(benchmark.format_targets(results))
    out = _OUT.value
    json_path = benchmark.save_results(results, os.path.join(out, benchmark.RESULTS_FILENAME))
    png_path = benchmark.plot_results(results, os.path.join(out, benchmark.PLOT_FILENAME))
    print(f"Wrote {json_path} and {png_path}")


if __name__ == "__main__":
    app.run(main)
