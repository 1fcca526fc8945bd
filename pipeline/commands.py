"""verify.py: checks a records folder written by convert.py.

    python verify.py --records=records/            # files, checksums, counts, labels, sizes
    python verify.py --records=records/ --decode   # and every image decoded

Prints a line for the folder, then one line per problem naming the shard file
and, where one record is at fault, its index; exits 0 when there is none, 1
otherwise.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow's first import

from absl import flags  # noqa: E402

from pipeline import cli  # noqa: E402
from pipeline import verify  # noqa: E402

FLAGS = flags.FlagValues()
flags.DEFINE_string("records", None, "Records folder written by convert.py.", required=True, flag_values=FLAGS)
flags.DEFINE_boolean("decode", False, "Also decode every image (a JPEG of the record's size that decodes).", flag_values=FLAGS)


def _verify() -> None:
    report = verify.verify_records(FLAGS.records, decode=FLAGS.decode)
    print(report.format())
    if not report.ok:
        count = len(report.problems)
        cli.fail(f"{count} problem{'s' if count > 1 else ''} in {FLAGS.records}")


VERIFY = cli.Command("verify.py", __doc__, FLAGS, _verify)
