"""Checks a records folder written by convert.py: files, checksums, counts, images, labels.

    python verify.py --records=records/

Prints a line for the folder, then one line per problem naming the shard file
and, where one record is at fault, its index; exits 0 when there is none, 1
otherwise.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from pipeline import cli  # noqa: E402
from pipeline import verify  # noqa: E402

_RECORDS = flags.DEFINE_string("records", None, "Records folder written by convert.py.", required=True)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    report = verify.verify_records(_RECORDS.value)
    print(report.format())
    if not report.ok:
        count = len(report.problems)
        cli.fail("verify.py", f"{count} problem{'s' if count > 1 else ''} in {_RECORDS.value}")


def run() -> None:
    """The `tfr-verify` console entry point."""
    cli.run(main, "verify.py")


if __name__ == "__main__":
    run()
