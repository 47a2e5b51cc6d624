"""Reading runs back from a Hub dataset that tfbench pushed to: one run as compare reads a run
directory (load_hub_run, for `tfbench compare hub:ORG/NAME@REF`), or the measurements of one cell
in every run (hub_measurements, for `tfbench history --repo`). The rows become cell records again
with bench.hub.schema's inverse of the rows it builds.

Both list the repo with `GET /api/datasets/{repo}` (HfApi.dataset_info: the siblings and the
head commit) and download at that commit with hf_hub_download (HEAD then GET
`/datasets/{repo}/resolve/{sha}/{path}`), into the Hugging Face cache (`cache_dir`), so files
already downloaded are not fetched again: hub_measurements every `full/<run>.jsonl` (or
`summarized/<run>.jsonl` with raw=False, or for a run whose full file is missing), load_hub_run
the `runs/*.json` and then the one run's `full/<run>.jsonl`. The token is the `token` argument or
HF_TOKEN, never a stored login (as for pushes); without one the repo is read anonymously.
A dataset in transformers' benchmark_v2 layout (full_results/ and summarized_results/
benchmark_run_<time>.jsonl, no tfbench files) is read for the history too, each file as one run
(bench.results.benchmark_v2_read). HF_HUB_OFFLINE=1 is a UserError before any request. Every
request has the connect and read timeouts of bench.hub.http; the listing is tried 3 times
(hf_hub_download retries its own requests), and a Hub that does not answer is a UserError
naming the endpoint and the timeout.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench import __version__
from bench.errors import UserError
from bench.hub.commit import check_repo_id, offline_mode, scrub
from bench.hub.http import describe_timeout, use_timeouts, with_retries
from bench.hub.schema import CONFIG_FULL, CONFIG_SUMMARIZED, row_record, row_stats
from bench.results import benchmark_v2_read as v2
from bench.results.records import CellRecord, RunMeta, ValidationError, describe_error
from bench.results.series import Measurement, measurement, resolve_cell
from bench.results.store import Run, RunFileError, load_meta

DOWNLOAD_WORKERS = 8


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


def _run_files(
    siblings: Iterable[str], raw: bool, full: str = CONFIG_FULL, summarized: str = CONFIG_SUMMARIZED
) -> list[str]:
    """One data file per run: full/<run>.jsonl (raw samples) or summarized/<run>.jsonl; with
    benchmark_v2's folders, full_results/ or summarized_results/."""
    found: dict[str, dict[str, str]] = {}
    for name in siblings:
        m = re.fullmatch(rf"({full}|{summarized})/([^/]+)\.jsonl", name)
        if m:
            found.setdefault(m.group(2), {})[m.group(1)] = name
    order = (full, summarized) if raw else (summarized, full)
    return [next(files[c] for c in order if c in files) for _, files in sorted(found.items())]


def _data_files(siblings: Iterable[str], raw: bool) -> list[str]:
    """tfbench's data files, else benchmark_v2's (a dataset transformers' benchmark_v2 or
    `tfbench v2` pushed to). Never both: a run pushed in both layouts (`tfbench push` and
    `tfbench v2`) would count twice, and tfbench's rows are the fuller record."""
    names = list(siblings)
    return _run_files(names, raw) or _run_files(names, raw, v2.HUB_FULL, v2.HUB_SUMMARIZED)


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
    benchmark_v2: bool = False,
) -> tuple[list[str], list[str]]:
    """The files `select` picks from the dataset's file list, downloaded at one revision (in
    parallel); benchmark_v2: `select` also takes benchmark_v2's files (said when there are none)."""
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
            v2_runs = f" and no benchmark_v2 runs ({v2.HUB_FULL}/*.jsonl or {v2.HUB_SUMMARIZED}/*.jsonl)"
            raise UserError(
                f"the Hub dataset {repo} holds no tfbench runs ({CONFIG_FULL}/*.jsonl or "
                f"{CONFIG_SUMMARIZED}/*.jsonl){v2_runs if benchmark_v2 else ''}; runs get there with "
                "push_to_hub or `tfbench push`"
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
                    record = CellRecord.model_validate(row_record(json.loads(line)))
                except (ValueError, ValidationError) as exc:
                    what_line = f"{CONFIG_FULL}/{run_id}.jsonl line {number} of the Hub dataset {repo}"
                    raise UserError(f"{what_line} is not a tfbench row: {exc}") from None
                cells[record.cell_id] = record
    return Run(path=Path(f"hub:{repo}@{run_id}"), meta=meta, cells=cells)


def hub_measurements(
    repo_id: str,
    cell: str,
    endpoint: str | None = None,
    token: str | None = None,
    *,
    raw: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
) -> tuple[list[Measurement], list[str]]:
    """The records of `cell` in the Hub dataset `repo_id`, one per run that has one, and notes on
    the rows left out (a row that is not a cell record).

    raw=True reads full/<run>.jsonl (raw samples, for the test); raw=False the much smaller
    summarized/<run>.jsonl (statistics only: the p50 rule). `endpoint` defaults to HF_ENDPOINT or
    huggingface.co, `token` to HF_TOKEN (none: anonymous), `cache_dir` to the Hugging Face cache.
    UserError for HF_HUB_OFFLINE=1, a repo that is not there or not readable, or an unknown cell.
    """
    repo = check_repo_id(repo_id)
    if offline_mode():
        raise UserError(
            f"cannot read the history from the Hub dataset {repo}: HF_HUB_OFFLINE=1 (or TRANSFORMERS_OFFLINE=1) "
            "forbids reaching the Hub; unset it, or give a local directory of run directories instead"
        )
    files, paths = _download(
        repo, lambda names: _data_files(names, raw), endpoint, token, cache_dir, benchmark_v2=True
    )

    where = f"the Hub dataset {repo}"
    if files[0].startswith((f"{v2.HUB_FULL}/", f"{v2.HUB_SUMMARIZED}/")):
        return _benchmark_v2_measurements(repo, cell, files, paths)
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
        resolve_cell(q, known_all, where)
    cell_id = resolve_cell(q, known, where)
    found: list[Measurement] = []
    notes: list[str] = []
    for name, _, rows in loaded:
        for row in rows:
            if row.get("cell_id") != cell_id:
                continue
            try:
                # A "summarized" row has no runs_* columns: a record of statistics only.
                record = CellRecord.model_validate({**row_record(row), "stats": row_stats(row)})
            except ValidationError as exc:
                notes.append(
                    f"{describe_error(exc, f'{name} of {where}: a row of cell {cell_id}')}: left out"
                )
                continue
            found.append(
                Measurement(
                    run_id=str(row.get("run_id") or Path(name).stem),
                    commit=row.get("measured_commit") or None,
                    branch=row.get("branch") or None,
                    started_at=row.get("run_started_at") or None,
                    hardware=str(row.get("hardware") or "unknown"),
                    record=record,
                    source=f"hub:{repo}/{name}",
                )
            )
    return found, notes


def _benchmark_v2_measurements(
    repo: str, cell: str, files: list[str], paths: list[str]
) -> tuple[list[Measurement], list[str]]:
    """The records of `cell` in a dataset transformers' benchmark_v2 pushed to: each data file is
    one run (bench.results.benchmark_v2_read), named by the file (benchmark_run_<time>)."""
    where = f"the Hub dataset {repo}"
    runs: list[tuple[str, Run]] = []
    notes: list[str] = []
    for name, path in zip(files, paths):
        source = f"hub:{repo}/{name}"
        try:
            run = v2.read_hub_file(path, run_id=Path(name).stem, source=source)
        except RunFileError as exc:
            notes.append(f"{exc}: left out")
            continue
        notes += [f"{source}: {item.reason}: left out" for item in run.skipped]
        runs.append((source, run))
    known = {cid: record.name for _, run in runs for cid, record in run.cells.items()}
    cell_id = resolve_cell(cell, known, where)
    found = [
        measurement(run.meta, run.cells[cell_id], source) for source, run in runs if cell_id in run.cells
    ]
    return found, notes
