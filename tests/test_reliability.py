"""RELIABILITY.md stays true: it is what benchmarks/reliability.py renders, every test it names
exists, and every test of the fault suites is named in it."""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _generator():
    spec = importlib.util.spec_from_file_location("reliability", ROOT / "benchmarks" / "reliability.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["reliability"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _test_functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}


def test_document_is_what_the_generator_renders():
    gen = _generator()
    assert (ROOT / "RELIABILITY.md").read_text() == gen.render(), (
        "RELIABILITY.md is out of date: run `make reliability`"
    )


def test_every_named_test_exists():
    for row in _generator().all_rows():
        for node in row.tests:
            file, _, name = node.partition("::")
            assert name in _test_functions(ROOT / file), f"{row.fault!r} names {node}, which does not exist"


def test_every_fault_suite_test_has_a_row():
    gen = _generator()
    named = {t for row in gen.all_rows() for t in row.tests}
    for file in gen.SUITES:
        for name in sorted(_test_functions(ROOT / file)):
            assert f"{file}::{name}" in named, f"{file}::{name} has no row in benchmarks/reliability.py"
