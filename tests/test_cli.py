"""pipeline.cli.Command: each command's own flags, its exit status, one-line errors."""

from __future__ import annotations

import pytest
from absl import flags

from pipeline import cli


class Refused(Exception):
    """An error of the user's input, as a command declares one."""


def _command() -> tuple[cli.Command, list]:
    """A command with two flags that records what it ran with, or fails as asked."""
    values = flags.FlagValues()
    flags.DEFINE_integer("count", 3, "How many.", lower_bound=1, flag_values=values)
    cli.define_int_pair("size", None, "A size.", values, square=True)
    runs = []

    def body():
        if values.count == 7:
            raise Refused("seven is refused")
        if values.count == 8:
            cli.fail("eight: one line")
        if values.count == 9:
            raise KeyboardInterrupt
        runs.append((values.count, values.size))
        return 4 if values.count == 4 else None

    return cli.Command("toy.py", "toy.py: counts.\n\n    python toy.py --count=2", values, body, (Refused,)), runs


def test_main_returns_the_status_and_each_call_starts_from_the_defaults(capsys):
    command, runs = _command()
    assert command.main(["toy.py", "--count=2", "--size=5"]) == 0
    assert command.main(["toy.py"]) == 0  # no value left from the call before
    assert command.main(["toy.py", "--count=4", "--size=20,28"]) == 4
    assert runs == [(2, (5, 5)), (3, None), (4, (20, 28))]
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "args, status, line",
    [
        (["--count=0"], 1, "toy.py: error: flag --count=0: 0 is not a positive integer"),
        (["--size=0"], 1, "toy.py: error: flag --size=0: expected a size S (square) or H,W in pixels, got '0'"),
        (["--size=1,2,3"], 1, "toy.py: error: flag --size=1,2,3: expected a size S (square) or H,W in pixels"),
        (["--colour=red"], 1, "toy.py: error: Unknown command line flag 'colour'"),
        (["extra"], 1, "toy.py: error: unexpected arguments: extra"),
        (["--count=7"], 1, "toy.py: error: seven is refused"),
        (["--count=8"], 1, "toy.py: error: eight: one line"),
        (["--count=9"], 130, "toy.py: interrupted"),
    ],
)
def test_each_failure_is_one_line_and_its_status(capsys, args, status, line):
    command, runs = _command()
    assert command.main(["toy.py", *args]) == status
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(line), err
    assert not runs


def test_an_undeclared_error_is_its_traceback_and_exit_1(capsys):
    """A bug is shown with its traceback, but leaves through main() with status 1."""
    command = cli.Command("toy.py", "", flags.FlagValues(), lambda: 1 / 0)
    assert command.main(["toy.py"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1] == "ZeroDivisionError: division by zero"


def test_an_error_tensorflow_raises_is_one_line(capsys):
    import tensorflow as tf

    def body():
        raise tf.errors.NotFoundError(None, None, "{{function_node x}} /data/a.tfrecord; No such file or directory")

    assert cli.Command("toy.py", "", flags.FlagValues(), body).main(["toy.py"]) == 1
    assert capsys.readouterr().err == "toy.py: error: /data/a.tfrecord; No such file or directory\n"


def test_help_prints_the_usage_and_the_flags(capsys):
    command, runs = _command()
    assert command.main(["toy.py", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("toy.py: counts.") and "--count: How many." in out and "--size: A size." in out
    assert not runs


def test_command_line_is_the_flags_given_not_the_defaults():
    command, _ = _command()
    command.flag_values(["toy.py", "--size=6,7"])
    assert cli.command_line(command) == ["python", "toy.py", "--size=6,7"]


def test_config_from_flags_fills_a_dataclass_by_field_name():
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class Config:
        count: int = 3
        size: tuple[int, int] | None = None
        quiet: bool = False

    command, _ = _command()
    command.flag_values(["toy.py", "--count=5", "--size=6,7"])
    assert cli.config_from_flags(Config, command.flag_values, quiet=True) == Config(5, (6, 7), True)
    assert cli.field_defaults(Config).count == 3
