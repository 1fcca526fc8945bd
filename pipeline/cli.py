"""What the command lines share: their own flags, one-line errors, exit codes, Ctrl-C.

Each command (convert.py, train.py, ...) defines its absl flags on a
`FlagValues` of its own, so that any number of commands can be imported,
and their `main(argv)` called, in one process (the tests do). `Command.main`
parses argv, runs the command and returns its exit status: 0, 1 with one
line `<prog>: error: ...` on stderr for a bad flag or a bad input (never a
traceback), 130 for Ctrl-C.

    FLAGS = flags.FlagValues()
    _SRC = flags.DEFINE_string("src", None, "...", flag_values=FLAGS)
    CONVERT = cli.Command("convert.py", __doc__, FLAGS, _convert, errors=(ConversionError,))
    CONVERT.main(["convert.py", "--src=photos"])   # -> 0 or 1; CONVERT.run() exits with it
"""

from __future__ import annotations

import dataclasses
import gc
import sys
import traceback
import types
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

from absl import flags
from absl import logging

_HELP = ("--help", "-h", "--helpshort", "--helpfull", "-?")
Config = TypeVar("Config")


class CommandError(Exception):
    """A bad input: the message is the one line the user sees."""


def fail(message: object) -> NoReturn:
    """Ends the running command with `<prog>: error: <message>` and exit status 1."""
    raise CommandError(str(message))


@dataclasses.dataclass(frozen=True)
class Command:
    """One command line: its flags and the function that runs on them.

    Attributes:
      prog: the script's name, e.g. "convert.py", that starts each error line.
      doc: the usage text `--help` prints above the flags.
      flag_values: the command's own flags.
      body: runs the command once the flags are parsed; returns None (0) or
        an exit status, or raises CommandError.
      errors: exception types that are one-line errors of the user's input.
      positional: the command takes arguments besides its flags (predict.py's
        paths); `body` then gets them as a list.
    """

    prog: str
    doc: str
    flag_values: flags.FlagValues
    body: Callable[..., int | None]
    errors: tuple[type[BaseException], ...] = ()
    positional: bool = False

    def main(self, argv: list[str]) -> int:
        """Parses `argv` (argv[0] is the program) and runs the command: its exit status."""
        if any(arg in _HELP for arg in argv[1:]):
            print(f"{self.doc.strip()}\n\nflags:\n{self.flag_values.get_help(include_special_flags=False)}")
            return 0
        for name in list(self.flag_values):  # each call parses afresh: no value from a previous call
            self.flag_values[name].unparse()
        try:
            rest = self.flag_values(argv)
            if len(rest) > 1 and not self.positional:
                raise CommandError(f"unexpected arguments: {' '.join(rest[1:])}")
            _log_to_stderr()
            status = self.body(rest[1:]) if self.positional else self.body()
        except flags.Error as e:  # bad values and failed validators
            return self._error(e)
        except CommandError as e:
            return self._error(e)
        except KeyboardInterrupt as e:
            print(f"{self.prog}: interrupted" + (f"; {e}" if str(e) else ""), file=sys.stderr)
            return 130
        except self.errors as e:
            return self._error(e)
        except Exception as e:  # noqa: BLE001 - every error leaves through here, see run()
            if _is_tensorflow_error(e):  # a data or file problem TensorFlow found: its message says it
                from pipeline import verify  # TensorFlow is loaded already

                return self._error(verify.error_text(e) or e)
            traceback.print_exc()  # a bug: its traceback, but still exit 1 through run()
            return 1
        return int(status or 0)

    def run(self) -> NoReturn:
        """The console entry point: `main(sys.argv)`, then exit with its status.

        An error never escapes to the interpreter's top level: there its
        traceback would keep the frames, and with them any tf.data iterator,
        alive into finalisation, where the iterator's threads meet a torn-down
        interpreter and the process aborts ("terminate called without an active
        exception", exit 134). main() has dropped the exception, and the frames
        and iterators it held with it; the collection below ends any that a
        reference cycle kept, while everything still stands.
        """
        status = self.main(sys.argv)
        gc.collect()
        sys.exit(status)

    def _error(self, error: BaseException) -> int:
        print(f"{self.prog}: error: {error}", file=sys.stderr)
        return 1


def _is_tensorflow_error(error: BaseException) -> bool:
    tf = sys.modules.get("tensorflow")  # loaded by whatever raised it, or not at all
    return tf is not None and isinstance(error, tf.errors.OpError)


def _log_to_stderr() -> None:
    """absl's INFO lines on stderr, as `absl.app.run` would set them up."""
    logging.use_absl_handler()
    if not flags.FLAGS.is_parsed():  # the process-wide flags: ours are the command's own
        flags.FLAGS.mark_as_parsed()
    logging.set_verbosity(logging.INFO)


def command_line(command: Command) -> list[str]:
    """`python <prog> --flag=value ...` of the flags given on the running command's line."""
    values = command.flag_values
    given = {values[name].name: values[name] for name in values if values[name].present}  # short names too
    return ["python", command.prog, *(given[name].serialize() for name in sorted(given))]


def field_defaults(config_type: type) -> types.SimpleNamespace:
    """The defaults of a config dataclass's fields, by name: what its flags default to."""
    return types.SimpleNamespace(**{
        field.name: field.default for field in dataclasses.fields(config_type)
        if field.default is not dataclasses.MISSING
    })


def config_from_flags(config_type: type[Config], flag_values: flags.FlagValues, **extra: Any) -> Config:
    """A config dataclass from the flags named as its fields (and `extra` for the others)."""
    names = {field.name for field in dataclasses.fields(config_type)} - set(extra)
    return config_type(**{name: flag_values[name].value for name in names}, **extra)


class _IntPairParser(flags.ArgumentParser):
    """Parses "A,B" into the tuple (A, B) of ints; with `square`, also "S" into (S, S), all >= 1."""

    def __init__(self, square: bool = False):
        super().__init__()
        self.square = square
        self.syntactic_help = "a size S (square) or H,W in pixels" if square else "two integers A,B"

    def parse(self, argument):
        if isinstance(argument, (tuple, list)):
            return tuple(argument)
        parts = [part.strip() for part in str(argument).split(",")]
        counts, digits = ((1, 2), str.isdigit) if self.square else ((2,), lambda p: p.lstrip("-").isdigit())
        if len(parts) not in counts or not all(digits(p) for p in parts) or (self.square and min(map(int, parts)) < 1):
            raise ValueError(f"expected {self.syntactic_help}, got {argument!r}")
        return int(parts[0]), int(parts[-1])

    def flag_type(self) -> str:
        return "size" if self.square else "int pair"


def define_int_pair(
    name: str, default: tuple[int, int] | None, help: str, flag_values: flags.FlagValues, square: bool = False
) -> flags.FlagHolder:
    """An absl flag written `--name=A,B` whose value is the tuple (A, B).

    With `square`, a size: `--name=S` is (S, S), `--name=H,W` is (H, W), each at least 1.
    """
    return flags.DEFINE(
        _IntPairParser(square), name, default, help, flag_values, serializer=flags.CsvListSerializer(",")
    )
