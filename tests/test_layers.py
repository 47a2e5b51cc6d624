"""The package's shape, checked: each package imports only from the layers below it, no import
cycle, no module reaching into another module's private names, and no module grown past 600 lines.

The layers, bottom to top (a package may import from any layer below it and from itself):

    errors, secrets   what every layer may raise or scrub
    config            what a person asks for, validated
    plan              the matrix of cells
    results           the typed records and the one reader/writer of a run directory
    worker            one cell in its own process (the only layer that imports torch)
    analysis          verdicts from records: pure functions, no I/O
    hub               the Hub dataset layout, push and pull
    output            tables, logs, plots, HTML
    run               the parent side of a run: session, runner, resume, merge
    cli               the command line
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

LAYERS = (
    ("errors", "secrets"),
    ("config",),
    ("plan",),
    ("results",),
    ("worker",),
    ("analysis",),
    ("hub",),
    ("output",),
    ("run",),
    ("cli",),
)
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}
MAX_LINES = 600
BENCH = ROOT / "bench"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(BENCH.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _layer(module: str) -> str | None:
    """The layer of bench.<layer>[.module]; None for the package root (bench/__init__: the version)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, names) of every import of a bench module, at any depth of the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "bench" or node.module.startswith("bench."):
                names = [a.name for a in node.names]
                # `from bench.worker import models` imports the module bench.worker.models
                subs = [f"{node.module}.{n}" for n in names if f"{node.module}.{n}" in MODULES]
                if subs:
                    found += [(node.lineno, sub, []) for sub in subs]
                    names = [n for n in names if f"{node.module}.{n}" not in MODULES]
                if names or not subs:
                    found.append((node.lineno, node.module, names))
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}:{node.lineno}: relative import; write bench.<package>.<module>")
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name, []) for a in node.names if a.name.startswith("bench.")]
    return found


def test_every_package_is_a_known_layer():
    layers = {_layer(m) for m in MODULES} - {None}
    assert layers <= set(RANK), f"packages not in LAYERS: {sorted(layers - set(RANK))}"


def test_packages_import_only_from_the_layers_below():
    wrong = []
    for module, path in MODULES.items():
        mine = _layer(module)
        if mine is None:
            continue
        for line, target, _ in _imports(path):
            theirs = _layer(target)
            if theirs is None or theirs == mine:
                continue
            if RANK[theirs] >= RANK[mine]:
                wrong.append(
                    f"{path.relative_to(ROOT)}:{line}: {mine} imports {target} ({theirs} is not below)"
                )
    assert not wrong, "\n".join(wrong)


def test_no_module_imports_another_modules_private_names():
    wrong = []
    for path in MODULES.values():
        for line, target, names in _imports(path):
            for name in names:
                if name.startswith("_") and not name.startswith("__"):
                    wrong.append(f"{path.relative_to(ROOT)}:{line}: {target}.{name}")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    graph = {m: {t for _, t, _ in _imports(p) if t in MODULES and t != m} for m, p in MODULES.items()}
    # A package's __init__ imports nothing here; a module importing its package means its docstring.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_stay_small(module):
    lines = len(MODULES[module].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines; split it by job (at most {MAX_LINES})"


def test_package_docstrings_say_what_each_layer_is_for():
    for name in RANK:
        init = BENCH / name / "__init__.py"
        if init.exists():
            doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
            assert doc and len(doc) > 40, f"bench/{name}/__init__.py needs an opening docstring"
