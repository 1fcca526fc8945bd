"""Writes the small, deterministic, photo-like sample the quick start trains on.

    python make_sample.py                              # sample_data/cats_vs_dogs
    python make_sample.py --out /tmp/pets --seed 3
"""

from __future__ import annotations

from absl import app
from absl import flags

from pipeline import cli
from pipeline import sample_data

_OUT = flags.DEFINE_string("out", sample_data.DEFAULT_OUT, "Folder to write.")
_SEED = flags.DEFINE_integer("seed", 0, "Generator seed: the same seed writes the same files.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    count = sample_data.write_sample(_OUT.value, seed=_SEED.value)
    print(f"Wrote {count} sample images to {_OUT.value}")


def run() -> None:
    """The `tfr-sample` console entry point."""
    cli.run(main, "make_sample.py")


if __name__ == "__main__":
    run()
