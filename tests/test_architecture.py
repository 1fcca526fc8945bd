"""The layering BUILD.md draws, checked on the source: who may import whom.

    scripts (convert.py, train.py, bench.py, verify.py, make_sample.py)
      -> benchmark/ -> model/ -> pipeline/

A package imports only packages below it; scripts hold flags and main() only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Each package and the project packages it may import.
ALLOWED = {
    "pipeline": {"pipeline"},
    "model": {"pipeline", "model"},
    "benchmark": {"pipeline", "model", "benchmark"},
}
PROJECT_PACKAGES = set(ALLOWED)
MAX_MODULE_LINES = 400
SCRIPTS = sorted(p for p in REPO.glob("*.py") if p.name != "setup.py")


def _project_imports(path: Path) -> set[str]:
    """The project packages a module imports (at any depth in the file)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        else:
            continue
        found |= {name.split(".")[0] for name in names} & PROJECT_PACKAGES
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_packages_import_only_the_layers_below(package):
    for module in sorted((REPO / package).glob("*.py")):
        imported = _project_imports(module)
        assert imported <= ALLOWED[package], f"{module.relative_to(REPO)} imports {imported - ALLOWED[package]}"


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_modules_stay_small(package):
    for module in sorted((REPO / package).glob("*.py")):
        lines = len(module.read_text().splitlines())
        assert lines <= MAX_MODULE_LINES, f"{module.relative_to(REPO)}: {lines} lines"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_hold_flags_and_main_only(script):
    """Top level: imports, flag definitions, main() and run(); no other logic."""
    tree = ast.parse(script.read_text())
    functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert functions <= {"main", "run"}, functions
    assert not [node for node in tree.body if isinstance(node, ast.ClassDef)]
