"""Shards: parsing the shard from flags and the environment, and a deterministic, balanced split."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.config.sources import validate
from bench.errors import UserError
from bench.plan.matrix import Capabilities, build_plan
from bench.plan.shard import Shard, assign, cell_cost, parse_shard, shard_plan

GPU = Capabilities(device="cuda", flash_attn=False, kernels=False)


def plan(**fields: Any):
    merged = {"model": "synthetic:llama-3-8b-shape", "coverage": 3, "sequence_length": [128, 1024], **fields}
    return build_plan(validate(merged, {}, "test").config, GPU)


@pytest.mark.parametrize(
    ("environ", "flag", "expected"),
    [
        ({}, None, None),
        ({"TFBENCH_SHARD": "0/4"}, None, Shard(0, 4)),
        ({"TFBENCH_SHARD": " 3 / 4 "}, None, Shard(3, 4)),
        ({"TFBENCH_SHARD_COUNT": "8", "JOB_COMPLETION_INDEX": "7"}, None, Shard(7, 8)),
        ({"TFBENCH_SHARD": "1/2"}, "0/3", Shard(0, 3)),  # the flag wins
        ({"JOB_COMPLETION_INDEX": "3"}, None, None),  # an Indexed Job that is not sharded
    ],
)
def test_parse_shard(environ, flag, expected):
    assert parse_shard(environ, flag) == expected


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"TFBENCH_SHARD": "4/4"}, "shard index 4: allowed: 0 to 3"),
        ({"TFBENCH_SHARD": "-1/4"}, "shard index -1"),
        ({"TFBENCH_SHARD": "0/0"}, "shard count 0"),
        ({"TFBENCH_SHARD": "2"}, "allowed: i/N"),
        ({"TFBENCH_SHARD": "a/4"}, "must be an integer"),
        ({"TFBENCH_SHARD_COUNT": "4"}, "JOB_COMPLETION_INDEX is not"),
        ({"TFBENCH_SHARD_COUNT": "four", "JOB_COMPLETION_INDEX": "0"}, "TFBENCH_SHARD_COUNT = 'four'"),
        ({"TFBENCH_SHARD_COUNT": "4", "JOB_COMPLETION_INDEX": "4"}, "shard index 4"),
        ({"TFBENCH_SHARD": "0/2", "TFBENCH_SHARD_COUNT": "2"}, "both TFBENCH_SHARD and TFBENCH_SHARD_COUNT"),
    ],
)
def test_bad_shard_specs_name_the_source_and_what_is_allowed(environ, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_shard(environ)


def test_every_cell_in_exactly_one_shard_and_ids_unchanged():
    full = plan(batch_size=[1, 4, 16])
    for count in (1, 2, 3, 7, len(full.cells) + 5):
        parts = [shard_plan(full, Shard(i, count), 25) for i in range(count)]
        ids = [c.cell_id for p in parts for c in p.cells]
        assert sorted(ids) == sorted(c.cell_id for c in full.cells)
        assert len(ids) == len(set(ids))
        by_id = {c.cell_id: c for c in full.cells}
        assert all(by_id[c.cell_id] == c for p in parts for c in p.cells)  # index and all fields kept


def test_assignment_is_deterministic_and_independent_of_cell_order():
    full = plan(batch_size=[1, 4, 16])
    first = assign(full.cells, 4, 25)
    assert assign(full.cells, 4, 25) == first
    assert assign(list(reversed(full.cells)), 4, 25) == first


def test_shards_are_balanced_by_estimated_work():
    full = plan(batch_size=[1, 2, 4, 8, 16, 32])
    count, iterations = 4, 25
    owner = assign(full.cells, count, iterations)
    loads = [0] * count
    for c in full.runnable:
        loads[owner[c.cell_id]] += cell_cost(c, iterations)
    biggest = max(cell_cost(c, iterations) for c in full.runnable)
    # Greedy least-loaded assignment: no shard exceeds another by more than one cell's work.
    assert max(loads) - min(loads) <= biggest
    # Round-robin by index would not do as well on this matrix (the shapes cycle with period 12).
    naive = [0] * count
    for k, c in enumerate(full.runnable):
        naive[k % count] += cell_cost(c, iterations)
    assert max(loads) - min(loads) <= max(naive) - min(naive)
    skipped = [owner[c.cell_id] for c in full.skipped]
    assert max(skipped.count(i) for i in range(count)) - min(skipped.count(i) for i in range(count)) <= 1


@settings(max_examples=60, deadline=None)
@given(
    batches=st.lists(st.integers(1, 64), min_size=1, max_size=5, unique=True),
    seqs=st.lists(st.integers(1, 4096), min_size=1, max_size=4, unique=True),
    count=st.integers(1, 9),
)
def test_any_matrix_splits_into_a_partition(batches, seqs, count):
    full = plan(batch_size=batches, sequence_length=seqs)
    owner = assign(full.cells, count, 10)
    assert set(owner) == {c.cell_id for c in full.cells}
    assert all(0 <= i < count for i in owner.values())


def test_a_shard_without_runnable_cells_says_so():
    full = plan(coverage=None, attn_implementation="sdpa", batch_size=1, sequence_length=128)
    empty = shard_plan(full, Shard(1, 2), 25)
    assert not empty.runnable
    assert any("shard 1/2 has no cell to run" in w for w in empty.warnings)


def test_plan_shows_the_split(tmp_path, capsys):
    from bench.cli import main

    path = tmp_path / "c.yaml"
    path.write_text("model: synthetic:llama-3-8b-shape\ndevice: cuda\ncoverage: 3\nbatch_size: [1, 8]\n")
    assert main(["plan", "--config", str(path), "--json", "--shards", "3"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {c["shard"] for c in data["cells"]} == {0, 1, 2}
    assert [s["runnable"] for s in data["shards"]] == [
        sum(1 for c in data["cells"] if c["shard"] == i and c["skip_reason"] is None) for i in range(3)
    ]
    assert sum(s["work_share"] for s in data["shards"]) == pytest.approx(1.0)
    assert main(["plan", "--config", str(path), "--shards", "3"]) == 0
    assert "TFBENCH_SHARD=i/N" in capsys.readouterr().out
    assert main(["plan", "--config", str(path), "--shards", "0"]) == 2
    assert "--shards = 0" in capsys.readouterr().err
