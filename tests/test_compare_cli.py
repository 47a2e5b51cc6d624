"""`tfbench compare` as CI runs it: exit 1 on a known regression, 0 on identical runs, formats."""

from __future__ import annotations

import json

import pytest

from bench.cli import main
from tests.analysis.test_compare import make_run


def test_known_slowdown_exits_1_and_says_where(tmp_path, capsys):
    base = make_run(tmp_path / "base", seed=1)
    new = make_run(tmp_path / "new", seed=2, changes={1: {"tpot_factor": 1.10}})
    assert main(["compare", str(base), str(new), "--format", "markdown"]) == 1
    text = capsys.readouterr().out
    assert "1 regression" in text and "regression" in text.split("\n")[0]
    assert main(["compare", str(base), str(new), "--format", "json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["summary"]["exit_code"] == 1
    assert main(["compare", str(base), str(new)]) == 1  # the terminal table
    assert "regression" in capsys.readouterr().out


def test_identical_runs_exit_0(tmp_path, capsys):
    base = make_run(tmp_path / "base", seed=1)
    assert main(["compare", str(base), str(base), "--format", "markdown"]) == 0
    assert "0 regressions" in capsys.readouterr().out


def test_a_threshold_above_the_change_hides_it(tmp_path, capsys):
    base = make_run(tmp_path / "base", seed=1)
    new = make_run(tmp_path / "new", seed=2, changes={1: {"tpot_factor": 1.10}})
    args = ["compare", str(base), str(new), "--format", "json"]
    assert main([*args, "--threshold", "0.5"]) == 0
    capsys.readouterr()
    # Per metric: the slower tpot also shows in e2e and both throughputs; raising only tpot's
    # threshold leaves those as regressions, raising all four hides the change.
    assert main([*args, "--threshold", "tpot=0.5"]) == 1
    capsys.readouterr()
    affected = ("tpot", "e2e_latency", "e2e_throughput", "decode_throughput")
    assert main([*args, *[x for m in affected for x in ("--threshold", f"{m}=0.5")]]) == 0
    capsys.readouterr()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--threshold", "tpot=lots"], "FRACTION must be a number"),
        (["--threshold", "speed=0.1"], "unknown metric 'speed'"),
    ],
)
def test_bad_thresholds_exit_2(tmp_path, capsys, extra, message):
    base = make_run(tmp_path / "base", seed=1)
    assert main(["compare", str(base), str(base), *extra]) == 2
    assert message in capsys.readouterr().err


def test_not_a_run_exits_2(tmp_path, capsys):
    assert main(["compare", str(tmp_path), str(tmp_path)]) == 2
    assert str(tmp_path) in capsys.readouterr().err
