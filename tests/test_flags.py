"""Each setting stated once: every command's flags are its config's fields, and the README's tables agree.

A flag's name, type, default, help and bounds come from its config field
(`cli.setting`); the bounds are checked by the config alone. Checked here for
every command, and against the flag tables of the README (its `### <script>`
sections), names and defaults.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import typing
from pathlib import Path

import pytest

from support import cli as run_cli
from pipeline import cli
from pipeline.commands import VERIFY
from pipeline.converter.commands import CONVERT, SAMPLE
from pipeline.reader.commands import DATA_SERVICE
from model.commands import TRAIN, EVALUATE, PREDICT, EXPORT
from benchmark.commands import BENCH, BENCH_CONVERT

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {command.prog: command for command in (
    CONVERT, SAMPLE, VERIFY, DATA_SERVICE, TRAIN, EVALUATE, PREDICT, EXPORT, BENCH, BENCH_CONVERT,
)}
_NO_DEFAULT = dataclasses.MISSING


def _fields(command: cli.Command) -> dict[str, dataclasses.Field]:
    return {field.name: field for field in dataclasses.fields(command.config)}


@pytest.mark.parametrize("prog", COMMANDS)
def test_every_field_is_a_flag_and_every_flag_a_field(prog):
    """Of the same name, default and help; a field kept off the command line says so (flag=False)."""
    command = COMMANDS[prog]
    fields = _fields(command)
    flagged = cli.settings(command.config)  # raises for a field that states no setting
    assert set(command.flag_values) == set(flagged), "flags without a field, or fields without a flag"
    for name, rule in flagged.items():
        flag, field = command.flag_values[name], fields[name]
        default = None if field.default is _NO_DEFAULT else field.default
        assert flag.help.endswith(rule.help) and rule.help.strip(), name  # an enum's help starts <a|b>: 
        assert (tuple(flag.default) if isinstance(flag.default, list) else flag.default) == default, name


def _out_of_bounds(rule: cli.Setting, kind: type) -> list:
    """Values just outside each bound of `rule`."""
    step = 1 if kind is int else 0.5
    return [value for value in (
        None if rule.at_least is None else rule.at_least - step,
        rule.above, rule.below,
        None if rule.at_most is None else rule.at_most + step,
    ) if value is not None]


def _required_args(command: cli.Command) -> list[str]:
    """A value for each required flag, so that a run gets as far as the config's checks."""
    args = []
    for field in dataclasses.fields(command.config):
        if field.default is _NO_DEFAULT:
            kind = typing.get_type_hints(command.config)[field.name]
            value = next(iter(kind)).value if isinstance(kind, type) and issubclass(kind, enum.Enum) else (
                1 if kind is int else "x")
            args.append(f"--{field.name}={value}")
    return args


BOUNDED = [
    (prog, name, rule)
    for prog, command in COMMANDS.items()
    for name, rule in cli.settings(command.config).items()
    if (rule.at_least, rule.above, rule.at_most, rule.below) != (None,) * 4
]


@pytest.mark.parametrize("prog, name, rule", BOUNDED, ids=[f"{p}--{n}" for p, n, _ in BOUNDED])
def test_a_value_out_of_bounds_is_refused_by_the_config_in_one_line(prog, name, rule):
    """absl parses it (no second check); the config refuses it: one line naming the flag, exit 1."""
    command = COMMANDS[prog]
    kind = int if "int" in str(typing.get_type_hints(command.config)[name]) else float
    for value in _out_of_bounds(rule, kind):
        assert command.flag_values[name].parser.parse(str(value)) == value
        done = run_cli.run(command, *_required_args(command), f"--{name}={value}")
        assert done.returncode == 1, done.stderr
        assert done.stderr.strip().splitlines() == [f"{prog}: error: flag --{name}={kind(value)}: {kind(value)} is not "
                                                    f"{command.flag_values[name].parser.syntactic_help}"]


def test_help_shows_every_flag_with_its_default_and_bounds(capsys):
    """train.py --help, as informative as the hand-written flags were (pinned lines from before)."""
    assert TRAIN.main(["train.py", "--help"]) == 0
    out = capsys.readouterr().out
    for text in (
        "  --image_size: Square input size.\n    (default: '150')\n    (integer >= 22)",
        "  --verbose: Keras progress output: 0 silent, 1 bar, 2 a line per epoch.\n    (default: '2')\n"
        "    (an integer in the range [0, 2])",
        "  --learning_rate: Adam learning rate.\n    (default: '0.0001')\n    (a positive number)",
        "  --augment_on: <auto|host|device>: host: in tf.data on the CPU;",
        "  --[no]cache: Keep decoded images in memory after the first epoch.\n    (default: 'true')",
        "  --profile_batches: Write a TensorBoard profiler trace",
        "    (two integers A,B)",
    ):
        assert text in out, text
    assert out.count("\n  --") == len(dataclasses.fields(TRAIN.config))


# --------------------------------------------------------------------------
# The README's flag tables.


def _readme_tables() -> dict[str, list[tuple[str, str]]]:
    """script -> (flags cell, default cell) of each row of the flag table in its `### <script>` section."""
    tables: dict[str, list[tuple[str, str]]] = {}
    script = None
    for line in (REPO / "README.md").read_text().splitlines():
        heading = re.match(r"#{2,4} (\w+\.py)\b", line)
        if line.startswith("#"):
            script = heading.group(1) if heading else None
        elif script and line.startswith("| `--"):
            cells = [cell.strip() for cell in line.strip("|").split(" | ")]
            tables.setdefault(script, []).append((cells[0], cells[1]))
    return tables


def _rows(flags_cell: str, default_cell: str, fields: dict) -> list[tuple[str, str]]:
    """(flag, its default's text) of a row: `--a`, `--b` | 1, 2 pairs them; `--a` / `--noa` is one flag."""
    names = [name for name in re.findall(r"`--(\w+)`", flags_cell)
             if not (name.startswith("no") and name[2:] in fields and name not in fields)]
    parts = default_cell.split(", ")
    if ", " in flags_cell and len(parts) == len(names):
        return list(zip(names, parts))
    return [(name, default_cell) for name in names]


def _says(text: str, field: dataclasses.Field) -> bool:
    """Whether the README's default text states the field's default."""
    text, default = text.replace("`", "").strip(), field.default
    if text == "required":
        return default is _NO_DEFAULT
    if default is _NO_DEFAULT:
        return False
    if text in ("on", "off"):
        return default is (text == "on")
    if text == "none":
        return default is None
    if re.fullmatch(r"[\d,.e+-]+", text):
        return not isinstance(default, bool) and float(text.replace(",", "")) == default
    if isinstance(default, (str, enum.Enum)):
        return text == getattr(default, "value", default)
    # Words: what an unset value means ("number of cores"), or naming the default ("up to 100 MiB").
    return default in (None, ()) or str(default).removesuffix(".0") in re.findall(r"[\d.]+", text)


TABLES = _readme_tables()


def test_the_readme_has_the_flag_tables():
    assert {"convert.py", "train.py"} <= set(TABLES)


@pytest.mark.parametrize("script", sorted(set(TABLES) & set(COMMANDS)))
def test_a_readme_table_names_every_flag_with_its_default(script):
    command = COMMANDS[script]
    fields = _fields(command)
    rows = [row for cells in TABLES[script] for row in _rows(*cells, fields)]
    named, flagged = [name for name, _ in rows], set(cli.settings(command.config))
    assert (set(named) - flagged, flagged - set(named)) == (set(), set()), "(not flags, flags not in the table)"
    assert len(named) == len(set(named)), "a flag in two rows"
    wrong = [(name, text, fields[name].default) for name, text in rows if not _says(text, fields[name])]
    assert not wrong, wrong
