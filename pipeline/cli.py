"""What the command lines share: flags made from config dataclasses, one-line errors, exit codes, Ctrl-C.

Each command (convert.py, train.py, ...) has a frozen config dataclass, and
every field of it is a flag of the same name: its type, default, help and
bounds are stated once, on the field (`setting`), and checked once, in the
config's `__post_init__` (`check_settings`). A command's flags live on a
`FlagValues` of its own, so that any number of commands can be imported, and
their `main(argv)` called, in one process (the tests do). `Command.main`
parses argv, builds the config, runs the command and returns its exit status:
0; 1 with one line `<prog>: error: ...` for a `UserError` (a bad flag, path
or data); 1 with the traceback for anything else (a bug); 130 for Ctrl-C.

    @dataclasses.dataclass(frozen=True)
    class CopyConfig:
        src: str = cli.setting(help="Folder to copy.")                     # no default: required
        copies: int = cli.setting(1, help="How many copies.", at_least=1)

        def __post_init__(self):
            cli.check_settings(self)

    COPY = cli.Command("copy.py", __doc__, CopyConfig, _copy)   # _copy(config: CopyConfig)
    COPY.main(["copy.py", "--src=photos"])   # -> 0 or 1; COPY.run() exits with it
"""

from __future__ import annotations

import dataclasses
import enum
import gc
import re
import sys
import traceback
import types
import typing
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

from absl import flags
from absl import logging

_HELP = ("--help", "-h", "--helpshort", "--helpfull", "-?")
Config = TypeVar("Config")


class UserError(Exception):
    """A mistake in what the user gave (a flag, a path, their data): a command reports it
    as one line, `<prog>: error: <message>`, exit 1.

    Every error a command reports so subclasses it (most also subclass the
    builtin they refine, e.g. ValueError, for Python callers); anything else
    is a bug, reported with its traceback.
    """


class CommandError(UserError):
    """A bad input a command found itself (`fail`): the message is the one line the user sees."""


class SettingError(UserError, ValueError):
    """A config value its checks refuse (`check_settings`, a config's __post_init__): the line names the flag."""


class InputError(UserError, ValueError):
    """A file or folder the user gave that is not what it must be (a damaged manifest, a model_dir of no run)."""


class MissingError(UserError, FileNotFoundError):
    """A file or folder the user named, or one it must hold, that is not there."""


def fail(message: object) -> NoReturn:
    """Ends the running command with `<prog>: error: <message>` and exit status 1."""
    raise CommandError(str(message))


@dataclasses.dataclass(frozen=True)
class Command:
    """One command line: its config, whose fields are its flags, and the function that runs on it.

    Attributes:
      prog: the script's name, e.g. "convert.py", that starts each error line.
      doc: the usage text `--help` prints above the flags.
      config: the command's frozen config dataclass: a flag per field (`define_flags`).
      body: runs the command on the config built from the flags, `body(config)`
        (`body(config, args)` with `positional`); returns None (0) or an exit
        status, or raises a UserError.
      positional: the command takes arguments besides its flags (predict.py's
        paths); `body` then gets them as a list.
      flag_values: the command's own flags, made from `config`.
    """

    prog: str
    doc: str
    config: type
    body: Callable[..., int | None]
    positional: bool = False
    flag_values: flags.FlagValues = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        values = flags.FlagValues()
        define_flags(self.config, values)
        object.__setattr__(self, "flag_values", values)

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
            config = self._config()
            _log_to_stderr()
            status = self.body(config, rest[1:]) if self.positional else self.body(config)
        except flags.Error as e:  # values that do not parse
            return self._error(e)
        except UserError as e:
            return self._error(e)
        except KeyboardInterrupt as e:
            print(f"{self.prog}: interrupted" + (f"; {e}" if str(e) else ""), file=sys.stderr)
            return 130
        except Exception as e:  # noqa: BLE001 - every error leaves through here, see run()
            if _is_data_error(e):  # a file problem TensorFlow found: its message says it
                return self._error(error_text(e) or e)
            traceback.print_exc()  # a bug: its traceback, but still exit 1 through run()
            return 1
        return int(status or 0)

    def _config(self) -> Any:
        """The config of the parsed flags; a value its checks refuse is the user's one-line error."""
        try:
            return config_from_flags(self.config, self.flag_values)
        except UserError as e:  # raised by the config's __post_init__: a value, or values, it refuses
            raise CommandError(str(e)) from None

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


def error_text(error) -> str:
    """A TensorFlow error's message without the op, function and iterator names around it; for a failed
    check of the reader, the check's own line naming the shard ("...-00001-of-00004: the shard holds 3 ...")."""
    asserted = re.search(r"assertion failed: \[(.*)\]", error.message)
    if asserted:
        return asserted.group(1)
    text = error.message.split("}}")[-1] if error.message.startswith("{{") else error.message
    text = re.sub(r"\s*\[\[.*?\]\]", "", text, flags=re.S)
    text = re.sub(r"\s*\[Op:\w+\].*$", "", text, flags=re.S).strip()
    return text.replace("' failed with ", ": ")


def _is_data_error(error: BaseException) -> bool:
    """A TensorFlow error about a file (missing, unreadable, damaged): not a bug. Its other errors
    (a shape, a dtype, an op that fails) keep their traceback."""
    tf = sys.modules.get("tensorflow")  # loaded by whatever raised it, or not at all
    if tf is None:
        return False
    if isinstance(error, tf.errors.InvalidArgumentError):  # the reader's checks of a shard are assertions
        return "assertion failed: [" in error.message
    return isinstance(error, (tf.errors.NotFoundError, tf.errors.PermissionDeniedError, tf.errors.DataLossError))


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


# --------------------------------------------------------------------------
# Flags made from a config dataclass: each setting stated once, on its field.


@dataclasses.dataclass(frozen=True)
class Setting:
    """What a config field states besides its name, type and default: its flag's help and bounds.

    Attributes:
      help: the flag's help, which is also the field's documentation.
      at_least, above, at_most, below: bounds of a number (inclusive,
        exclusive); `check_settings` checks them, `--help` shows them.
      square: a (height, width) field written S (for S,S) or H,W; otherwise A,B.
      flag: False for a field the library has and the command does not
        expose (it keeps its default, or the command sets it).
    """

    help: str
    at_least: float | None = None
    above: float | None = None
    at_most: float | None = None
    below: float | None = None
    square: bool = False
    flag: bool = True


_SETTING = "pipeline.cli.Setting"  # the key of a field's metadata that holds its Setting


def setting(default: Any = dataclasses.MISSING, *, help: str, **rest: Any) -> Any:
    """A config field and its flag: `epochs: int = cli.setting(50, help="Epochs.", at_least=1)`.

    Without a default the field, and so its flag, is required. `rest` are
    the other fields of `Setting` (bounds, `square`, `flag`).
    """
    return dataclasses.field(default=default, metadata={_SETTING: Setting(help, **rest)})


def settings(config_type: type) -> dict[str, Setting]:
    """Field name -> Setting of each field of a config dataclass that is a flag, in field order.

    Raises:
      TypeError: a field without `setting` (a bug: every field states its flag, or flag=False).
    """
    found = {}
    for field in dataclasses.fields(config_type):
        if _SETTING not in field.metadata:
            raise TypeError(f"{config_type.__name__}.{field.name} has no cli.setting (flag=False keeps it off "
                            "the command line)")
        if field.metadata[_SETTING].flag:
            found[field.name] = field.metadata[_SETTING]
    return found


def check_settings(config: Any, error: type[Exception] = SettingError) -> None:
    """Raises `error` naming the flag if a field of `config` breaks its Setting: a config's __post_init__ calls it.

    A required field (one with no default) must not be None or ""; a number
    must be within its bounds. The message reads as absl's for a bad value.
    """
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        rule, value = field.metadata.get(_SETTING), getattr(config, field.name)
        if rule is None:
            continue
        if value is None or value == "":
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise error(f"--{field.name} is required: {_gist(rule.help)}")
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and not _within(value, rule):
            kind = _flag_type(hints[field.name])  # the field's: a float field may be given an int
            raise error(f"flag --{field.name}={value}: {value} is not {_bounds_text(kind, rule)}")


def define_flags(config_type: type, flag_values: flags.FlagValues) -> None:
    """Defines a flag on `flag_values` for each field of `config_type` that is one (`settings`).

    The field's type picks the flag: bool (--x/--nox), int, float, str, an
    Enum (its values, any case), tuple[int, int] (A,B; S or H,W with
    `square`), tuple[str, ...] (a comma list); `X | None` as X. Bounds are
    not given to absl, which would check them a second time: `--help` shows
    them, the config checks them.
    """
    hints = typing.get_type_hints(config_type)
    group = f"{config_type.__module__}.{config_type.__qualname__}"  # --help's heading above the flags
    rules = settings(config_type)
    for field in dataclasses.fields(config_type):
        if field.name in rules:
            default = None if field.default is dataclasses.MISSING else field.default
            _define(field.name, _flag_type(hints[field.name]), default, rules[field.name], flag_values, group)


def config_from_flags(config_type: type[Config], flag_values: flags.FlagValues, **extra: Any) -> Config:
    """A config dataclass from its parsed flags (`define_flags`), and `extra` for fields that are no flag.

    Raises:
      UserError: a value the config's checks refuse (its __post_init__).
    """
    hints = typing.get_type_hints(config_type)
    values = {}
    for name in settings(config_type):
        value = flag_values[name].value
        if isinstance(value, list) and typing.get_origin(_flag_type(hints[name])) is tuple:
            value = tuple(value)  # absl's list flags give lists; a frozen config holds tuples
        values[name] = value
    return config_type(**values, **extra)


def _flag_type(hint: Any) -> Any:
    """`X` of a field typed `X` or `X | None`."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        kinds = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(kinds) != 1:
            raise TypeError(f"a flag has one type, not {hint}")
        return kinds[0]
    return hint


def _define(name: str, kind: Any, default: Any, rule: Setting, flag_values: flags.FlagValues, group: str) -> None:
    """One absl flag of the type `kind` (see define_flags)."""
    common = dict(flag_values=flag_values, module_name=group)
    if kind is bool:
        flags.DEFINE_boolean(name, default, rule.help, **common)
    elif kind in (int, float):
        parser = (_Integer if kind is int else _Float)(_bounds_text(kind, rule))
        flags.DEFINE(parser, name, default, rule.help, serializer=flags.ArgumentSerializer(), **common)
    elif kind is str:
        flags.DEFINE_string(name, default, rule.help, **common)
    elif isinstance(kind, type) and issubclass(kind, enum.Enum):
        flags.DEFINE_enum_class(name, default, kind, rule.help, case_sensitive=False, **common)
    elif typing.get_args(kind) == (int, int):
        flags.DEFINE(_IntPairParser(rule.square), name, default, rule.help,
                     serializer=flags.CsvListSerializer(","), **common)
    elif typing.get_args(kind) == (str, ...):
        flags.DEFINE_list(name, None if default is None else list(default), rule.help, **common)
    else:
        raise TypeError(f"--{name}: no flag for a field of type {kind}")


def _gist(help_text: str) -> str:
    """A help text's first sentence, to follow "--x is required: "."""
    first = help_text.split(". ")[0].rstrip(".")
    return first[:1].lower() + first[1:]


def _within(value: float, rule: Setting) -> bool:
    """Whether `value` keeps the bounds of `rule`."""
    return not (
        (rule.at_least is not None and value < rule.at_least) or (rule.above is not None and value <= rule.above)
        or (rule.at_most is not None and value > rule.at_most) or (rule.below is not None and value >= rule.below)
    )


def _bounds_text(kind: type, rule: Setting) -> str:
    """What a value may be, as absl words it: "a positive integer", "a number in [0, 1)"."""
    if rule.above is None and rule.below is None:  # inclusive bounds: absl's own words
        parser = flags.IntegerParser if kind is int else flags.FloatParser
        return parser(rule.at_least, rule.at_most).syntactic_help
    if kind is int:
        raise TypeError("an integer's bounds are inclusive: at_least, at_most")
    low = f"[{rule.at_least}" if rule.at_least is not None else f"({rule.above}" if rule.above is not None else None
    high = f"{rule.at_most}]" if rule.at_most is not None else f"{rule.below})" if rule.below is not None else None
    if low and high:
        return f"a number in {low}, {high}"
    if rule.above == 0:
        return "a positive number"
    return f"a number > {rule.above}" if low else f"a number < {rule.below}"


class _Integer(flags.IntegerParser):
    """absl's integer parser whose bounds are only described: the config checks them."""

    def __init__(self, syntactic_help: str):
        super().__init__()
        self.syntactic_help = syntactic_help


class _Float(flags.FloatParser):
    """absl's float parser whose bounds are only described: the config checks them."""

    def __init__(self, syntactic_help: str):
        super().__init__()
        self.syntactic_help = syntactic_help


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

