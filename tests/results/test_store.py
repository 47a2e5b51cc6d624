"""Atomic files and the flat summary rows."""

from __future__ import annotations

import json
import os

import pytest

from bench.results.records import CellRecord
from bench.results.store import RunDir, atomic_write_json
from bench.results.summary import summary_columns, summary_row


def test_atomic_write_replaces_whole_file(tmp_path):
    path = tmp_path / "x.json"
    atomic_write_json(path, {"a": 1})
    atomic_write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert os.listdir(tmp_path) == ["x.json"]


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "x.json"
    atomic_write_json(path, {"a": 1})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"a": object()})  # not serializable: fails mid-write
    assert json.loads(path.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["x.json"]


def test_non_finite_numbers_are_stored_as_null(tmp_path):
    path = tmp_path / "x.json"
    atomic_write_json(path, {"a": float("nan"), "b": [float("inf"), 1.0]})
    assert json.loads(path.read_text()) == {"a": None, "b": [None, 1.0]}


def _record(status, stats=None):
    cell = {
        "index": 0,
        "name": "sdpa/eager-mode b1 s8 n4",
        "model": "synthetic:llama-tiny",
        "dtype": "float32",
        "device": "cpu",
        "attn_implementation": "sdpa",
        "compile": None,
        "kernelize": False,
        "continuous_batching": False,
        "batch_size": 1,
        "sequence_length": 8,
        "num_tokens_to_generate": 4,
    }
    return {"cell_id": "abc", "status": status, "reason": None, "cell": cell, "stats": stats}


def test_summary_rows_share_one_schema():
    ok = summary_row("r", CellRecord.model_validate(_record("ok", {"e2e_latency": {"n": 3, "p50": 0.5}})))
    skipped = summary_row("r", CellRecord.model_validate(_record("skipped")))
    assert list(ok) == list(skipped) == summary_columns()
    assert ok["e2e_latency_p50"] == 0.5 and ok["e2e_latency_n"] == 3
    assert skipped["e2e_latency_p50"] is None and skipped["e2e_latency_n"] == 0


def test_run_dir_paths(tmp_path):
    rd = RunDir(tmp_path, "20260101T000000Z-x")
    rd.create()
    assert rd.cell_path("abc") == tmp_path / "20260101T000000Z-x" / "cells" / "abc.json"
    scratch = rd.scratch("abc")
    assert scratch.is_dir()
    rd.drop_scratch("abc")
    assert not scratch.exists()
