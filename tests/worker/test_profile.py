"""The profiled call: a trace that parses and operators counted, or the reason there is none."""

from __future__ import annotations

import gzip
import json

import torch

from bench.worker.profile import profile_call


def test_a_profiled_call_writes_its_trace_and_counts_operators(tmp_path):
    a = torch.randn(64, 64)
    path = tmp_path / "traces" / "c.json.gz"
    got = profile_call(lambda: (a @ a).softmax(-1), "cpu", 4, str(path), "traces/c.json.gz")
    assert got["available"] and got["trace"] == "traces/c.json.gz" and got["time"] == "cpu"
    with gzip.open(path, "rt") as f:
        assert json.load(f)["traceEvents"]
    assert got["trace_bytes"] == path.stat().st_size
    families = {op["name"]: op["family"] for op in got["top_ops"]}
    assert families["aten::mm"] == "matmul" and families["aten::_softmax"] == "attention"
    assert not list(tmp_path.rglob("*.tmp*"))  # the raw JSON is gone once gzipped


def test_a_failed_profile_says_why_and_raises_nothing(tmp_path):
    def broken() -> None:
        raise RuntimeError("boom")

    got = profile_call(broken, "cpu", 4, str(tmp_path / "c.json.gz"), "traces/c.json.gz")
    assert got == {"available": False, "new_tokens": 4, "reason": "profiling failed: RuntimeError: boom"}
    blocked = tmp_path / "file"
    blocked.write_text("")  # a file where the traces directory belongs
    got = profile_call(lambda: None, "cpu", 4, str(blocked / "c.json.gz"), "traces/c.json.gz")
    assert not got["available"] and got["reason"].startswith("profiling failed:")
