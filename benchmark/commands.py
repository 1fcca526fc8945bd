"""bench.py (and bench_convert.py): input throughput, this pipeline against the usual loaders.

    python bench.py --src ../shared/data/cat_dog_small            # bench_out/
    python bench.py --src photos --records records --passes 3 --out /tmp/bench
    python bench.py --src photos --records records --backends --passes 2  # train.py per Keras backend

Prints a table and the targets; writes results.json and throughput.png to
--out (with --backends: its own table, results.json and each train.py's output
in backend_logs/). See the `benchmark` package for what is measured.
"""

from __future__ import annotations

import dataclasses
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow's first import

from pipeline import cli  # noqa: E402
from pipeline import fileio  # noqa: E402
from pipeline import plots  # noqa: E402
from benchmark import BenchmarkError  # noqa: E402
from benchmark import backends  # noqa: E402
from benchmark import conversion  # noqa: E402
from benchmark import conversion_report  # noqa: E402
from benchmark import plan  # noqa: E402
from benchmark import report  # noqa: E402


def _bench(config: plan.BenchmarkConfig) -> None:
    if config.backends:
        _bench_backends(config)
        return
    # Cold rows: one fresh dataset per pass. Training rows: timed fits per
    # input, up to 3 (each is 30 steps of the CNN).
    config = dataclasses.replace(config, cold_runs=config.passes, train_rounds=min(config.passes, 3))
    results = plan.run_benchmark(config, command=cli.command_line(BENCH))
    print(report.format_table(results))
    print()
    print(report.format_targets(results))
    json_path, png_path = report.save(results, config.out)
    print(f"Wrote {json_path} and {png_path}")


def _bench_backends(config: plan.BenchmarkConfig) -> None:
    """--backends: train.py on each Keras backend; a failed row is in the table, then one line and exit 1."""
    results = backends.run(config, command=cli.command_line(BENCH))
    print(report.format_backends_table(results))
    json_path, logs = report.save_backends(results, config.out)
    print(f"Wrote {json_path} and each process's output in {logs}")
    if failed := results.failed():
        raise BenchmarkError(f"{', '.join(row.backend.name for row in failed)} failed (the table says why); "
                             f"each process's output is in {logs}")


BENCH = cli.Command("bench.py", __doc__, plan.BenchmarkConfig, _bench)


@dataclasses.dataclass(frozen=True)
class ConversionBenchConfig:
    """bench_convert.py's flags, a field each (`benchmark.conversion.run` takes them)."""

    photos: str = cli.setting(help="Image folder whose photos are copied.")
    work_dir: str = cli.setting(help="Where the folders and records go (reused).")
    images: int = cli.setting(25_000, help="Files in the large folder.", at_least=10)
    workers: int = cli.setting(os.cpu_count() or 1, help="Decoding processes.", at_least=1)
    epochs: int = cli.setting(5, help="Streaming epochs.", at_least=1)
    out: str = cli.setting("bench_out", help="Folder for conversion.json and conversion_memory.png.")

    def __post_init__(self):
        cli.check_settings(self)


def _bench_convert(config: ConversionBenchConfig) -> None:
    result = conversion.run(
        config.photos, config.work_dir, config.images, config.workers, config.epochs, conversion.log_to_stderr
    )
    print(conversion_report.format_report(result))
    json_path = fileio.write_json(os.path.join(config.out, "conversion.json"), conversion_report.to_json(result))
    png_path = plots.plot_line_panels(conversion_report.memory_panels(result), os.path.join(config.out, "conversion_memory.png"))
    print(f"Wrote {json_path} and {png_path}")


BENCH_CONVERT = cli.Command(
    "bench_convert.py",
    "Conversion at scale: a large folder converted against the decode rate, and memory.\n\n"
    "    python bench_convert.py --photos ../shared/data/cat_dog_small --images 25000 --work_dir /tmp/conv\n\n"
    "Copies the photos into a folder of --images files (and one of a fifth as many) under\n"
    "--work_dir, then prints and saves to --out: the parallel decode rate of those files, the\n"
    "converter's images/s and peak memory for both folders, and resident memory per epoch\n"
    "streaming the records with the cache off. See `benchmark.conversion`.",
    ConversionBenchConfig,
    _bench_convert,
)
