"""verify.py: checks a records folder written by convert.py.

    python verify.py --records=records/            # files, checksums, counts, labels, sizes
    python verify.py --records=records/ --decode   # and every image decoded

Prints a line for the folder, then one line per problem naming the shard file
and, where one record is at fault, its index; exits 0 when there is none, 1
otherwise.
"""

from __future__ import annotations

import dataclasses
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow's first import

from pipeline import cli  # noqa: E402
from pipeline import verify  # noqa: E402



@dataclasses.dataclass(frozen=True)
class VerifyConfig:
    """verify.py's flags, a field each."""

    records: str = cli.setting(help="Records folder written by convert.py.")
    decode: bool = cli.setting(False, help="Also decode every image (a JPEG of the record's size that decodes).")

    def __post_init__(self):
        cli.check_settings(self)


def _verify(config: VerifyConfig) -> None:
    report = verify.verify_records(config.records, decode=config.decode)
    print(report.format())
    if not report.ok:
        count = len(report.problems)
        cli.fail(f"{count} problem{'s' if count > 1 else ''} in {config.records}")


VERIFY = cli.Command("verify.py", __doc__, VerifyConfig, _verify)
