"""Conversion at scale: a large folder converted against the decode rate, and memory.

    python bench_convert.py --photos ../shared/data/cat_dog_small --images 25000 --work_dir /tmp/conv

Copies the photos into a folder of --images files (and one of a fifth as
many) under --work_dir, then prints and saves to --out: the parallel decode
rate of those files, the converter's images/s and peak memory for both
folders, and resident memory per epoch streaming the records with the cache
off. See `benchmark.conversion`.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from benchmark import conversion  # noqa: E402
from pipeline import cli  # noqa: E402
from pipeline import fileio  # noqa: E402
from pipeline import plots  # noqa: E402
from pipeline import sources  # noqa: E402

_PHOTOS = flags.DEFINE_string("photos", None, "Image folder whose photos are copied.", required=True)
_IMAGES = flags.DEFINE_integer("images", 25_000, "Files in the large folder.", lower_bound=10)
_WORK_DIR = flags.DEFINE_string("work_dir", None, "Where the folders and records go (reused).", required=True)
_WORKERS = flags.DEFINE_integer("workers", os.cpu_count() or 1, "Decoding processes.", lower_bound=1)
_EPOCHS = flags.DEFINE_integer("epochs", 5, "Streaming epochs.", lower_bound=1)
_OUT = flags.DEFINE_string("out", "bench_out", "Folder for conversion.json and conversion_memory.png.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        result = conversion.run(
            _PHOTOS.value, _WORK_DIR.value, _IMAGES.value, _WORKERS.value, _EPOCHS.value, conversion.log_to_stderr
        )
    except (sources.SourceError, RuntimeError, ValueError) as e:
        cli.fail("bench_convert.py", e)
    print(conversion.format_report(result))
    json_path = fileio.write_json(os.path.join(_OUT.value, "conversion.json"), conversion.to_json(result))
    png_path = plots.plot_line_panels(conversion.memory_panels(result), os.path.join(_OUT.value, "conversion_memory.png"))
    print(f"Wrote {json_path} and {png_path}")


def run() -> None:
    """The `tfr-bench-convert` console entry point."""
    cli.run(main, "bench_convert.py")


if __name__ == "__main__":
    run()
