"""What the command-line scripts share: one-line errors, exit codes, Ctrl-C.

Every script runs its `main` through `run`, so a bad flag, a bad input and an
interrupt each end in one line on stderr, `<script>: error: ...`, and a
non-zero exit status (1, or 130 for Ctrl-C), never a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from absl import app
from absl import flags


def fail(prog: str, message: object) -> None:
    """Ends the program with `<prog>: error: <message>` and exit status 1."""
    sys.exit(f"{prog}: error: {message}")


class _IntPairParser(flags.ArgumentParser):
    """Parses "A,B" into a tuple of two ints."""

    syntactic_help = "two integers A,B"

    def parse(self, argument):
        if isinstance(argument, (tuple, list)):
            return tuple(argument)
        parts = [part.strip() for part in str(argument).split(",")]
        if len(parts) != 2 or not all(p.lstrip("-").isdigit() for p in parts):
            raise ValueError(f"expected two integers A,B, got {argument!r}")
        return int(parts[0]), int(parts[1])

    def flag_type(self) -> str:
        return "int pair"


def define_int_pair(name: str, default: tuple[int, int] | None, help: str) -> flags.FlagHolder:
    """An absl flag written `--name=A,B` whose value is the tuple (A, B)."""
    return flags.DEFINE(_IntPairParser(), name, default, help, serializer=flags.CsvListSerializer(","))


def run(main: Callable[[list[str]], None], prog: str) -> None:
    """`absl.app.run(main)` with one-line flag errors and a quiet Ctrl-C.

    Args:
      main: the script's main(argv).
      prog: the script's name, e.g. "convert.py", that starts each error line.
    """

    def parse(argv: list[str]) -> list[str]:
        try:
            return flags.FLAGS(argv)
        except flags.Error as e:  # absl validators and bad values land here
            fail(prog, e)

    try:
        app.run(main, flags_parser=parse)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(130)
