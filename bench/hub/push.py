"""Pushing a run's results to a Hugging Face Hub dataset repository.

One push is one commit to a dataset repo (created private by default) holding the run's files in
the layout of bench.hub.schema (summarized/<run_id>.jsonl, full/<run_id>.jsonl, runs/<run_id>.json)
and the dataset card of bench.hub.card (README.md), read from the Hub and updated.

The token comes from the `token` argument or the HF_TOKEN environment variable, never from a
stored login, and never appears in a message: every error text is scrubbed of it. Nothing under
the run directory is written. Every request has a connect and a read timeout (bench.hub.http).
Failures that may pass (HTTP 408, 429, 5xx, a timeout, a dropped connection, a gateway's non-JSON
answer) are retried with exponential backoff; the last failure raises PushError, which says how
to push the same results later. The errors, the checks, the scrubbing and the retry loop are
bench.hub.commit's, shared with the push of benchmark_v2-format files; they are importable from
here as well, where callers have always found them.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import __version__
from bench.hub.card import render_card
from bench.hub.commit import (
    CommitResult,
    PushConfigError,
    check_repo_id,
    commit_with_retries,
    offline_mode,
    scrub,
    scrub_files,
)
from bench.hub.commit import PushError as PushError  # re-exported: callers catch it from here
from bench.hub.http import hub_timeouts, use_timeouts
from bench.hub.schema import CONFIG_FULL, CONFIG_SUMMARIZED, context_row, full_row, plain, summarized_row
from bench.results.records import CellRecord
from bench.results.store import Skipped, open_run
from bench.results.summary import summary_rows

# ---------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class PushResult(CommitResult):
    card: str  # "created" (none on the Hub yet), "updated" (prose kept), "generated" (fetch_card=False)


# ---------------------------------------------------------------------------------------------
# Validation


def resolve_token(token: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The explicit token, else HF_TOKEN; a stored `hf auth login` token is deliberately not used."""
    environ = os.environ if environ is None else environ
    value = token if token else environ.get("HF_TOKEN", "")
    value = value.strip()
    if not value:
        raise PushConfigError(
            "pushing to the Hub needs a token with write access: set HF_TOKEN "
            "(e.g. `docker run -e HF_TOKEN ...`; the token is never written to the results or the logs)"
        )
    return value


def check_push_config(
    repo_id: Any, token: str | None = None, environ: Mapping[str, str] | None = None
) -> str:
    """Everything a push needs that can be checked before a run starts; returns the repo id.

    Raises PushConfigError (exit 2) for a malformed repo id, a missing HF_TOKEN or HF_HUB_OFFLINE=1,
    UserError (exit 2) for a bad TFBENCH_HUB_CONNECT_TIMEOUT_S or TFBENCH_HUB_READ_TIMEOUT_S.
    """
    repo = check_repo_id(repo_id)
    resolve_token(token, environ)
    hub_timeouts(environ)
    if offline_mode():
        raise PushConfigError(
            f"cannot push to {repo}: HF_HUB_OFFLINE=1 (or TRANSFORMERS_OFFLINE=1) forbids reaching the Hub; "
            "unset it to push, or push later with `tfbench push RUN_DIR --repo ORG/NAME`"
        )
    return repo


# ---------------------------------------------------------------------------------------------
# Files


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    return rows


def _jsonl(rows: Sequence[Mapping[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in rows).encode()


def _safe_name(run_id: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]", "_", run_id).strip("._") or "run"
    return name[:200]


def load_run(
    run_dir: str | os.PathLike[str],
    skipped: list[Skipped] | None = None,
) -> tuple[dict[str, Any], list[CellRecord], list[dict[str, Any]]]:
    """run.json, the cell records (by cell index) and the summary rows of a run directory.

    A file in cells/ that is not a cell record is left out, never uploaded; it is added to
    `skipped`, as is a summary.jsonl that cannot be read (its rows then come from the records).
    """
    path = Path(run_dir)
    run = open_run(path)
    records, problems = run.records(), list(run.skipped)
    run_id = run.run_id
    summary_path = path / "summary.jsonl"
    summary = None
    if summary_path.is_file():
        try:
            summary = _read_jsonl(summary_path)
        except (OSError, ValueError) as exc:
            problems.append(
                Skipped(summary_path, f"not JSON lines: {exc}; its rows come from the cell records")
            )
    if summary is None:  # a run stopped before its summary: the same rows from the cell records
        summary = summary_rows(run_id, list(records))
    if skipped is not None:
        skipped.extend(problems)
    return run.meta.to_dict(), records, summary


def build_files(
    run_dir: str | os.PathLike[str],
    *,
    existing_card: str | None = None,
    repo_id: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, bytes]:
    """Path in the repository -> content, for one run. Deterministic: the same run gives the same
    bytes, so a push repeated after a lost answer commits nothing new. Reads only."""
    run, records, summary = load_run(run_dir)
    context = context_row(run, environ)
    run_id = str(context["run_id"] or Path(run_dir).name)
    context["run_id"] = run_id
    name = _safe_name(run_id)
    summarized = [summarized_row(context, row) for row in summary]
    full = [full_row(context, record) for record in records]
    run_json = json.dumps(plain(run), indent=1, sort_keys=False, allow_nan=False, default=str) + "\n"
    return {
        f"{CONFIG_SUMMARIZED}/{name}.jsonl": _jsonl(summarized),
        f"{CONFIG_FULL}/{name}.jsonl": _jsonl(full),
        f"runs/{name}.json": run_json.encode(),
        "README.md": render_card(existing_card, repo_id).encode(),
    }


# ---------------------------------------------------------------------------------------------
# Push


_sleep: Callable[[float], None] = time.sleep  # tests replace it


def _fetch_card(api: Any, repo_id: str, token: str) -> str | None:
    """The README.md on the repo's main branch, or None when there is none."""
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    url = f"{api.endpoint}/datasets/{repo_id}/resolve/main/README.md"
    headers = build_hf_headers(token=token, library_name="tfbench", library_version=__version__)
    response = get_session().get(url, headers=headers)
    if response.status_code == 404:
        return None
    hf_raise_for_status(response)
    return response.content.decode("utf-8", errors="replace")


def _commit_message(context: Mapping[str, Any]) -> tuple[str, str]:
    sha = context.get("measured_commit")
    summary = (
        f"tfbench run {context.get('run_id')}: commit {sha[:12] if sha else 'unknown'}, "
        f"tfbench {context.get('tfbench_version')}, {context.get('hardware')}"
    )
    lines = [
        f"run_id: {context.get('run_id')}",
        f"measured_commit: {sha or 'unknown'} ({context.get('measured_commit_source') or 'no source'})",
        f"branch: {context.get('branch') or '-'}",
        f"tfbench: {context.get('tfbench_version')}",
        f"hardware: {context.get('hardware')} on {context.get('hostname')}",
        f"torch: {context.get('torch_version')}, transformers: {context.get('transformers_version')}",
        f"run status: {context.get('run_status')}",
    ]
    return summary, "\n".join(lines)


def push_run(
    run_dir: str | os.PathLike[str],
    repo_id: str,
    token: str | None = None,
    private: bool = True,
    endpoint: str | None = None,
    retries: int = 5,
    backoff: float = 2.0,
    *,
    fetch_card: bool = True,
    environ: Mapping[str, str] | None = None,
    log: Any = None,
    warn: Callable[[Skipped], None] | None = None,
) -> PushResult:
    """Upload one run (both formats, the run's run.json, the card) as one commit to a dataset repo.

    The repo is created if missing (private unless private=False; an existing repo keeps its
    visibility). `token` defaults to HF_TOKEN; `endpoint` to HF_ENDPOINT / huggingface.co.
    Transient failures are tried again `retries` times, after backoff, 2*backoff, 4*backoff, ...
    seconds (at most 60; a Retry-After the Hub sends is honoured), each wait scaled by a random
    factor in [0.5, 1]; a request that timed out (TFBENCH_HUB_CONNECT_TIMEOUT_S,
    TFBENCH_HUB_READ_TIMEOUT_S) counts as transient. The card on the Hub is read and updated
    (fetch_card=False: a generated card replaces it, prose and all). Raises PushConfigError
    (exit 2) before any request for what a person must fix, PushError when the Hub could not be
    reached or refused the push.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    environ = os.environ if environ is None else environ
    repo = check_repo_id(repo_id)
    secret = resolve_token(token, environ)
    path = Path(run_dir)
    later = f"tfbench push {path} --repo {repo}"
    if offline_mode():
        raise PushConfigError(
            f"cannot push run {path.name} to {repo}: HF_HUB_OFFLINE=1 (or TRANSFORMERS_OFFLINE=1) forbids "
            f"reaching the Hub. The results stay in {path}; unset it and push with: {later}"
        )
    use_timeouts(environ)
    skipped: list[Skipped] = []
    run, _, _ = load_run(path, skipped)
    for item in skipped if warn is not None else ():
        warn(item)
    context = context_row(run, environ)
    run_id = context["run_id"] or path.name
    summary, description = (scrub(text, secret) for text in _commit_message({**context, "run_id": run_id}))
    # Built once, before any request: the data files do not depend on what the Hub holds.
    files = scrub_files(build_files(path, repo_id=repo, environ=environ), secret)
    api = HfApi(endpoint=endpoint, token=secret, library_name="tfbench", library_version=__version__)

    def attempt(attempts: int) -> PushResult:
        url = api.create_repo(repo, repo_type="dataset", private=private, exist_ok=True)
        existing = _fetch_card(api, repo, secret) if fetch_card else None
        card_state = "updated" if existing is not None else ("created" if fetch_card else "generated")
        files["README.md"] = scrub(render_card(existing, repo), secret).encode()
        operations = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=c) for p, c in files.items()]
        info = api.create_commit(
            repo,
            operations,
            commit_message=summary,
            commit_description=description,
            repo_type="dataset",
        )
        return PushResult(
            repo_id=repo,
            repo_url=str(url),
            commit_url=str(info.commit_url),
            commit_oid=getattr(info, "oid", None),
            files=tuple(files),
            attempts=attempts,
            card=card_state,
        )

    return commit_with_retries(
        attempt,
        repo_id=repo,
        token=secret,
        endpoint=api.endpoint,
        what=f"run {run_id}",
        later=later,
        kept=str(path),
        retries=retries,
        backoff=backoff,
        log=log,
        sleep=_sleep,  # read at call time: tests replace the module's _sleep
    )
