"""A tensor-parallel cell: tp_size ranks started from the worker through torch.distributed's elastic
launcher (what torchrun runs), and what their ends mean for the cell.

The launch is torchrun --standalone's: one node, a c10d rendezvous on a free port of 127.0.0.1,
no restarts (max_restarts=0), so that one failed rank stops the whole group and the cell gets that
rank's error. The ranks are forked from the worker, which has imported torch and transformers but
computed nothing, and stay in its process group: the runner's timeout kills the worker's group,
every rank with it; each rank also dies with the worker (rank.die_with_worker).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from bench.config.presets import preset_for
from bench.plan.matrix import TP_KERNELIZE
from bench.results.records import Task
from bench.worker import api, rank
from bench.worker.cell import RankFailure, Unsupported

LAUNCHER = "torch.distributed.elastic (c10d rendezvous on 127.0.0.1, as torchrun --standalone)"


def model_problem(cell: dict[str, Any], trust_remote_code: bool) -> str | None:
    """Why tp_plan="auto" cannot shard a hub or local model over tp_size ranks, or None: its config
    has no tp plan, or heads that tp_size does not divide (the plan checks synthetic presets)."""
    if preset_for(cell["model"]) is not None:
        return None
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(
        cell["model"], revision=cell["revision"], trust_remote_code=trust_remote_code
    )
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if not (getattr(config, "base_model_tp_plan", None) or getattr(text, "base_model_tp_plan", None)):
        return f"{cell['model']} has no tp plan in transformers (base_model_tp_plan): tp_plan auto cannot shard it"
    tp = cell["tp_size"]
    for key in ("num_attention_heads", "num_key_value_heads"):
        heads = getattr(text, key, None)
        if isinstance(heads, int) and heads % tp:
            return f"{key} = {heads} is not divisible by tp_size {tp}"
    return None


def launch_config(tp: int, log_dir: str) -> LaunchConfig:
    return LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=tp,
        run_id=str(uuid.uuid4()),
        role="tfbench-rank",
        rdzv_backend="c10d",
        rdzv_endpoint="127.0.0.1:0",  # port 0: the launcher's store takes a free one
        local_addr="127.0.0.1",
        max_restarts=0,
        monitor_interval=0.1,
        # fork: the ranks inherit the imports of the worker (seconds each on a small machine).
        start_method="fork",
        logs_specs=DefaultLogsSpecs(log_dir=log_dir),
    )


def signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def group_failure(exc: ChildFailedError, tp: int, rank_dir: Path) -> RankFailure:
    """The rank whose failure stopped the group, in words and as error details (every rank that
    ended listed). A rank's failure makes its peers fail in their next collective, and the launcher
    may see a peer's end first: the cause is a rank killed by a signal (it wrote no error), else the
    rank that wrote its error first (rank.rank_main writes one as it raises)."""
    written: dict[int, dict[str, Any]] = {}
    for path in rank_dir.glob("rank-*.error.json"):
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(path.read_text())
            written[int(data["rank"])] = data
    ends: dict[int, dict[str, Any]] = {}
    for r, f in exc.failures.items():
        message = f.message.get("message") if isinstance(f.message, dict) else f.message
        ends[r] = {"rank": r, "pid": f.pid, "exit_code": f.exitcode, "message": str(message or "")[:2000]}
    for r, data in written.items():
        entry = ends.setdefault(r, {"rank": r, "pid": data.get("pid"), "exit_code": None})
        entry.update(type=data.get("type"), message=str(data.get("message", ""))[:2000])
    killed = [r for r, e in ends.items() if (e.get("exit_code") or 0) < 0 and r not in written]
    if killed:
        first = min(killed)
        said = f"killed by {signal_name(-int(ends[first]['exit_code']))}"
    elif written:
        first = min(written, key=lambda r: written[r].get("at", 0.0))
        said = f"{written[first].get('type')}: {written[first].get('message')}"
    else:
        first = exc.get_first_failure()[0]
        said = ends[first]["message"]
    details = {
        "rank": first,
        "exit_code": ends.get(first, {}).get("exit_code"),
        "ranks": sorted(ends.values(), key=lambda e: e["rank"]),
    }
    if written.get(first, {}).get("type") in ("OutOfMemoryError", "MemoryError"):
        details["kind"] = "oom"
    return RankFailure(f"rank {first} of {tp} failed, the group was stopped: {said}"[:2000], details)


def measure_group(task: Task, phase: Any) -> dict[str, Any]:
    """The cell's result from rank 0, with every rank's facts under tensor_parallel."""
    cell = task.cell
    tp, device = cell["tp_size"], cell["device"]
    lacking = api.missing(cell)
    if lacking is not None:
        raise Unsupported(lacking)
    if cell["kernelize"]:
        raise Unsupported(TP_KERNELIZE)  # the plan skips it; a task built elsewhere is told the same
    problem = model_problem(cell, task.trust_remote_code)
    if problem is not None:
        raise Unsupported(problem)
    if device == "cpu":
        # transformers builds its mesh on the machine's accelerator; a CPU cell must see none.
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    log_dir = Path(task.scratch_dir) / "elastic"
    rank.PHASE = phase
    t_launch = time.perf_counter()
    try:
        returns = elastic_launch(launch_config(tp, str(log_dir)), rank.rank_main)(task.model_dump(), t_launch)
    except ChildFailedError as exc:
        raise group_failure(exc, tp, rank.rank_dir(task)) from None
    group_s = time.perf_counter() - t_launch
    infos = [returns[r]["rank"] for r in sorted(returns)]
    out = dict(returns[0]["result"])
    peaks = [(i["memory"] or {}).get("peak_bytes") for i in infos]
    out["memory"] = {
        **out["memory"],
        # The largest rank's: what one device (or one rank's share of the host) had to hold.
        "peak_bytes": max((p for p in peaks if p is not None), default=None),
        "per_rank_peak_bytes": peaks,
    }
    out["tensor_parallel"] = {
        "tp_size": tp,
        "world_size": len(infos),
        "backend": rank.backend_for(device),
        "launcher": LAUNCHER,
        # From the launch call to the last rank through the process group's first barrier.
        "group_startup_s": max(i["ready_s"] for i in infos),
        "group_s": group_s,
        "ranks": infos,
    }
    return out
