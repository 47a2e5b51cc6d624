"""`bench.history` on run directories written on the spot (the records of tests.test_compare, one
measured commit per run, start times an hour apart) and on the local fake Hub after real pushes."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from huggingface_hub import constants as hf_constants

from bench.analysis import levels as lv
from bench.analysis.noise import Drift
from bench.errors import UserError
from bench.hub import push as hub
from bench.hub.pull import load_hub_run
from bench.output import history_command as hist
from bench.output.history import plot
from tests.analysis.test_compare import CELLS, ENV, record, write_run
from tests.hub_server import FakeHub, serve

TOKEN = "hf_FAKEtestTOKEN0123456789abcdefXYZ"
REPO = "tfbench-org/history"
START = datetime(2026, 11, 1, 8, 0, tzinfo=timezone.utc)
SLOW = CELLS[1]  # the cell whose tpot moves
STILL = CELLS[0]
A100 = {
    **ENV,
    "gpus": [
        {"index": 0, "name": "NVIDIA A100-SXM4-80GB", "memory_total_bytes": 80 * 2**30, "uuid": "GPU-9"}
    ],
}


def sha(i: int) -> str:
    return hashlib.sha1(f"commit {i}".encode()).hexdigest()


def write_history(
    root: Path,
    levels: list[float],
    *,
    n: int = 20,
    noise: float = 0.02,
    environments: list[dict[str, Any]] | None = None,
    commits: list[int] | None = None,
    seed: int = 0,
) -> list[Path]:
    """One run per level (the tpot factor of SLOW), commit i measured at START + i hours.

    Directory names are not in time order, so that the order can only come from the start times.
    """
    paths = []
    for i, level in enumerate(levels):
        rng = np.random.default_rng(seed * 1000 + i)
        recs = [record(STILL, rng, n=n, noise=noise), record(SLOW, rng, n=n, noise=noise, tpot_factor=level)]
        name = f"run-{hashlib.md5(str(i).encode()).hexdigest()[:6]}"
        env = environments[i] if environments else ENV
        commit = sha(commits[i] if commits else i)
        path = write_run(root / name, recs, environment=env, sha=commit)
        meta = json.loads((path / "run.json").read_text())
        meta["started_at"] = (START + timedelta(hours=i)).isoformat(timespec="milliseconds")
        (path / "run.json").write_text(json.dumps(meta))
        paths.append(path)
    return paths


STEP = [1.0] * 5 + [1.10] * 5  # 10% slower from the 6th commit on


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch):
    yield from serve(monkeypatch, TOKEN)


# ---------------------------------------------------------------------------------------------
# Local directories


def test_a_ten_percent_step_is_one_change_point_at_its_commit(tmp_path: Path) -> None:
    write_history(tmp_path, STEP)
    points = hist.load_local(tmp_path, "tpot", SLOW["cell_id"])
    assert [p.commit for p in points] == [sha(i) for i in range(10)]  # by start time, not by name
    assert all(
        p.n == 20 and len(p.samples) == 20 and p.hardware == "1x NVIDIA H100 80GB HBM3" for p in points
    )
    assert points[0].cell_name == SLOW["name"] and points[0].run_id.startswith("run-")
    (cp,) = lv.change_points(points)
    assert cp.index == 5 and cp.commit == sha(5) and cp.label == sha(5)[:12]
    assert cp.direction == lv.SLOWER and cp.method == "t on runs, the history's run spread"
    assert 1.08 < cp.ratio < 1.12 and cp.ci_low > 1.03 and cp.p_value < 0.01
    assert cp.before == [sha(i)[:12] for i in (2, 3, 4)] and cp.after == [sha(i)[:12] for i in (5, 6, 7)]
    assert cp.strength > 3  # |t|: the shift over its standard error
    # A throughput falls at the same commit: lower is worse there, so it is "slower" too.
    (tp,) = lv.change_points(hist.load_local(tmp_path, "decode_throughput", SLOW["cell_id"]))
    assert tp.index == 5 and tp.direction == lv.SLOWER and tp.ratio < 1 / 1.05
    # The other cell did not move.
    assert lv.change_points(hist.load_local(tmp_path, "tpot", STILL["cell_id"])) == []


def test_a_speed_up_and_a_step_at_the_newest_commit(tmp_path: Path) -> None:
    write_history(tmp_path, [1.0] * 4 + [0.85] * 4 + [1.0])
    cps = lv.change_points(hist.load_local(tmp_path, "tpot", SLOW["cell_id"]))
    assert [(c.index, c.direction) for c in cps] == [(4, lv.FASTER), (8, lv.SLOWER)]
    assert cps[1].after == [sha(8)[:12]]  # the newest commit is judged on its own


def test_a_flat_noisy_history_has_no_change_point(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    levels = [math.exp(rng.normal(0, 0.01)) for _ in range(12)]  # run-to-run drift besides the noise
    write_history(tmp_path, levels, noise=0.03)
    for metric in ("tpot", "ttft", "e2e_latency", "decode_throughput"):
        assert lv.change_points(hist.load_local(tmp_path, metric, SLOW["cell_id"])) == [], metric


def test_runs_of_one_commit_are_pooled(tmp_path: Path) -> None:
    write_history(tmp_path, [1.0, 1.0, 1.0, 1.1], commits=[0, 1, 1, 2])
    points = hist.load_local(tmp_path, "tpot", SLOW["cell_id"])
    groups = lv.commits(points)
    assert [g.sha for g in groups] == [sha(0), sha(1), sha(2)]
    assert len(groups[1].run_ids) == 2 and groups[1].n == 40 and len(groups[1].samples) == 40
    assert groups[1].p50 == pytest.approx(float(np.median(groups[1].samples)))
    assert groups[1].p10 < groups[1].p50 < groups[1].p90
    # The newest commit is one run: how far one run may drift comes from the hardware's
    # calibration; the assumed drift (5%) is too wide for a 10% step of one run to be sure.
    assert lv.change_points(points) == []
    (cp,) = lv.change_points(points, drift=Drift(0.01**2, 0.0, 20.0, "calibrated"))
    assert cp.index == 2 and cp.direction == lv.SLOWER


def test_statistics_only_use_the_p50_rule(tmp_path: Path) -> None:
    """Points without raw samples (the Hub's summarized rows) have no run level to test."""
    write_history(tmp_path, STEP, n=2)
    points = [
        dataclasses.replace(p, samples=[], level=None, level_var=None)
        for p in hist.load_local(tmp_path, "tpot", SLOW["cell_id"])
    ]
    (cp,) = lv.change_points(points)
    assert cp.index == 5 and cp.method == "p50 rule" and cp.p_value is None and cp.ci_low is None
    assert cp.direction == lv.SLOWER and 1.05 < cp.ratio < 1.15


def test_other_hardware_is_left_out_and_counted(tmp_path: Path) -> None:
    envs = [ENV if i % 2 == 0 else A100 for i in range(10)]
    levels = [1.0 if i % 2 == 0 else 1.5 for i in range(10)]  # the A100 is much slower here
    write_history(tmp_path, levels, environments=envs)
    points = hist.load_local(tmp_path, "tpot", SLOW["cell_id"])
    kept, excluded = lv.select_hardware(points)  # the newest run (9) is on the A100
    assert {p.hardware for p in kept} == {"1x NVIDIA A100-SXM4-80GB"} and len(kept) == 5
    assert excluded == {"1x NVIDIA H100 80GB HBM3": 5}
    kept, excluded = lv.select_hardware(points, "h100")
    assert len(kept) == 5 and excluded == {"1x NVIDIA A100-SXM4-80GB": 5}
    with pytest.raises(UserError, match="no run on hardware matching 'mi300'.*H100"):
        lv.select_hardware(points, "mi300")
    text, code = hist.history(str(tmp_path), None, "tpot", SLOW["cell_id"], None, 0.05, None, "text")
    assert code == 0
    assert "left out: 5 runs on other hardware: 1x NVIDIA H100 80GB HBM3 (5)" in text
    assert "5 commits, 5 runs" in text and "no level shift" in text


def test_history_text_json_and_markdown(tmp_path: Path) -> None:
    write_history(tmp_path, STEP)
    text, code = hist.history(str(tmp_path), None, "tpot", SLOW["cell_id"][:6], None, 0.05, None, "text")
    assert code == 0
    lines = text.splitlines()
    assert lines[0] == f"tpot of cell {SLOW['cell_id']} ({SLOW['name']})"
    rows = [line for line in lines if line.startswith(tuple(sha(i)[:12] for i in range(10)))]
    assert [r.split()[0] for r in rows] == [sha(i)[:12] for i in range(10)]
    assert re.search(r"slower x1\.(09|1)", rows[5]) and all("slower" not in r for r in rows[:5] + rows[6:])
    assert "1 level shift (threshold 5%, window 3):" in text
    assert "measurement order" in text
    data = json.loads(hist.history(str(tmp_path), None, "tpot", SLOW["name"], None, 0.05, None, "json")[0])
    assert data["cell_id"] == SLOW["cell_id"] and data["unit"] == "s" and data["better"] == "lower"
    assert [c["sha"] for c in data["commits"]] == [sha(i) for i in range(10)]
    assert [c["index"] for c in data["change_points"]] == [5]
    assert data["commits"][5]["change_point"]["direction"] == "slower"
    assert data["commits"][5]["ratio_to_previous"] > 1.05 and data["commits"][0]["ratio_to_previous"] is None
    assert len(data["runs"]) == 10 and len(data["runs"][0]["samples"]) == 20 and data["exit_code"] == 0
    md, _ = hist.history(str(tmp_path), None, "tpot", SLOW["cell_id"], None, 0.05, None, "markdown")
    assert md.startswith("### tfbench history: tpot") and "🔴 slower" in md
    # A bigger threshold hides the 10% step.
    text, _ = hist.history(str(tmp_path), None, "tpot", SLOW["cell_id"], None, 0.2, None, "text")
    assert "no level shift (threshold 20%" in text


def test_usage_errors(tmp_path: Path) -> None:
    write_history(tmp_path, [1.0, 1.0])
    cell = SLOW["cell_id"]
    with pytest.raises(UserError, match="exactly one"):
        hist.history(str(tmp_path), REPO, "tpot", cell, None, 0.05, None, "text")
    with pytest.raises(UserError, match="exactly one"):
        hist.history(None, None, "tpot", cell, None, 0.05, None, "text")
    with pytest.raises(UserError, match="metric 'itl': allowed: e2e_latency"):
        hist.history(str(tmp_path), None, "itl", cell, None, 0.05, None, "text")
    with pytest.raises(UserError, match="--format 'table'"):
        hist.history(str(tmp_path), None, "tpot", cell, None, 0.05, None, "table")
    with pytest.raises(UserError, match="threshold"):
        hist.history(str(tmp_path), None, "tpot", cell, None, -1, None, "text")
    with pytest.raises(UserError, match=f"no cell 'ffffffff' in {tmp_path}; cells there: .*{cell}"):
        hist.history(str(tmp_path), None, "tpot", "ffffffff", None, 0.05, None, "text")
    with pytest.raises(UserError, match="no such directory"):
        hist.load_local(tmp_path / "missing", "tpot", cell)
    with pytest.raises(UserError, match="holds no run directories"):
        hist.load_local(tmp_path / next(tmp_path.iterdir()).name / "cells", "tpot", cell)


def test_ambiguous_names_and_cells_never_ok(tmp_path: Path) -> None:
    twin = {**copy.deepcopy(SLOW), "cell_id": "f" * 16, "model": "synthetic:llama-tiny"}  # same name
    failed = {**copy.deepcopy(STILL), "cell_id": "e" * 16, "name": "gone"}
    rng = np.random.default_rng(0)
    recs = [record(SLOW, rng), record(twin, rng), record(failed, rng, status="failed", reason="boom")]
    write_run(tmp_path / "one", recs)
    (tmp_path / "one" / "summary.jsonl").write_text(
        "".join(json.dumps({"cell_id": r["cell_id"], "name": r["cell"]["name"]}) + "\n" for r in recs)
    )
    with pytest.raises(UserError, match="ambiguous.*2 cells named"):
        hist.load_local(tmp_path, "tpot", SLOW["name"])
    assert len(hist.load_local(tmp_path, "tpot", "ffff")) == 1  # a unique prefix
    assert hist.load_local(tmp_path, "tpot", "gone") == []
    with pytest.raises(UserError, match="no ok measurement.*failed 1"):
        hist.history(str(tmp_path), None, "tpot", "gone", None, 0.05, None, "text")


def test_the_plot_is_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    write_history(tmp_path / "runs", STEP)
    out = tmp_path / "tpot.png"
    text, _ = hist.history(str(tmp_path / "runs"), None, "tpot", SLOW["cell_id"], None, 0.05, out, "text")
    assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and out.stat().st_size > 5000
    assert text.endswith(f"plot: {out}\n")
    points = hist.load_local(tmp_path / "runs", "prefill_throughput", SLOW["cell_id"])
    plot(points, [], "prefill_throughput", tmp_path / "tp.png")
    assert (tmp_path / "tp.png").read_bytes().startswith(b"\x89PNG")
    with pytest.raises(UserError, match="not a directory"):
        plot(points, [], "tpot", tmp_path / "nowhere" / "x.png")


# ---------------------------------------------------------------------------------------------
# The Hub


def _without_source(points: list[lv.Point]) -> list[dict[str, Any]]:
    return [{k: v for k, v in vars(p).items() if k != "source"} for p in points]


def test_the_hub_gives_the_same_points_as_the_directory(
    fake_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = write_history(tmp_path / "runs", [1.0, 1.0, 1.1])
    for run in reversed(runs):  # pushed in another order than measured
        hub.push_run(run, REPO, endpoint=fake_hub.endpoint, backoff=0)
    pushes = len(fake_hub.calls())
    local = hist.load_local(tmp_path / "runs", "tpot", SLOW["cell_id"])
    cache = tmp_path / "cache"
    remote = hist.load_hub(REPO, "tpot", SLOW["cell_id"], endpoint=fake_hub.endpoint, cache_dir=cache)
    assert _without_source(remote) == _without_source(local)
    assert remote[0].source == f"hub:{REPO}/full/{runs[0].name}.jsonl"
    reads = fake_hub.calls()[pushes:]
    assert {r.endpoint for r in reads} == {"repo_info", "resolve"}
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in reads)
    # Cached at the repo's commit: a second read lists the repo and downloads nothing.
    again = hist.load_hub(REPO, "tpot", SLOW["cell_id"][:8], endpoint=fake_hub.endpoint, cache_dir=cache)
    assert _without_source(again) == _without_source(local)
    assert [r.endpoint for r in fake_hub.calls()[pushes + len(reads) :]] == ["repo_info"]
    # The summarized files: statistics only, the same p50s.
    summ = hist.load_hub(
        REPO, "tpot", SLOW["cell_id"], endpoint=fake_hub.endpoint, cache_dir=cache, raw=False
    )
    assert [p.samples for p in summ] == [[], [], []] and [p.n for p in summ] == [20, 20, 20]
    assert [p.p50 for p in summ] == pytest.approx([p.p50 for p in local], rel=1e-12)
    assert summ[0].source == f"hub:{REPO}/summarized/{runs[0].name}.jsonl"
    # Without HF_TOKEN the repo is read anonymously (never with a stored login).
    monkeypatch.delenv("HF_TOKEN")
    before = len(fake_hub.calls())
    hist.load_hub(REPO, "tpot", SLOW["cell_id"], endpoint=fake_hub.endpoint, cache_dir=tmp_path / "anon")
    assert all("authorization" not in r.headers for r in fake_hub.calls()[before:])
    text, code = hist.history(
        None,
        REPO,
        "tpot",
        SLOW["cell_id"],
        None,
        0.05,
        None,
        "text",
        endpoint=fake_hub.endpoint,
        cache_dir=cache,
    )
    assert code == 0 and "3 commits, 3 runs" in text


def test_hub_errors_are_usage_errors(
    fake_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(UserError, match="no such dataset repo"):
        hist.load_hub(REPO, "tpot", "abcd", endpoint=fake_hub.endpoint, cache_dir=tmp_path)
    fake_hub.fail(401, body={"error": f"bad token {TOKEN}"})
    with pytest.raises(UserError) as info:
        hist.load_hub(REPO, "tpot", "abcd", endpoint=fake_hub.endpoint, cache_dir=tmp_path)
    assert TOKEN not in str(info.value)
    with pytest.raises(UserError, match="ORG/NAME"):
        hist.load_hub("not a repo", "tpot", "abcd", endpoint=fake_hub.endpoint)
    calls = len(fake_hub.calls())
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="HF_HUB_OFFLINE=1"):
        hist.load_hub(REPO, "tpot", "abcd", endpoint=fake_hub.endpoint, cache_dir=tmp_path)
    with pytest.raises(UserError, match="HF_HUB_OFFLINE=1"):
        hist.history(None, REPO, "tpot", "abcd", None, 0.05, None, "text", endpoint=fake_hub.endpoint)
    assert len(fake_hub.calls()) == calls  # nothing was sent


def test_a_hub_repo_without_runs_and_an_unknown_cell(fake_hub: FakeHub, tmp_path: Path) -> None:
    (run,) = write_history(tmp_path / "runs", [1.0])
    hub.push_run(run, REPO, endpoint=fake_hub.endpoint, backoff=0)
    with pytest.raises(
        UserError, match=f"no cell 'abcdef' in the Hub dataset {REPO}; cells there: .*{SLOW['cell_id']}"
    ):
        hist.load_hub(REPO, "tpot", "abcdef", endpoint=fake_hub.endpoint, cache_dir=tmp_path / "c")
    fake_hub.repos[REPO].files = {"README.md": b"# nothing\n"}
    with pytest.raises(UserError, match="holds no tfbench runs"):
        hist.load_hub(REPO, "tpot", "abcdef", endpoint=fake_hub.endpoint, cache_dir=tmp_path / "c")


def test_compare_reads_runs_back_from_the_hub(fake_hub: FakeHub, tmp_path: Path) -> None:
    """`tfbench compare hub:ORG/NAME@COMMIT ...`: the same verdicts as on the run directories."""
    from bench.analysis.compare import compare_runs
    from bench.output.compare import to_json
    from bench.results.store import open_run as load_run

    base, new = write_history(tmp_path / "runs", [1.0, 1.10])
    for run in (base, new):
        hub.push_run(run, REPO, endpoint=fake_hub.endpoint, backoff=0)
    remote_base = load_hub_run(REPO, sha(0)[:8], endpoint=fake_hub.endpoint, cache_dir=tmp_path / "c")
    remote_new = load_hub_run(REPO, new.name, endpoint=fake_hub.endpoint, cache_dir=tmp_path / "c")
    local = to_json(compare_runs(load_run(base), load_run(new)))
    remote = to_json(compare_runs(remote_base, remote_new))
    assert local["summary"]["counts"] == remote["summary"]["counts"]
    assert local["summary"]["counts"]["regression"] == 1
    ratios = [[m["ratio"] for m in c["metrics"].values()] for c in remote["cells"]]
    assert ratios == [[m["ratio"] for m in c["metrics"].values()] for c in local["cells"]]
    with pytest.raises(UserError, match="no run of .* matches 'feedbeef'"):
        load_hub_run(REPO, "feedbeef", endpoint=fake_hub.endpoint, cache_dir=tmp_path / "c")


def test_a_change_of_settings_is_marked_never_flagged(tmp_path: Path) -> None:
    """Runs measured with other settings are not comparable: the windows stop at the change, and
    the table says where it happened."""
    paths = write_history(tmp_path, [1.0] * 4 + [1.2] * 4)
    for path in paths[4:]:  # the last four runs: other timed-run settings
        for cell in (path / "cells").glob("*.json"):
            rec = json.loads(cell.read_text())
            rec["settings"] = {**rec["settings"], "measurement_iterations": 2}
            cell.write_text(json.dumps(rec))
    points = hist.load_local(tmp_path, "tpot", SLOW["cell_id"])
    assert lv.change_points(points) == []
    (change,) = lv.settings_changes(lv.commits(points))
    assert change.index == 4 and "timed runs 2" in change.after and "timed runs 20" in change.before
    text = hist.history(str(tmp_path), None, "tpot", SLOW["cell_id"])[0]
    row = next(line for line in text.splitlines() if line.startswith(sha(4)[:12]))
    assert "settings changed: warm-up 2, timed runs 2" in row and "slower" not in text


def test_runs_without_a_commit_are_labelled_by_when_they_ran(tmp_path: Path) -> None:
    paths = write_history(tmp_path, [1.0, 1.0, 1.0])
    for path in paths:
        meta = json.loads((path / "run.json").read_text())
        meta["measured_commit"] = {"sha": None, "source": None}
        (path / "run.json").write_text(json.dumps(meta))
    groups = lv.commits(hist.load_local(tmp_path, "tpot", SLOW["cell_id"]))
    labels = [g.label for g in groups]
    assert labels == [f"11-01 {8 + i:02d}:00 {p.name}" for i, p in enumerate(paths)]
    assert len({g.short for g in groups}) == 3  # the plot's axis tells them apart too


def _simulated(levels: list[float], rng: np.random.Generator, cv: float = 0.08) -> list[lv.Point]:
    """One run per commit, 4 processes each, whose run level moves with CV `cv` around the given levels."""
    out = []
    for i, level in enumerate(levels):
        medians = level * np.exp(rng.normal(rng.normal(0, cv), 0.03, size=4))
        out.append(
            lv.Point(
                run_id=f"r{i:03d}",
                commit=sha(i),
                branch=None,
                started_at=(START + timedelta(hours=i)).isoformat(),
                hardware="cpu: sim",
                cell_id="c" * 16,
                cell_name="sim",
                metric="tpot",
                samples=list(medians),
                p50=float(np.median(medians)),
                n=4,
                source="sim",
                level=float(np.mean(np.log(medians))),
                level_var=float(np.var(np.log(medians), ddof=1) / 4),
            )
        )
    return out


def _share_flagged(
    levels: list[float], at: int | None, seed: int, cv: float = 0.08, histories: int = 200
) -> float:
    """The share of simulated histories with a flag at commit `at` (None: with any flag)."""
    rng = np.random.default_rng(seed)
    hit = 0
    for _ in range(histories):
        cps = lv.change_points(_simulated(levels, rng, cv))
        hit += any(c.index == at for c in cps) if at is not None else bool(cps)
    return hit / histories


@pytest.mark.parametrize("cv", [0.02, 0.08])
def test_a_history_of_identical_code_rarely_flags_anything(cv):
    """Every commit of a history is tested, so their p-values are adjusted together
    (Benjamini-Hochberg): of 200 histories of 20 commits of identical code, about alpha of them
    may show any flag at all (measured: 1-2%). Tested one by one at alpha, 43% did."""
    assert _share_flagged([1.0] * 20, None, seed=7, cv=cv) <= 0.05


@pytest.mark.parametrize("cv, step, power", [(0.02, 1.3, 0.95), (0.08, 1.5, 0.6)])
def test_a_step_is_still_found(cv, step, power):
    """What the adjustment leaves of the power, with the run spread taken from the whole history
    (measured: a 30% step at 2% run noise in 100% of histories, a 50% step at 8% noise in 75%)."""
    assert _share_flagged([1.0] * 10 + [step] * 10, 10, seed=11, cv=cv) >= power


def test_the_adjustment_is_scipys_benjamini_hochberg():
    from scipy.stats import false_discovery_control

    rng = np.random.default_rng(3)
    points = _simulated([1.0] * 10 + [1.5] * 10, rng)
    tested = []
    real = lv.adjust_for_all_commits
    try:
        lv.adjust_for_all_commits = lambda cps, threshold, alpha: (
            tested.extend(cps) or real(cps, threshold, alpha)
        )
        (cp,) = lv.change_points(points)
    finally:
        lv.adjust_for_all_commits = real
    assert cp.index == 10 and cp.direction == "slower"
    assert cp.method == "t on runs, the history's run spread"
    qs = false_discovery_control([c.p_value for c in tested], method="bh")
    assert [c.q_value for c in tested] == pytest.approx(list(qs))
    assert cp.p_value <= cp.q_value < 0.05
