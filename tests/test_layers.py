"""The package's layers only look down, and its imports are all at the top of modules."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "condmonge"
#: Lower layers and the modules they must never import (upper layers, generators).
FORBIDDEN = {
    "ops": ("condmonge.",),
    "files": ("condmonge.",),
    "errors": ("condmonge.",),
    "data": ("condmonge.evaluate", "condmonge.datasets", "condmonge.model", "condmonge.cli"),
    "conditions": ("condmonge.evaluate", "condmonge.datasets", "condmonge.model", "condmonge.cli"),
    "models": ("condmonge.evaluate", "condmonge.datasets", "condmonge.model", "condmonge.cli"),
    "train": ("condmonge.evaluate", "condmonge.datasets", "condmonge.model", "condmonge.cli"),
    "evaluate/metrics.py": ("condmonge.model", "condmonge.cli", "condmonge.datasets"),
    "evaluate/evaluation.py": ("condmonge.model", "condmonge.cli", "condmonge.datasets"),
}


def _imports(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield node, [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node, [node.module]


def _within(name: str, module: str) -> bool:
    """``name`` is ``module`` or inside it (``"condmonge."``: anything of the package)."""
    return (
        name.startswith(module)
        if module.endswith(".")
        else (name == module or name.startswith(module + "."))
    )


def _modules(prefix: str):
    path = SRC / prefix
    return sorted(path.rglob("*.py")) if path.is_dir() else [path.with_suffix(".py")]


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_nothing_above_it(layer):
    offending = []
    for path in _modules(layer.removesuffix(".py")):
        for _, names in _imports(ast.parse(path.read_text())):
            offending += [
                f"{path.relative_to(SRC)} imports {name}"
                for name in names
                if any(_within(name, upper) for upper in FORBIDDEN[layer])
            ]
    assert not offending, offending


def test_no_function_level_imports_outside_the_cli():
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "cli.py":  # lazy start-up: `condmonge --help` must not load JAX
            continue
        tree = ast.parse(path.read_text())
        for function in ast.walk(tree):
            if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                found += [
                    f"{path.relative_to(SRC)}:{node.lineno} in {function.name}"
                    for node, _ in _imports(function)
                ]
    assert not found, found
