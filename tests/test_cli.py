"""pipeline.cli: flags made from a config dataclass, each command's exit status, one-line errors."""

from __future__ import annotations

import dataclasses
import enum

import pytest

from pipeline import cli


class Refused(cli.UserError):
    """An error of the user's input, as a library declares one: a UserError."""


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclasses.dataclass(frozen=True)
class Toy:
    """A config with a field of each kind of flag."""

    name: str = cli.setting(help="Who counts. More words here.")
    count: int = cli.setting(3, help="How many.", at_least=1)
    size: tuple[int, int] | None = cli.setting(None, help="A size.", square=True)
    span: tuple[int, int] | None = cli.setting(None, help="From A to B.")
    share: float = cli.setting(0.5, help="A share.", at_least=0, below=1)
    rate: float = cli.setting(1.0, help="A rate.", above=0)
    loud: bool = cli.setting(False, help="Shout.")
    colour: Colour = cli.setting(Colour.RED, help="A colour.")
    tags: tuple[str, ...] = cli.setting(("a",), help="Tags.")
    quiet: bool = cli.setting(False, help="Not a flag: the command decides.", flag=False)

    def __post_init__(self):
        cli.check_settings(self)


@dataclasses.dataclass(frozen=True)
class Empty:
    """A command without flags."""


def _command() -> tuple[cli.Command, list]:
    """A command on `Toy` that records the configs it ran with, or fails as asked."""
    runs = []

    def body(config: Toy):
        if config.count == 7:
            raise Refused("seven is refused")
        if config.count == 8:
            cli.fail("eight: one line")
        if config.count == 9:
            raise KeyboardInterrupt
        runs.append(config)
        return 4 if config.count == 4 else None

    return cli.Command("toy.py", "toy.py: counts.\n\n    python toy.py --name=x --count=2", Toy, body), runs


def test_main_builds_the_config_and_each_call_starts_from_the_defaults(capsys):
    command, runs = _command()
    assert command.main(["toy.py", "--name=a", "--count=2", "--size=5", "--loud", "--colour=BLUE", "--tags=x,y"]) == 0
    assert command.main(["toy.py", "--name=b"]) == 0  # no value left from the call before
    assert command.main(["toy.py", "--name=c", "--count=4", "--size=20,28", "--span=-1,3", "--noloud"]) == 4
    assert runs == [
        Toy("a", 2, size=(5, 5), loud=True, colour=Colour.BLUE, tags=("x", "y")),
        Toy("b"),
        Toy("c", 4, size=(20, 28), span=(-1, 3)),
    ]
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "args, status, line",
    [
        (["--count=0"], 1, "toy.py: error: flag --count=0: 0 is not a positive integer"),
        (["--count=x"], 1, "toy.py: error: flag --count=x: invalid literal for int()"),
        (["--share=1"], 1, "toy.py: error: flag --share=1.0: 1.0 is not a number in [0, 1)"),
        (["--rate=0"], 1, "toy.py: error: flag --rate=0.0: 0.0 is not a positive number"),
        (["--colour=green"], 1, "toy.py: error: flag --colour=green: value should be one of <red|blue>"),
        (["--size=0"], 1, "toy.py: error: flag --size=0: expected a size S (square) or H,W in pixels, got '0'"),
        (["--size=1,2,3"], 1, "toy.py: error: flag --size=1,2,3: expected a size S (square) or H,W in pixels"),
        (["--quiet"], 1, "toy.py: error: Unknown command line flag 'quiet'"),
        (["extra"], 1, "toy.py: error: unexpected arguments: extra"),
        (["--count=7"], 1, "toy.py: error: seven is refused"),
        (["--count=8"], 1, "toy.py: error: eight: one line"),
        (["--count=9"], 130, "toy.py: interrupted"),
    ],
)
def test_each_failure_is_one_line_and_its_status(capsys, args, status, line):
    command, runs = _command()
    assert command.main(["toy.py", "--name=x", *args]) == status
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(line), err
    assert not runs


def test_a_required_field_is_a_required_flag(capsys):
    command, runs = _command()
    assert command.main(["toy.py"]) == 1
    assert command.main(["toy.py", "--name="]) == 1
    assert capsys.readouterr().err.splitlines() == ["toy.py: error: --name is required: who counts"] * 2
    assert not runs


def test_the_config_alone_checks_the_bounds():
    """absl parses a value out of bounds; the config refuses it, from flags and from Python alike."""
    command, _ = _command()
    command.flag_values(["toy.py", "--count=0", "--share=2"])
    assert command.flag_values["count"].value == 0 and command.flag_values["share"].value == 2.0
    with pytest.raises(ValueError, match=r"^flag --count=0: 0 is not a positive integer$"):
        Toy("x", count=0)
    with pytest.raises(ValueError, match=r"^--name is required"):
        Toy(None)
    with pytest.raises(ValueError, match=r"^flag --rate=0: 0 is not a positive number$"):
        Toy("x", rate=0)  # an int for a float field
    assert Toy("x", share=0.0, rate=1e-9) == Toy("x", share=0, rate=1e-9)  # the bounds' own edges


def test_check_settings_raises_the_given_error():
    @dataclasses.dataclass(frozen=True)
    class Strict:
        count: int = cli.setting(1, help="How many.", at_least=1, at_most=2)

        def __post_init__(self):
            cli.check_settings(self, Refused)

    with pytest.raises(Refused, match=r"flag --count=3: 3 is not an integer in the range \[1, 2\]"):
        Strict(3)


def test_a_field_without_a_setting_or_of_an_unknown_type_is_a_bug():
    @dataclasses.dataclass(frozen=True)
    class Unstated:
        count: int = 1

    @dataclasses.dataclass(frozen=True)
    class Odd:
        paths: list = cli.setting(None, help="A list.")

    with pytest.raises(TypeError, match="Unstated.count has no cli.setting"):
        cli.Command("x.py", "", Unstated, lambda config: None)
    with pytest.raises(TypeError, match="--paths: no flag for a field of type"):
        cli.Command("x.py", "", Odd, lambda config: None)


def test_an_undeclared_error_is_its_traceback_and_exit_1(capsys):
    """A bug is shown with its traceback, but leaves through main() with status 1."""
    command = cli.Command("toy.py", "", Empty, lambda config: 1 / 0)
    assert command.main(["toy.py"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1] == "ZeroDivisionError: division by zero"


def test_a_file_error_tensorflow_raises_is_one_line_and_its_other_errors_are_bugs(capsys):
    import tensorflow as tf

    def body(config):
        raise tf.errors.NotFoundError(None, None, "{{function_node x}} /data/a.tfrecord; No such file or directory")

    assert cli.Command("toy.py", "", Empty, body).main(["toy.py"]) == 1
    assert capsys.readouterr().err == "toy.py: error: /data/a.tfrecord; No such file or directory\n"

    def shape_bug(config):
        tf.reshape(tf.zeros([6]), [4])  # an op that fails: our bug, not the user's input

    assert cli.Command("toy.py", "", Empty, shape_bug).main(["toy.py"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "InvalidArgumentError" in err, err


def test_a_value_error_raised_inside_keras_is_a_bug_with_its_traceback(capsys):
    """Only a UserError is one line: a ValueError from inside a Keras call (our bug) keeps its traceback."""
    import keras
    import numpy as np

    def body(config):
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        model(np.zeros((1, 5), np.float32))  # Keras: the input's shape does not fit the layer

    assert cli.Command("toy.py", "", Empty, body).main(["toy.py"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "\nValueError: " in err, err[-2000:]
    assert not err.startswith("toy.py: error:")


def test_help_prints_the_usage_and_each_fields_help_default_and_bounds(capsys):
    command, runs = _command()
    assert command.main(["toy.py", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("toy.py: counts.") and f"\n{Toy.__module__}.Toy:\n" in out  # the flags' heading
    for text in ("--count: How many.\n    (default: '3')\n    (a positive integer)",
                 "--share: A share.\n    (default: '0.5')\n    (a number in [0, 1))",
                 "--rate: A rate.\n    (default: '1.0')\n    (a positive number)",
                 "--size: A size.\n    (a size S (square) or H,W in pixels)",
                 "--[no]loud: Shout.", "--colour: <red|blue>: A colour.", "--name: Who counts. More words here."):
        assert text in out, text
    assert "quiet" not in out and not runs


def test_command_line_is_the_flags_given_not_the_defaults():
    command, _ = _command()
    command.flag_values(["toy.py", "--size=6,7", "--name=x"])
    assert cli.command_line(command) == ["python", "toy.py", "--name=x", "--size=6,7"]


def test_config_from_flags_takes_extra_values_for_the_fields_that_are_no_flag():
    command, _ = _command()
    command.flag_values(["toy.py", "--name=x", "--tags=b,c"])
    assert cli.config_from_flags(Toy, command.flag_values, quiet=True) == Toy("x", tags=("b", "c"), quiet=True)
    assert list(cli.settings(Toy)) == ["name", "count", "size", "span", "share", "rate", "loud", "colour", "tags"]
