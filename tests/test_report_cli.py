"""`tfbench report`, `compare --html/--png` and `history` as a user runs them, on a real run and on
constructed ones: the files are written and the exit codes are right."""

from __future__ import annotations

import json

from bench.cli import main
from tests.analysis.test_compare import make_run
from tests.analysis.test_levels import SLOW, STEP, sha, write_history
from tests.conftest import only_run_dir, run_entrypoint, write_config

PNG = b"\x89PNG\r\n\x1a\n"


def test_report_of_a_real_run_writes_html_and_pngs(tmp_path, capsys):
    config = write_config(tmp_path, attn_implementation=["eager", "sdpa"], batch_size=[1, 2])
    proc = run_entrypoint(config, tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    run_dir = only_run_dir(tmp_path / "out")
    html, png = tmp_path / "report.html", tmp_path / "png"
    assert main(["report", str(run_dir), "--html", str(html), "--png", str(png)]) == 0
    assert "sdpa" in capsys.readouterr().out
    page = html.read_text()
    assert "data:image/png;base64," in page
    # The cells' names in words; the header says how the run was measured and on how many cores.
    assert "eager, no compile, b1 s" in page and "/eager-mode" not in page
    assert "sequence length: <b>" in page and "warm-up run" in page and "CPU cores: <b>" in page
    pngs = sorted(png.glob("*.png"))
    assert [p.stem for p in pngs] == ["latency", "throughput", "ttft_tpot"]
    assert all(p.read_bytes().startswith(PNG) and p.stat().st_size > 5000 for p in pngs)


def test_compare_writes_its_ratio_plots(tmp_path, capsys):
    base = make_run(tmp_path / "base", seed=1)
    new = make_run(tmp_path / "new", seed=2, changes={1: {"tpot_factor": 1.10}})
    html = tmp_path / "cmp.html"
    assert main(["compare", str(base), str(new), "--html", str(html), "--png", str(tmp_path / "png")]) == 1
    capsys.readouterr()
    page = html.read_text()
    assert "regression" in page
    assert (tmp_path / "png" / "compare_tpot.png").read_bytes().startswith(PNG)
    # The command hands the runs over: each compared cell's samples are drawn and linked.
    dists = sorted((tmp_path / "png").glob("dist_*.png"))
    assert len(dists) == 3 and page.count('<td class=name><a href="#dist_') == 3


def test_history_flags_the_commit_that_slowed_down(tmp_path, capsys):
    write_history(tmp_path / "runs", STEP)
    plot = tmp_path / "history.png"
    args = ["history", str(tmp_path / "runs"), "--metric", "tpot", "--cell", SLOW["cell_id"]]
    assert main([*args, "--format", "json", "--plot", str(plot)]) == 0
    data = json.loads(capsys.readouterr().out)
    (cp,) = data["change_points"]
    assert cp["commit"] == sha(5) and cp["direction"] == "slower"
    assert plot.read_bytes().startswith(PNG)
    assert main([*args, "--metric", "speed"]) == 2
    assert "speed" in capsys.readouterr().err


def test_a_large_run_is_printed_as_plain_aligned_text():
    """Above RICH_ROW_LIMIT rows the summary is plain text: one line per cell, numbers right-aligned."""
    import io

    import numpy as np
    from rich.console import Console

    from bench.output.tables import RICH_ROW_LIMIT, SUMMARY_HEADERS, print_summary
    from bench.results.records import CellRecord
    from tests.analysis.test_compare import cell_axes, record

    rng = np.random.default_rng(0)
    n = RICH_ROW_LIMIT + 1
    records = [record(cell_axes(i, batch=i + 1), rng, n=3) for i in range(n - 1)]
    records.append(record(cell_axes(n - 1, batch=n), rng, status="failed", reason="boom"))
    buf = io.StringIO()
    typed = [CellRecord.model_validate(r) for r in records]
    print_summary(Console(file=buf, width=100), typed, title="big")
    lines = buf.getvalue().splitlines()
    assert lines[0] == "big" and lines[1].split()[:3] == list(SUMMARY_HEADERS[:3])
    rows = lines[2 : 2 + n]
    assert len({len(r) for r in rows[:-1]}) == 1  # aligned: equal widths up to the last column
    assert rows[0].split()[-1] == records[0]["cell_id"][:8]
    assert "cells without measurements" in lines and lines[-1].split()[-2:] == [
        "boom",
        records[-1]["cell_id"][:8],
    ]
