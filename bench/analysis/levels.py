"""One metric of one cell across commits: its level, and the commits where the level shifted.

`tfbench history DIR --metric tpot --cell CELL_ID` reads the run directories under DIR (or DIR
itself when it is one run); `tfbench history --repo ORG/NAME ...` reads a Hub dataset that
`push_to_hub` filled. It prints one row per measured commit (and writes a PNG with --plot) and
flags the commits where the metric's level shifted. Informational: the exit code is 0 whatever
the history shows (`tfbench compare` is the gate for one change); usage errors exit 2.

Points and commits
------------------
A point is one run's measurement of the cell (its status `ok` in that run): the run id, the
measured commit, the branch, the run's start time, the hardware label (the GPUs, or the CPU:
the `hardware` column of the Hub rows, computed the same way for local runs), and the raw per-run
samples of the metric (bench.compare.samples: one value per timed run; continuous batching: the
median over each run's requests). Its p50 is the median of those samples, or the stored p50 when
there are none (the Hub's "summarized" rows hold statistics only).

Commit order is the order the commits were measured: runs are sorted by their start time
(run.json `started_at`, the Hub column `run_started_at`; then the run id, which starts with the
start time), and a commit sits where its first run sits. Git topology is not available offline,
so a commit measured after its descendants (a bisection, a re-run of an old commit) appears
where it was measured. The runs of one commit are grouped: their samples are pooled, its p50 is
the median of the pool. A run with no measured commit is a commit of its own.

Only one kind of hardware is shown: by default the hardware of the newest run, or the runs whose
hardware label contains `--hardware` (case-insensitive). The others are left out and counted:
a history that mixes GPUs shifts wherever the machine changes.

Change points
-------------
For each commit i after the first, BEFORE pools the samples of the `window` commits before it
(i-window .. i-1, fewer at the start) and AFTER those of i .. i+window-1 (fewer at the end: the
newest commit is judged on its own). The two pools are compared as `tfbench compare` compares two
runs (bench.compare.compare_metric: ratio of medians AFTER/BEFORE, two-sided Mann-Whitney U with
its Hodges-Lehmann interval); commit i is flagged when the change passes the threshold (default
5%: a ratio above 1.05 or below 1/1.05) AND is significant (p < alpha, default 0.05, the interval
excluding 1). Direction: for latencies higher is slower, for throughputs lower is slower.

A step is seen from the commits next to it too (at i-1 the AFTER window already holds the new
level for the most part), so of adjacent flagged commits with the same direction only the
strongest is kept. Strength: how well the two windows separate, |2U/(m n) - 1| (the rank-biserial
correlation: 1 when every AFTER value lies beyond every BEFORE value), times the difference of
their mean logarithms; both are largest where the windows hold only the old and only the new
level, that is at the commit that made the step. A level that lasts fewer commits than half the window inside the history (a
one-commit blip that is reverted) is not a shift; the newest commit on its own is judged.

When a commit in either window has fewer than 3 samples (summarized Hub rows, a run of 1 or 2
iterations), or the pools are too small for the test ever to reach p < alpha, the p50 rule
applies instead: the ratio of the medians of the commits' p50s, AFTER over BEFORE, flagged when
beyond the threshold; there is no test, and the flag says "p50 rule".

The windows pool runs measured on different days: run-to-run drift that the samples of one run do
not show makes the test overconfident, and alpha is per commit over the whole history; the
threshold is what keeps those small, chance differences out of the flags.

The Hub
-------
`load_hub` lists the repo with `GET /api/datasets/{repo}` (HfApi.dataset_info: the siblings and
the head commit) and downloads `full/<run>.jsonl` (or `summarized/<run>.jsonl` with raw=False, or
for a run whose full file is missing) at that commit with hf_hub_download (HEAD then GET
`/datasets/{repo}/resolve/{sha}/{path}`), into the Hugging Face cache (`cache_dir`), so files
already downloaded are not fetched again. The token is the `token` argument or HF_TOKEN, never a
stored login (as for pushes); without one the repo is read anonymously. HF_HUB_OFFLINE=1 is a
UserError before any request. Every request has the connect and read timeouts of bench.hub.http;
the listing is tried 3 times (hf_hub_download retries its own requests), and a Hub that does not
answer is a UserError naming the endpoint and the timeout.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from bench import __version__
from bench.analysis.compare import (
    DEFAULT_THRESHOLD,
    IMPROVEMENT,
    INSUFFICIENT,
    KEY_METRICS,
    MIN_SAMPLES,
    REGRESSION,
    compare_metric,
)
from bench.analysis.ranktest import DEFAULT_ALPHA, rank_test
from bench.errors import UserError
from bench.hub.http import describe_timeout, use_timeouts, with_retries
from bench.hub.push import (
    _CELL_FIELDS,
    CONFIG_FULL,
    CONFIG_SUMMARIZED,
    RUN_SCALARS,
    check_repo_id,
    context_row,
    offline_mode,
    scrub,
)
from bench.output.tables import aligned_lines
from bench.results.records import HIGHER_IS_BETTER, UNITS, CellRecord, RunMeta, TimedRun, ValidationError
from bench.results.store import Run, RunFileError, Skipped, finite, load_meta, read_cell

DEFAULT_WINDOW = 3
FORMATS = ("text", "markdown", "json")
SLOWER = "slower"
FASTER = "faster"
MIN_PREFIX = 4  # characters of a cell id prefix
EXIT_CODE = 0  # history is informational
ORDER = "measurement order (run start time), not git order"
DOWNLOAD_WORKERS = 8


# -------------------------------------------------------------------------------------------- data


@dataclass
class Point:
    """One run's measurement of the cell."""

    run_id: str
    commit: str | None  # the measured commit's sha
    branch: str | None
    started_at: str | None  # ISO 8601, as the run recorded it
    hardware: str
    cell_id: str
    cell_name: str
    metric: str
    samples: list[float]  # raw, one per timed run (empty: statistics only)
    p50: float | None  # the median of the samples, else the stored p50
    n: int  # len(samples), else the stored n
    source: str  # the run directory, or hub:ORG/NAME/<file>


@dataclass
class Commit:
    """The runs of one commit, pooled; `index` is its position in commit order."""

    index: int
    sha: str | None
    label: str  # the short sha, or the run id when the commit is unknown
    branch: str | None
    started_at: str | None  # of its first run
    hardware: str
    run_ids: list[str] = field(default_factory=list)
    samples: list[float] = field(default_factory=list)
    p50s: list[float] = field(default_factory=list)  # each run's p50
    p50: float | None = None
    p10: float | None = None  # of the pooled samples (None with fewer than 3)
    p90: float | None = None
    n: int = 0


@dataclass
class ChangePoint:
    """Commit `index` (of commits(points)) moved the level: AFTER/BEFORE = ratio."""

    index: int
    commit: str | None
    label: str
    direction: str  # "slower" or "faster"
    ratio: float  # median AFTER / median BEFORE (p50 rule: of the commits' p50s)
    ci_low: float | None  # Hodges-Lehmann 95% interval (None for the p50 rule)
    ci_high: float | None
    p_value: float | None
    method: str  # "rank test" or "p50 rule"
    before: list[str] = field(default_factory=list)  # labels of the commits in each window
    after: list[str] = field(default_factory=list)
    n_before: int = 0  # samples (rank test) or commits (p50 rule)
    n_after: int = 0
    strength: float = (
        0.0  # separation x mean log shift of the windows: the strongest of adjacent flags is kept
    )


# ---------------------------------------------------------------------------------------- ordering


def _parse_time(text: Any) -> float | None:
    if not isinstance(text, str) or not text.strip():
        return None
    value = text.strip()
    try:
        if re.fullmatch(r"\d{8}T\d{6}Z", value):
            stamp = datetime.strptime(value, "%Y%m%dT%H%M%SZ")
        else:
            stamp = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    return stamp.timestamp()


def _order_key(p: Point) -> tuple[float, str]:
    """Start time, else the time at the head of the run id (runs are named <UTC stamp>-<name>), else first."""
    t = _parse_time(p.started_at)
    if t is None:
        head = re.match(r"\d{8}T\d{6}Z", p.run_id)
        t = _parse_time(head.group(0)) if head else None
    return (-math.inf if t is None else t, p.run_id)


def _median(values: Sequence[float]) -> float | None:
    return float(np.median(values)) if len(values) else None


def commits(points: Iterable[Point]) -> list[Commit]:
    """The points grouped by commit, in the order the commits were first measured."""
    groups: dict[str, Commit] = {}
    for p in sorted(points, key=_order_key):
        key = p.commit or f"run:{p.run_id}"
        g = groups.get(key)
        if g is None:
            label = p.commit[:12] if p.commit else p.run_id
            g = groups[key] = Commit(len(groups), p.commit, label, p.branch, p.started_at, p.hardware)
        g.run_ids.append(p.run_id)
        g.samples.extend(p.samples)
        if p.p50 is not None:
            g.p50s.append(p.p50)
        g.n += p.n
        g.branch = g.branch or p.branch
    out = list(groups.values())
    for g in out:
        g.p50 = _median(g.samples) if g.samples else _median(g.p50s)
        if len(g.samples) >= MIN_SAMPLES:
            g.p10, g.p90 = (float(v) for v in np.percentile(g.samples, [10, 90]))
    return out


# ------------------------------------------------------------------------------------ change points


def _direction(metric: str, ratio: float) -> str:
    up = ratio > 1
    return SLOWER if up != (metric in HIGHER_IS_BETTER) else FASTER


def _strength(base: list[float], new: list[float]) -> float:
    """|2U/(mn) - 1| (how well the two windows separate) times |mean log AFTER - mean log BEFORE|."""
    test = rank_test(base, new)
    separation = abs(2.0 * test.u / (len(base) * len(new)) - 1.0)
    return separation * abs(float(np.mean(np.log(new)) - np.mean(np.log(base))))


def _judge(
    metric: str, before: list[Commit], after: list[Commit], threshold: float, alpha: float
) -> ChangePoint | None:
    first = after[0]
    common = {
        "index": first.index,
        "commit": first.sha,
        "label": first.label,
        "before": [g.label for g in before],
        "after": [g.label for g in after],
    }
    if all(len(g.samples) >= MIN_SAMPLES for g in (*before, *after)):
        b = [s for g in before for s in g.samples]
        a = [s for g in after for s in g.samples]
        m = compare_metric(metric, b, a, threshold, alpha)
        if m.verdict != INSUFFICIENT:
            if m.verdict not in (REGRESSION, IMPROVEMENT) or m.ratio is None:
                return None
            return ChangePoint(
                **common,
                direction=SLOWER if m.verdict == REGRESSION else FASTER,
                ratio=m.ratio,
                ci_low=m.ci_low,
                ci_high=m.ci_high,
                p_value=m.p_value,
                method="rank test",
                n_before=len(b),
                n_after=len(a),
                strength=_strength(b, a),
            )
    # The p50 rule: too few samples for the test.
    b50 = [g.p50 for g in before if g.p50]
    a50 = [g.p50 for g in after if g.p50]
    if not b50 or not a50:
        return None
    ratio = float(np.median(a50) / np.median(b50))
    if not abs(math.log(ratio)) > math.log1p(threshold):
        return None
    return ChangePoint(
        **common,
        direction=_direction(metric, ratio),
        ratio=ratio,
        ci_low=None,
        ci_high=None,
        p_value=None,
        method="p50 rule",
        n_before=len(b50),
        n_after=len(a50),
        strength=_strength(b50, a50),
    )


def _check_params(threshold: Any, alpha: Any, window: Any) -> None:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold >= 0:
        raise UserError(f"threshold must be a fraction >= 0 (0.05 for 5%), not {threshold!r}")
    if not math.isfinite(threshold):
        raise UserError(f"threshold must be finite, not {threshold!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise UserError(f"alpha must be between 0 and 1 (0.05 for 95% intervals), not {alpha!r}")
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise UserError(f"window must be a whole number of commits >= 1, not {window!r}")


def change_points(
    points: Sequence[Point],
    threshold: float = DEFAULT_THRESHOLD,
    alpha: float = DEFAULT_ALPHA,
    window: int = DEFAULT_WINDOW,
) -> list[ChangePoint]:
    """The commits where the level shifted (see the module docstring), in commit order."""
    _check_params(threshold, alpha, window)
    metrics = {p.metric for p in points}
    if len(metrics) > 1:
        raise ValueError(f"points of several metrics: {sorted(metrics)}")
    if not points:
        return []
    metric = next(iter(metrics))
    groups = commits(points)
    flags = []
    for i in range(1, len(groups)):
        cp = _judge(metric, groups[max(0, i - window) : i], groups[i : i + window], threshold, alpha)
        if cp is not None:
            flags.append(cp)
    kept: list[ChangePoint] = []
    run: list[ChangePoint] = []
    for cp in [*flags, None]:
        if run and (cp is None or cp.index != run[-1].index + 1 or cp.direction != run[-1].direction):
            kept.append(max(run, key=lambda c: (c.strength, abs(math.log(c.ratio)))))
            run = []
        if cp is not None:
            run.append(cp)
    return kept


# ------------------------------------------------------------------------------------------ cells


def _check_metric(metric: str) -> str:
    if metric not in KEY_METRICS:
        raise UserError(f"metric {metric!r}: allowed: {', '.join(KEY_METRICS)}")
    return metric


def _resolve_cell(query: str, known: dict[str, str], where: str) -> str:
    """The cell id `query` names: a cell id, a unique id prefix (>= 4 characters) or a unique cell name."""
    q = query.strip()
    if not q:
        raise UserError("--cell is empty: give a cell id (the cells/<cell id>.json of a run)")
    if q in known:
        return q
    by_name = sorted(cid for cid, name in known.items() if name == q)
    by_prefix = sorted(cid for cid in known if len(q) >= MIN_PREFIX and cid.startswith(q))
    for found, how in ((by_name, "named"), (by_prefix, "with ids starting with")):
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            listed = ", ".join(f"{cid} ({known[cid] or '?'})" for cid in found[:10])
            raise UserError(f"--cell {q!r} is ambiguous in {where}: {len(found)} cells {how} it: {listed}")
    sample = ", ".join(f"{cid} ({name or '?'})" for cid, name in sorted(known.items())[:10])
    more = f" and {len(known) - 10} more" if len(known) > 10 else ""
    hint = f"; cells there: {sample}{more}" if known else ""
    short = " (a prefix needs at least 4 characters)" if 0 < len(q) < MIN_PREFIX else ""
    raise UserError(f"no cell {q!r} in {where}{short}{hint}")


def _p50(samples_: list[float], stored: Any) -> float | None:
    if samples_:
        return float(np.median(samples_))
    if (
        isinstance(stored, (int, float))
        and not isinstance(stored, bool)
        and math.isfinite(stored)
        and stored > 0
    ):
        return float(stored)
    return None


def _status_note(statuses: dict[str, int], cell: str) -> list[str]:
    if not statuses:
        return []
    text = ", ".join(f"{status} {n}" for status, n in sorted(statuses.items()))
    total = sum(statuses.values())
    return [
        f"{total} run{'s' if total != 1 else ''} without an ok measurement of cell {cell} left out ({text})"
    ]


# ------------------------------------------------------------------------------------ local runs


def _run_dirs(directory: str | os.PathLike[str]) -> tuple[list[Path], list[str]]:
    root = Path(directory)
    if not root.exists():
        raise UserError(f"{root}: no such directory")
    if not root.is_dir():
        raise UserError(f"{root} is a file; give a directory of run directories (the results output)")
    if (root / "run.json").is_file():
        return [root], []
    runs, notes = [], []
    for child in sorted(root.iterdir()):
        # Anything else in the output (lost+found, notes, a directory without a run) is no run.
        try:
            if not child.is_dir() or child.name.startswith("."):
                continue
            if (child / "run.json").is_file():
                runs.append(child)
            elif (child / "shards").is_dir():
                notes.append(
                    f"{child.name} is a sharded run not merged yet (`tfbench merge {child}`): left out"
                )
        except OSError:
            continue
    if not runs:
        raise UserError(f"{root} holds no run directories (a run directory has a run.json)")
    return runs, notes


def _summary_names(run: Path) -> dict[str, str]:
    """cell id -> name from a run's summary.jsonl (empty if it has none yet)."""
    names: dict[str, str] = {}
    try:
        lines = (run / "summary.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        return names
    for line in lines:
        try:
            row = json.loads(line) if line.strip() else None
        except ValueError:
            continue
        if isinstance(row, dict) and row.get("cell_id"):
            names[str(row["cell_id"])] = str(row.get("name") or "")
    return names


def _local_cells(runs: list[Path], skipped: dict[Path, Skipped]) -> dict[str, str]:
    """cell id -> name over all runs: from summary.jsonl, and from the records it does not list
    (a run stopped before its summary). Files that are not records go to `skipped`."""
    known: dict[str, str] = {}
    for run in runs:
        listed = _summary_names(run)
        for cid, name in listed.items():
            known[cid] = name or known.get(cid, "")
        for path in sorted((run / "cells").glob("*.json")):
            if path.stem in listed:
                continue  # the summary named it: no need to read a large record
            record, why = read_cell(path)
            if record is None:
                skipped[path] = Skipped(path, str(why))
                continue
            known[path.stem] = known.get(path.stem) or record.name
    return known


def _load_local(
    directory: str | os.PathLike[str],
    metric: str,
    cell: str,
    warn: Callable[[Skipped], None] | None = None,
) -> tuple[list[Point], list[str]]:
    """Points and notes; each file in a cells/ that is not a record is passed to `warn` (else
    noted) and left out."""
    _check_metric(metric)
    runs, notes = _run_dirs(directory)
    skipped: dict[Path, Skipped] = {}
    try:
        points, notes = _points_local(runs, notes, metric, cell, str(directory), skipped)
    finally:
        for item in skipped.values() if warn is not None else ():
            warn(item)
    if warn is None:
        notes += [f"{item}: left out" for item in skipped.values()]
    return points, notes


def _points_local(
    runs: list[Path], notes: list[str], metric: str, cell: str, where: str, skipped: dict[Path, Skipped]
) -> tuple[list[Point], list[str]]:
    plain = re.fullmatch(r"[0-9A-Za-z_.-]+", cell.strip()) and not cell.strip().startswith(".")
    if plain and any((run / "cells" / f"{cell.strip()}.json").is_file() for run in runs):
        cell_id = cell.strip()
    else:
        cell_id = _resolve_cell(cell, _local_cells(runs, skipped), where)
    points: list[Point] = []
    statuses: dict[str, int] = {}
    for run in runs:
        path = run / "cells" / f"{cell_id}.json"
        if not path.is_file():
            continue
        try:
            meta = load_meta(run / "run.json")
        except RunFileError as exc:
            notes.append(f"{run.name}: {exc}: left out")
            continue
        record, why = read_cell(path)
        if record is None:
            skipped[path] = Skipped(path, str(why))
            continue
        status = record.status
        if status != "ok":
            statuses[status] = statuses.get(status, 0) + 1
            continue
        # The branch as recorded, not this shell's TFBENCH_BRANCH.
        ctx = context_row(meta.to_dict(), environ={})
        values = record.samples(metric)
        p50 = _p50(values, record.stat(metric, "p50"))
        if p50 is None:
            statuses[f"no {metric}"] = statuses.get(f"no {metric}", 0) + 1
            continue
        points.append(
            Point(
                run_id=str(ctx["run_id"] or run.name),
                commit=ctx["measured_commit"],
                branch=ctx["branch"],
                started_at=ctx["run_started_at"],
                hardware=str(ctx["hardware"]),
                cell_id=cell_id,
                cell_name=record.name,
                metric=metric,
                samples=values,
                p50=p50,
                n=len(values) if values else int(record.stat(metric, "n") or 0),
                source=str(run),
            )
        )
    points.sort(key=_order_key)
    return points, notes + _status_note(statuses, cell_id)


def load_local(directory: str | os.PathLike[str], metric: str, cell: str) -> list[Point]:
    """One point per run under `directory` (or the run `directory` is) that has `cell` ok, in commit order.

    `cell`: a cell id, a unique prefix of one (at least 4 characters), or a unique cell name.
    """
    return _load_local(directory, metric, cell)[0]


# --------------------------------------------------------------------------------------------- hub


def _hub_token(token: str | None) -> str | bool:
    value = (token or os.environ.get("HF_TOKEN", "")).strip()
    return value or False  # False: anonymous, not a stored login


def _hub_error(
    exc: BaseException, repo: str, endpoint: str, token: str | bool, what: str = "the history"
) -> UserError:
    from huggingface_hub.errors import (
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    secret = token if isinstance(token, str) else None
    timeout = describe_timeout(exc, f"the Hub at {endpoint}")
    if isinstance(exc, OfflineModeIsEnabled):
        why = "HF_HUB_OFFLINE=1 forbids reaching the Hub"
    elif timeout is not None:
        why = timeout
    elif isinstance(exc, (RepositoryNotFoundError, RevisionNotFoundError)):
        auth = "HF_TOKEN has no access to it" if secret else "no HF_TOKEN is set"
        why = f"no such dataset repo at {endpoint}, or it is private and {auth}"
    elif isinstance(exc, HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        detail = getattr(exc, "server_message", None) or str(exc).splitlines()[0]
        if status in (401, 403):
            why = f"the Hub refused access (HTTP {status}): set HF_TOKEN to a token that can read {repo}"
        else:
            why = f"HTTP {status} from {endpoint}: {detail.strip()}"
    else:
        why = f"{type(exc).__name__}: {exc}"
    return UserError(scrub(f"cannot read {what} from the Hub dataset {repo}: {why}", secret))


def _run_files(siblings: Iterable[str], raw: bool) -> list[str]:
    """One data file per run: full/<run>.jsonl (raw samples) or summarized/<run>.jsonl."""
    found: dict[str, dict[str, str]] = {}
    for name in siblings:
        m = re.fullmatch(rf"({CONFIG_FULL}|{CONFIG_SUMMARIZED})/([^/]+)\.jsonl", name)
        if m:
            found.setdefault(m.group(2), {})[m.group(1)] = name
    order = (CONFIG_FULL, CONFIG_SUMMARIZED) if raw else (CONFIG_SUMMARIZED, CONFIG_FULL)
    return [next(files[c] for c in order if c in files) for _, files in sorted(found.items())]


def _row_samples(row: dict[str, Any], metric: str) -> list[float]:
    """CellRecord.samples over the runs a "full" row stores as runs_<metric> lists and runs_other."""
    runs = [TimedRun.model_validate(r) for r in _row_runs(row)]
    return [v for run in runs if (v := run.value(metric)) is not None]


def _row_runs(row: dict[str, Any]) -> list[dict[str, Any]]:
    """A cell record's "runs" list again, from a "full" row's runs_<metric> lists and runs_other."""
    columns = {key: row.get(f"runs_{key}") for key in RUN_SCALARS}
    other = row.get("runs_other")
    if isinstance(other, str):
        try:
            other = json.loads(other)
        except ValueError:
            other = None
    lengths = [len(v) for v in columns.values() if isinstance(v, list)]
    count = max(lengths + [len(other) if isinstance(other, list) else 0], default=0)
    runs = []
    for i in range(count):
        run: dict[str, Any] = {}
        if isinstance(other, list) and i < len(other) and isinstance(other[i], dict):
            run.update(other[i])
        for key, values in columns.items():
            if isinstance(values, list) and i < len(values) and values[i] is not None:
                run[key] = values[i]
        runs.append(run)
    return runs


def _parse_rows(path: str, needle: str) -> list[dict[str, Any]]:
    """The rows of a jsonl file whose text holds `needle` (most rows need no parsing)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if needle in line:
                row = json.loads(line)
                if isinstance(row, dict):
                    rows.append(row)
    return rows


def _all_cells(path: str) -> dict[str, str]:
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {
        str(r["cell_id"]): str(r.get("name") or "") for r in rows if isinstance(r, dict) and r.get("cell_id")
    }


def _download(
    repo: str,
    select: Callable[[list[str]], list[str]],
    endpoint: str | None,
    token: str | None,
    cache_dir: str | os.PathLike[str] | None,
    what: str = "the history",
    revision: str | None = None,
) -> tuple[list[str], list[str]]:
    """The files `select` picks from the dataset's file list, downloaded at one revision (in parallel)."""
    from huggingface_hub import HfApi, hf_hub_download

    try:
        from huggingface_hub.utils.tqdm import silent_tqdm as quiet
    except ImportError:  # pragma: no cover - an older layout: the default bars
        quiet = None

    use_timeouts()
    secret = _hub_token(token)
    api = HfApi(endpoint=endpoint, token=secret, library_name="tfbench", library_version=__version__)
    try:
        info = with_retries(lambda: api.dataset_info(repo, revision=revision), f"listing {repo}")
        files = select([s.rfilename for s in info.siblings or []])
        if not files:
            raise UserError(
                f"the Hub dataset {repo} holds no tfbench runs ({CONFIG_FULL}/*.jsonl or "
                f"{CONFIG_SUMMARIZED}/*.jsonl); runs get there with push_to_hub or `tfbench push`"
            )

        def fetch(name: str) -> str:
            return hf_hub_download(
                repo,
                name,
                repo_type="dataset",
                revision=info.sha,
                endpoint=api.endpoint,
                token=secret,
                cache_dir=cache_dir,
                library_name="tfbench",
                library_version=__version__,
                tqdm_class=quiet,
            )

        with ThreadPoolExecutor(max_workers=min(DOWNLOAD_WORKERS, len(files))) as pool:
            paths = list(pool.map(fetch, files))
    except UserError:
        raise
    except Exception as exc:
        raise _hub_error(exc, repo, api.endpoint, secret, what) from None
    return files, paths


def load_hub_run(
    repo_id: str,
    ref: str,
    endpoint: str | None = None,
    token: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Run:
    """A run pushed to a Hub dataset, as compare reads a run directory: `ref` is a measured commit
    (a sha prefix of 7+) or a run id; several runs of one commit: the newest is taken."""
    repo = check_repo_id(repo_id, "the ORG/NAME of hub:ORG/NAME@REF")  # compare has no --repo
    what = f"run {ref!r}"
    if offline_mode():
        raise UserError(
            f"cannot read {what} from the Hub dataset {repo}: HF_HUB_OFFLINE=1 forbids reaching the Hub"
        )
    names, paths = _download(
        repo,
        lambda all_names: [n for n in all_names if re.fullmatch(r"runs/[^/]+\.json", n)],
        endpoint,
        token,
        cache_dir,
        what,
    )
    metas = [load_meta(Path(p)) for p in paths]

    def matches(meta: RunMeta) -> bool:
        sha = meta.commit_sha or ""
        return meta.run_id == ref or (len(ref) >= 7 and sha.startswith(ref))

    found = sorted((m for m in metas if matches(m)), key=lambda m: m.started_at or "")
    if not found:
        shas = sorted({(m.commit_sha or "?")[:12] for m in metas})
        raise UserError(
            f"no run of {repo} matches {ref!r} (a measured commit of 7+ characters, or a run id); "
            f"its commits: {', '.join(shas)}; its runs: {', '.join(sorted(m.run_id for m in metas))}"
        )
    meta = found[-1]
    run_id = meta.run_id
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}", run_id) or ".." in run_id:
        # The name of a file to fetch comes from the dataset: it must not lead out of its folder.
        raise UserError(f"the Hub dataset {repo} holds a run.json whose run_id {run_id[:200]!r} is no run id")
    _, (full,) = _download(
        repo, lambda all_names: [f"{CONFIG_FULL}/{run_id}.jsonl"], endpoint, token, cache_dir, what
    )
    cells: dict[str, CellRecord] = {}
    with open(full, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                try:
                    record = CellRecord.model_validate(_row_record(json.loads(line)))
                except (ValueError, ValidationError) as exc:
                    what_line = f"{CONFIG_FULL}/{run_id}.jsonl line {number} of the Hub dataset {repo}"
                    raise UserError(f"{what_line} is not a tfbench row: {exc}") from None
                cells[record.cell_id] = record
    return Run(path=Path(f"hub:{repo}@{run_id}"), meta=meta, cells=cells)


def _row_record(row: dict[str, Any]) -> dict[str, Any]:
    """A cell record again from a "full" row: what compare reads (cell, status, runs, memory)."""

    def decoded(value: Any) -> Any:
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                return value
        return value

    # Columns that are null in the row take the record's defaults; JSON columns hold strings.
    cell = {
        key: decoded(row[col]) if typ == "json" else row[col]
        for key, col, typ in _CELL_FIELDS
        if row.get(col) is not None
    }
    cell["cell_id"] = row.get("cell_id")
    return {
        "cell_id": row.get("cell_id"),
        "status": row.get("status"),
        "reason": row.get("reason"),
        "cell": cell,
        "runs": _row_runs(row),
        "memory": decoded(row.get("memory")) or {},
        "stats": {},
    }


def _load_hub(
    repo_id: str,
    metric: str,
    cell: str,
    endpoint: str | None = None,
    token: str | None = None,
    *,
    raw: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
) -> tuple[list[Point], list[str]]:
    _check_metric(metric)
    repo = check_repo_id(repo_id)
    if offline_mode():
        raise UserError(
            f"cannot read the history from the Hub dataset {repo}: HF_HUB_OFFLINE=1 (or TRANSFORMERS_OFFLINE=1) "
            "forbids reaching the Hub; unset it, or give a local directory of run directories instead"
        )
    files, paths = _download(repo, lambda names: _run_files(names, raw), endpoint, token, cache_dir)

    where = f"the Hub dataset {repo}"
    q = cell.strip()
    needle = json.dumps(q, ensure_ascii=False)[1:-1]
    try:
        loaded = [(name, path, _parse_rows(path, needle)) for name, path in zip(files, paths)]
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read a data file of {where}: {exc}") from None
    known = {
        str(r["cell_id"]): str(r.get("name") or "")
        for _, _, rows in loaded
        for r in rows
        if r.get("cell_id") and (str(r["cell_id"]).startswith(q) or r.get("name") == q)
    }
    if not known:  # name the cells that are there, from the newest file
        try:
            known_all = _all_cells(paths[-1])
        except (OSError, ValueError):
            known_all = {}
        _resolve_cell(q, known_all, where)
    cell_id = _resolve_cell(q, known, where)
    points: list[Point] = []
    statuses: dict[str, int] = {}
    for name, _, rows in loaded:
        for row in rows:
            if row.get("cell_id") != cell_id:
                continue
            status = str(row.get("status"))
            if status != "ok":
                statuses[status] = statuses.get(status, 0) + 1
                continue
            values = _row_samples(row, metric) if name.startswith(f"{CONFIG_FULL}/") else []
            p50 = _p50(values, row.get(f"{metric}_p50"))
            if p50 is None:
                statuses[f"no {metric}"] = statuses.get(f"no {metric}", 0) + 1
                continue
            stored_n = row.get(f"{metric}_n")
            points.append(
                Point(
                    run_id=str(row.get("run_id") or Path(name).stem),
                    commit=row.get("measured_commit") or None,
                    branch=row.get("branch") or None,
                    started_at=row.get("run_started_at") or None,
                    hardware=str(row.get("hardware") or "unknown"),
                    cell_id=cell_id,
                    cell_name=str(row.get("name") or cell_id),
                    metric=metric,
                    samples=values,
                    p50=p50,
                    n=len(values) if values else (stored_n if isinstance(stored_n, int) else 0),
                    source=f"hub:{repo}/{name}",
                )
            )
    points.sort(key=_order_key)
    return points, _status_note(statuses, cell_id)


def load_hub(
    repo_id: str,
    metric: str,
    cell: str,
    endpoint: str | None = None,
    token: str | None = None,
    *,
    raw: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
) -> list[Point]:
    """One point per run in the Hub dataset `repo_id` that has `cell` ok, in commit order.

    raw=True reads full/<run>.jsonl (raw samples, for the rank test); raw=False the much smaller
    summarized/<run>.jsonl (p50 only: the p50 rule). `endpoint` defaults to HF_ENDPOINT or
    huggingface.co, `token` to HF_TOKEN (none: anonymous), `cache_dir` to the Hugging Face cache.
    UserError for HF_HUB_OFFLINE=1, a repo that is not there or not readable, or an unknown cell.
    """
    return _load_hub(repo_id, metric, cell, endpoint, token, raw=raw, cache_dir=cache_dir)[0]


# -------------------------------------------------------------------------------------- hardware


def select_hardware(
    points: Sequence[Point], hardware: str | None = None
) -> tuple[list[Point], dict[str, int]]:
    """(the points on one kind of hardware, how many runs were left out per hardware label).

    hardware: a case-insensitive substring of the label; None: the hardware of the newest point.
    """
    if not points:
        return [], {}
    if hardware is None or not hardware.strip():
        chosen = max(points, key=_order_key).hardware

        def keep(p: Point) -> bool:
            return p.hardware == chosen
    else:
        needle = hardware.strip().lower()

        def keep(p: Point) -> bool:
            return needle in p.hardware.lower()

    kept = [p for p in points if keep(p)]
    excluded: dict[str, int] = {}
    for p in points:
        if not keep(p):
            excluded[p.hardware] = excluded.get(p.hardware, 0) + 1
    if not kept:
        labels = ", ".join(f"{label} ({n} runs)" for label, n in sorted(excluded.items()))
        raise UserError(f"no run on hardware matching {hardware!r}; the runs' hardware: {labels}")
    return kept, excluded


# ------------------------------------------------------------------------------------- rendering


def _fmt_value(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    if UNITS.get(metric) == "s":
        if value >= 1:
            return f"{value:.3f} s"
        if value >= 1e-3:
            return f"{value * 1e3:.3f} ms"
        return f"{value * 1e6:.1f} µs"
    return f"{value:,.1f} tok/s"


def _fmt_date(text: str | None) -> str:
    t = _parse_time(text)
    if t is None:
        return "-"
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M")


def _describe(cp: ChangePoint) -> str:
    text = f"{cp.direction} x{cp.ratio:.3f}"
    if cp.ci_low is not None and cp.ci_high is not None:
        text += f" [{cp.ci_low:.3f}, {cp.ci_high:.3f}]"
    if cp.p_value is not None:
        text += f" p={cp.p_value:.2g}" if cp.p_value >= 1e-12 else " p<1e-12"
    return text + (" (p50 rule)" if cp.method == "p50 rule" else "")


def _rows(groups: list[Commit], cps: Sequence[ChangePoint], metric: str) -> list[dict[str, str]]:
    flagged = {cp.index: cp for cp in cps}
    rows = []
    for g in groups:
        prev = groups[g.index - 1].p50 if g.index > 0 else None
        ratio = f"{g.p50 / prev:.3f}" if prev and g.p50 else "-"
        cp = flagged.get(g.index)
        rows.append(
            {
                "commit": g.label,
                "branch": g.branch or "-",
                "measured": _fmt_date(g.started_at),
                "runs": str(len(g.run_ids)),
                "n": str(g.n),
                "p50": _fmt_value(metric, g.p50),
                "vs prev": ratio,
                "change": _describe(cp) if cp else "",
            }
        )
    return rows


def _header(
    points: Sequence[Point], groups: list[Commit], excluded: dict[str, int] | None, hardware: str | None
) -> list[str]:
    p = points[-1] if points else None
    metric = p.metric if p else "?"
    lines = [f"{metric} of cell {p.cell_id} ({p.cell_name})" if p else f"{metric}: no runs"]
    labels = sorted({q.hardware for q in points})
    how = f"matching {hardware!r}" if hardware else "the newest run's"
    if labels:
        lines.append(f"hardware ({how}): {', '.join(labels)}")
    if excluded:
        total = sum(excluded.values())
        listed = ", ".join(f"{label} ({n})" for label, n in sorted(excluded.items()))
        lines.append(
            f"left out: {total} run{'s' if total != 1 else ''} on other hardware: {listed}; see --hardware"
        )
    runs = len(points)
    lines.append(
        f"{len(groups)} commit{'s' if len(groups) != 1 else ''}, {runs} run{'s' if runs != 1 else ''}, in {ORDER}"
    )
    return lines


def _footer(cps: Sequence[ChangePoint], threshold: float | None, window: int | None) -> list[str]:
    rule = []
    if threshold is not None:
        rule.append(f"threshold {threshold:.1%}".replace(".0%", "%"))
    if window is not None:
        rule.append(f"window {window}")
    suffix = f" ({', '.join(rule)})" if rule else ""
    if not cps:
        return [f"no level shift{suffix}"]
    lines = [f"{len(cps)} level shift{'s' if len(cps) != 1 else ''}{suffix}:"]
    for cp in cps:
        lines.append(f"  {cp.label}  {_describe(cp)}  ({', '.join(cp.before)} -> {', '.join(cp.after)})")
    return lines


# The columns of the history table, in text and in markdown.
TABLE_COLUMNS = ("commit", "branch", "measured", "runs", "n", "p50", "vs prev", "change")


def render_text(
    points: Sequence[Point],
    cps: Sequence[ChangePoint],
    *,
    excluded: dict[str, int] | None = None,
    hardware: str | None = None,
    notes: Sequence[str] = (),
    threshold: float | None = None,
    window: int | None = None,
) -> str:
    """A plain-text table, one row per commit in commit order, and the change points below it."""
    groups = commits(points)
    metric = points[0].metric if points else "?"
    rows = _rows(groups, cps, metric)
    right = {i for i, c in enumerate(TABLE_COLUMNS) if c in ("runs", "n", "p50", "vs prev")}
    out = _header(points, groups, excluded, hardware)
    out += [f"note: {n}" for n in notes]
    out += [
        "",
        *aligned_lines(TABLE_COLUMNS, [[r[c] for c in TABLE_COLUMNS] for r in rows], right, rule=True),
    ]
    out += ["", *_footer(cps, threshold, window)]
    return "\n".join(out) + "\n"


def render_markdown(
    points: Sequence[Point],
    cps: Sequence[ChangePoint],
    *,
    excluded: dict[str, int] | None = None,
    hardware: str | None = None,
    notes: Sequence[str] = (),
    threshold: float | None = None,
    window: int | None = None,
) -> str:
    """The same as render_text, as a Markdown table (a pull-request comment)."""
    groups = commits(points)
    metric = points[0].metric if points else "?"
    head = _header(points, groups, excluded, hardware)
    lines = [f"### tfbench history: {head[0]}", ""]
    lines += [f"{h}  " for h in head[1:]] + [f"note: {n}  " for n in notes] + [""]
    columns = TABLE_COLUMNS
    lines.append("| " + " | ".join(columns) + " |")
    lines.append(
        "|" + "|".join("---:" if c in ("runs", "n", "p50", "vs prev") else "---" for c in columns) + "|"
    )
    for r in _rows(groups, cps, metric):
        mark = ""
        if r["change"]:
            mark = "🔴 " if r["change"].startswith(SLOWER) else "🟢 "
        values = {**r, "commit": f"`{r['commit']}`", "change": f"{mark}{r['change']}".strip()}
        lines.append("| " + " | ".join(values[c].replace("|", "\\|") for c in columns) + " |")
    lines += ["", *_footer(cps, threshold, window)]
    return "\n".join(lines) + "\n"


def to_json(
    points: Sequence[Point],
    cps: Sequence[ChangePoint],
    *,
    excluded: dict[str, int] | None = None,
    hardware: str | None = None,
    notes: Sequence[str] = (),
    threshold: float = DEFAULT_THRESHOLD,
    alpha: float = DEFAULT_ALPHA,
    window: int = DEFAULT_WINDOW,
) -> dict[str, Any]:
    """Everything, JSON-serializable (non-finite numbers as null)."""
    groups = commits(points)
    metric = points[0].metric if points else None
    flagged = {cp.index: cp for cp in cps}
    commit_rows = []
    for g in groups:
        prev = groups[g.index - 1].p50 if g.index > 0 else None
        row = {k: v for k, v in asdict(g).items() if k != "samples"}
        row["ratio_to_previous"] = g.p50 / prev if prev and g.p50 else None
        row["change_point"] = asdict(flagged[g.index]) if g.index in flagged else None
        commit_rows.append(row)
    data = {
        "metric": metric,
        "unit": UNITS.get(metric or "", ""),
        "better": "higher" if metric in HIGHER_IS_BETTER else "lower",
        "cell_id": points[0].cell_id if points else None,
        "cell_name": points[0].cell_name if points else None,
        "hardware": sorted({p.hardware for p in points}),
        "hardware_filter": hardware,
        "excluded": dict(excluded or {}),
        "order": ORDER,
        "threshold": threshold,
        "alpha": alpha,
        "window": window,
        "notes": list(notes),
        "commits": commit_rows,
        "change_points": [asdict(cp) for cp in cps],
        "runs": [asdict(p) for p in points],
        "exit_code": EXIT_CODE,
    }
    return finite(data)


def plot(
    points: Sequence[Point], cps: Sequence[ChangePoint], metric: str, path: str | os.PathLike[str]
) -> Path:
    """A PNG: the p50 of each commit with its p10-p90 band, commits in order, change points marked."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError("plotting needs matplotlib (pip install matplotlib), or leave out --plot") from None
    out = Path(path)
    if not out.parent.is_dir():
        raise UserError(f"cannot write the plot to {out}: {out.parent} is not a directory")
    groups = commits(points)
    seconds = UNITS.get(metric) == "s"
    scale, unit = (1e3, "ms") if seconds else (1.0, UNITS.get(metric, ""))
    x = np.arange(len(groups))

    def scaled(values: list[float | None]) -> np.ndarray:
        return np.array([np.nan if v is None else v * scale for v in values], dtype=np.float64)

    fig = Figure(figsize=(max(6.0, min(0.45 * len(groups) + 3, 24.0)), 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    p50 = scaled([g.p50 for g in groups])
    lo, hi = scaled([g.p10 for g in groups]), scaled([g.p90 for g in groups])
    if np.isfinite(lo).any():
        ax.fill_between(x, lo, hi, alpha=0.25, color="tab:blue", linewidth=0, label="p10-p90")
    ax.plot(x, p50, marker="o", color="tab:blue", linewidth=1.5, markersize=4, label="p50")
    for cp in cps:
        color = "tab:red" if cp.direction == SLOWER else "tab:green"
        ax.axvline(cp.index - 0.5, color=color, linestyle="--", linewidth=1.2)
        ax.annotate(
            f"{cp.direction} x{cp.ratio:.3f}",
            xy=(cp.index - 0.5, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(3, -12),
            textcoords="offset points",
            color=color,
            fontsize=8,
        )
    step = max(1, math.ceil(len(groups) / 40))
    ax.set_xticks(x[::step], [g.label[:7] for g in groups][::step], rotation=60, ha="right", fontsize=7)
    ax.set_xlim(-0.6, max(len(groups) - 0.4, 0.6))
    ax.set_xlabel("commit, in the order measured (run start time)")
    better = "higher is better" if metric in HIGHER_IS_BETTER else "lower is better"
    ax.set_ylabel(f"{metric} ({unit}, {better})")
    name = f"{points[0].cell_name} ({points[0].cell_id[:8]})" if points else ""
    hardware = ", ".join(sorted({p.hardware for p in points}))
    ax.set_title(f"{metric}: {name}\n{hardware}", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    try:
        fig.savefig(out, format="png", dpi=120)
    except OSError as exc:
        raise UserError(f"cannot write the plot to {out}: {exc}") from None
    return out


# ----------------------------------------------------------------------------------------- command


def history(
    source: str | None,
    repo: str | None,
    metric: str,
    cell: str,
    hardware: str | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    plot_path: Path | None = None,
    fmt: str = "text",
    *,
    alpha: float = DEFAULT_ALPHA,
    window: int = DEFAULT_WINDOW,
    endpoint: str | None = None,
    token: str | None = None,
    raw: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    warn: Callable[[Skipped], None] | None = None,
) -> tuple[str, int]:
    """`tfbench history`: (the text to print, the exit code). The exit code is always 0: history is
    informational (gate on `tfbench compare`); mistakes raise UserError (exit 2).

    source: a directory of run directories (or one run); repo: a Hub dataset ORG/NAME; exactly one.
    fmt: "text", "markdown" or "json". plot_path: also write a PNG there. warn: called with each
    file in a local cells/ directory that is not a cell record (left out; else it is noted).
    """
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: allowed: {', '.join(FORMATS)}")
    if (source is None) == (repo is None):
        raise UserError("give either a directory of run directories or --repo ORG/NAME (exactly one)")
    _check_metric(metric)
    _check_params(threshold, alpha, window)
    load: Callable[[], tuple[list[Point], list[str]]]
    if source is not None:

        def load() -> tuple[list[Point], list[str]]:
            return _load_local(source, metric, cell, warn)
    else:
        assert repo is not None

        def load() -> tuple[list[Point], list[str]]:
            return _load_hub(repo, metric, cell, endpoint, token, raw=raw, cache_dir=cache_dir)

    points, notes = load()
    if not points:
        detail = f": {'; '.join(notes)}" if notes else ""
        raise UserError(f"cell {cell!r} has no ok measurement of {metric} in {source or repo}{detail}")
    kept, excluded = select_hardware(points, hardware)
    cps = change_points(kept, threshold, alpha, window)
    written = plot(kept, cps, metric, plot_path) if plot_path is not None else None
    extra = {"excluded": excluded, "hardware": hardware, "notes": notes}
    if fmt == "json":
        data = to_json(kept, cps, **extra, threshold=threshold, alpha=alpha, window=window)
        data["plot"] = str(written) if written else None
        return json.dumps(data, indent=1) + "\n", EXIT_CODE
    render = render_markdown if fmt == "markdown" else render_text
    text = render(kept, cps, **extra, threshold=threshold, window=window)
    if written:
        text += f"plot: {written}\n"
    return text, EXIT_CODE
