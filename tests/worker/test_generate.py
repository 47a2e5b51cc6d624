"""The slower back ends on the CPU: flex_attention, torch.compile and continuous batching.

flex_attention and compile each cost about 30 s of compilation per cell here (every cell
compiles into its own cache), so each appears once.
"""

from __future__ import annotations

import json
import math

import pytest

from tests.conftest import cells_by_id, run_entrypoint, write_config

N = 6


@pytest.fixture(scope="module")
def backends(tmp_path_factory):
    base = tmp_path_factory.mktemp("backends")
    lines = [
        {"run_name": "flex", "attn_implementation": "flex_attention"},
        {"run_name": "compiled", "attn_implementation": "sdpa", "compile": "default"},
        {
            "run_name": "cb",
            "attn_implementation": ["sdpa", "eager", "flex_attention"],
            "continuous_batching": True,
            "batch_size": 3,
        },
    ]
    config = base / "config.jsonl"
    defaults = json.loads(write_config(base, name="base.json").read_text())
    config.write_text("".join(json.dumps({**defaults, **line}) + "\n" for line in lines))
    output = base / "results"
    proc = run_entrypoint(config, output, timeout=600)
    runs = {p.name.rsplit("-", 1)[-1]: p for p in output.iterdir()}
    return {"proc": proc, "runs": runs}


def _records(backends, name):
    return list(cells_by_id(backends["runs"][name]).values())


def test_jsonl_runs_each_line_in_order(backends):
    proc = backends["proc"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert set(backends["runs"]) == {"flex", "compiled", "cb"}
    started = {
        name: json.loads((p / "run.json").read_text())["started_at"] for name, p in backends["runs"].items()
    }
    assert started["flex"] < started["compiled"] < started["cb"]


def test_flex_attention_runs_uncompiled(backends):
    (rec,) = _records(backends, "flex")
    assert rec["status"] == "ok", rec.get("reason")
    assert rec["effective_attn_implementation"] == "flex_attention"


def test_compiled_cell_uses_compile(backends):
    (rec,) = _records(backends, "compiled")
    assert rec["status"] == "ok", rec.get("reason")
    assert rec["cell"]["compile"] == "default"
    assert rec["compiled_graphs"] >= 1  # transformers would otherwise silently run uncompiled
    for run in rec["runs"]:
        assert math.isclose(run["ttft"] + (N - 1) * run["tpot"], run["e2e_latency"], rel_tol=1e-9)


def test_continuous_batching_cells(backends):
    records = {r["cell"]["attn_implementation"]: r for r in _records(backends, "cb")}
    assert records["flex_attention"]["status"] == "skipped"
    assert "continuous batching does not support flex_attention" in records["flex_attention"]["reason"]
    expected_attn = {"sdpa": "sdpa", "eager": "paged|eager"}
    for attn, rec in ((a, records[a]) for a in ("sdpa", "eager")):
        assert rec["status"] == "ok", rec.get("reason")
        assert rec["effective_attn_implementation"] == expected_attn[attn]
        assert rec["continuous_batching_config"]["auto_switch_to_flash"] is False
        assert rec["continuous_batching_config"]["allow_block_sharing"] is False
        assert rec["inputs"] == {"shape": [3, 16], "new_tokens": N}
        # Per-request ttft and tpot: batch x iterations requests; e2e per batch.
        assert rec["stats"]["ttft"]["n"] == 3 * 3
        assert rec["stats"]["tpot"]["n"] == 3 * 3
        assert rec["stats"]["e2e_latency"]["n"] == 3
        assert rec["stats"]["decode_throughput"]["n"] == 0  # prefill and decode interleave: no split
        for run in rec["runs"]:
            assert len(run["requests"]) == 3
            assert math.isclose(run["e2e_throughput"], 3 * N / run["e2e_latency"])
            for req in run["requests"]:
                assert len(req["token_times"]) == N
                assert math.isclose(req["ttft"] + (N - 1) * req["tpot"], req["e2e_latency"], rel_tol=1e-9)
                assert req["e2e_latency"] <= run["e2e_latency"]
