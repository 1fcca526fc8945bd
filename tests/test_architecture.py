"""The plan BUILD.md draws, checked on the code's import graph (parsed with `ast`).

    root scripts (convert.py, train.py, ...)  ->  <layer>.commands only
    benchmark/  ->  model/  ->  pipeline/reader/  ->  pipeline/ (core)
                                pipeline/converter/  ->  pipeline/ (core)

A layer imports only layers below it; the reader never imports the converter
(nor the converter the reader); no import cycle, at module level or inside a
function; no module over 400 lines; nothing is installed as a top-level module.
"""

from __future__ import annotations

import ast
import configparser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "model", "benchmark")
MAX_MODULE_LINES = 400
# Each layer and the layers it may import (itself included).
CORE, CONVERTER, READER, MODEL, BENCHMARK = "pipeline", "pipeline.converter", "pipeline.reader", "model", "benchmark"
ALLOWED = {
    CORE: {CORE},
    CONVERTER: {CONVERTER, CORE},
    READER: {READER, CORE},
    MODEL: {MODEL, READER, CORE},
    BENCHMARK: {BENCHMARK, MODEL, READER, CONVERTER, CORE},
}
# Besides __init__: schema, tfrecord (its wire format), verify, fileio, plots, cli, commands.
CORE_MODULES_AT_MOST = 7
# Parameters of a converter function (self not counted): more means fields passed one at a time.
MAX_CONVERTER_PARAMETERS = 6


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {
        _module_name(path): path
        for package in PACKAGES
        for path in sorted((REPO / package).rglob("*.py"))
    }


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """The project modules `path` imports, anywhere in the file (lazy imports too)."""
    found = set()
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's own package up
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            candidates = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for name in candidates:
            # `from pipeline.converter import sources` names a module; `from x import Y` a symbol of x.
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


GRAPH = {name: _imports(path) - {name} for name, path in MODULES.items()}


def _layer(module: str) -> str:
    for layer in (CONVERTER, READER, MODEL, BENCHMARK):
        if module == layer or module.startswith(layer + "."):
            return layer
    return CORE


def test_the_graph_is_read():
    """The parser sees the imports it must see: a check on the checks below."""
    assert "pipeline.converter.conversion" in GRAPH["pipeline.converter.commands"]
    assert "pipeline.converter.beam" in GRAPH["pipeline.converter.conversion"]  # imported inside a function
    assert {"pipeline.reader.dataset", "pipeline.schema"} <= GRAPH["model.run_plan"]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_layers_import_only_the_layers_below(module):
    layer = _layer(module)
    wrong = {target for target in GRAPH[module] if _layer(target) not in ALLOWED[layer]}
    assert not wrong, f"{module} ({layer}) imports {sorted(wrong)}"


def test_no_import_cycle():
    """Every module's imports, followed to the end, never lead back to it."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = "open"
        stack.append(module)
        for target in sorted(GRAPH[module]):
            if state.get(target) == "open":
                cycle = stack[stack.index(target):] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_stay_small(module):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{module}: {lines} lines"


def test_the_shared_core_stays_small():
    core = [name for name in MODULES if _layer(name) == CORE and name != "pipeline"]
    assert len(core) <= CORE_MODULES_AT_MOST, core


def _parameters(function: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """What a caller passes: every parameter but a method's self or cls; *args and **kwargs one each."""
    args = function.args
    positional = [arg.arg for arg in args.posonlyargs + args.args]
    bound = 1 if positional and positional[0] in ("self", "cls") else 0
    return len(positional) - bound + len(args.kwonlyargs) + (args.vararg is not None) + (args.kwarg is not None)


def test_converter_functions_take_at_most_six_parameters():
    """The converter passes its ConversionConfig (or a small object), not its fields one at a time."""
    many = [
        f"{module}.{node.name} ({_parameters(node)})"
        for module, path in MODULES.items() if _layer(module) == CONVERTER
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _parameters(node) > MAX_CONVERTER_PARAMETERS
    ]
    assert not many, many


ROOT_SCRIPTS = sorted(p for p in REPO.glob("*.py") if p.name != "setup.py")


@pytest.mark.parametrize("script", ROOT_SCRIPTS, ids=lambda p: p.name)
def test_root_scripts_are_shims(script):
    """A docstring, one import of a layer's commands module, one call: nothing else."""
    tree = ast.parse(script.read_text())
    body = [node for node in tree.body if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))]
    assert len(body) == 2, ast.dump(tree)
    imported, call = body
    assert isinstance(imported, ast.ImportFrom) and imported.module.endswith(".commands") or imported.module == "pipeline.commands"
    assert isinstance(call, ast.Expr) and isinstance(call.value, ast.Call)
    assert ast.unparse(call.value.func) == f"{imported.names[0].name}.run"


def test_nothing_is_installed_as_a_top_level_module():
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    options = setup["options"]
    assert "py_modules" not in options
    packages = {name.strip() for name in options["packages"].split(",")}
    assert packages == {name for name, path in MODULES.items() if path.name == "__init__.py"}
    for line in setup["options.entry_points"]["console_scripts"].strip().splitlines():
        target = line.split("=", 1)[1].strip()
        module, _, attribute = target.partition(":")
        assert module in MODULES and module.endswith("commands"), line
        assert attribute.endswith(".run"), line
