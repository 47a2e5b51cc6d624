"""`tfbench calibrate`: a machine's drift learned from repeated runs, kept beside them, used by compare."""

from __future__ import annotations

import copy
import json
import math
import os

import numpy as np

from bench.cli import main
from bench.results import calibration
from tests.analysis.test_compare import CELLS, ENV, make_run, record, write_run


def _runs(tmp_path, count, offset_sd=0.03, seed=0):
    """Runs of one matrix made apart: every cell of a run shares a random offset (the drift)."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        factor = math.exp(rng.normal(0, offset_sd))
        recs = [record(axes, rng, ttft_factor=factor, tpot_factor=factor) for axes in CELLS]
        paths.append(write_run(tmp_path / "out" / f"cal-{i}", recs, ab=None))
    return paths


def test_calibrate_writes_the_drift_beside_the_runs_and_compare_uses_it(tmp_path, capsys):
    paths = _runs(tmp_path, 6)
    assert main(["calibrate", *map(str, paths)]) == 0
    out = capsys.readouterr().out
    assert "drift between 6 runs" in out and "tpot" in out
    cal = calibration.load(tmp_path / "out" / "calibration.json")
    (entry,) = cal.hardware.values()
    assert list(cal.hardware) == ["1x NVIDIA H100 80GB HBM3"]
    assert entry.runs == [p.name for p in paths] and entry.metrics["tpot"].df == 5
    assert 0.005 < math.sqrt(entry.metrics["tpot"].run_var) < 0.08
    assert entry.metrics["tpot"].process_var is not None

    # compare finds it beside the runs and names it.
    assert main(["compare", str(paths[0]), str(paths[1]), "--format", "json"]) in (0, 1)
    data = json.loads(capsys.readouterr().out)
    assert data["drift"].startswith("calibrated (")
    # An explicit file wins; a missing one is a mistake (exit 2).
    assert main(["compare", str(paths[0]), str(paths[1]), "--calibration", str(tmp_path / "nope.json")]) == 2
    assert "no such file" in capsys.readouterr().err
    # TFBENCH_CALIBRATION names the file as --calibration does.
    moved = tmp_path / "kept.json"
    (tmp_path / "out" / "calibration.json").rename(moved)
    os.environ["TFBENCH_CALIBRATION"] = str(moved)
    try:
        assert main(["compare", str(paths[0]), str(paths[1]), "--format", "json"]) in (0, 1)
    finally:
        del os.environ["TFBENCH_CALIBRATION"]
    assert json.loads(capsys.readouterr().out)["drift"].startswith(f"calibrated ({moved}")


def test_calibrate_refuses_what_it_cannot_learn_from(tmp_path, capsys):
    paths = _runs(tmp_path, 2)
    assert main(["calibrate", *map(str, paths)]) == 2
    assert "at least 3 runs" in capsys.readouterr().err
    other = copy.deepcopy(ENV)
    other["gpus"][0]["name"] = "NVIDIA H200"
    rng = np.random.default_rng(1)
    h200 = write_run(tmp_path / "out" / "h200", [record(c, rng) for c in CELLS], environment=other, ab=None)
    assert main(["calibrate", *map(str, paths), str(h200)]) == 2
    assert "different hardware" in capsys.readouterr().err


def test_a_calibration_file_that_is_not_one_is_named(tmp_path, capsys):
    base = make_run(tmp_path / "b", seed=1, ab=None)
    bad = tmp_path / "calibration.json"
    bad.write_text(json.dumps({"hardware": {"x": {"metrics": {"tpot": {"run_var": -1, "df": 3}}}}}))
    assert main(["compare", str(base), str(base), "--calibration", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "run_var" in err and "Traceback" not in err
