"""A cell measured in several worker processes, put together: each process's result added to
the cell's record as it arrives. Pure functions over plain values; the runner writes the result.

What a process contributes: its timed runs (tagged with the process index and pid), one
ProcessInfo (its load and warm-up time, its compile cache, its warm-up check), its peak memory
and energy. What the record says of the cell as a whole: statistics over every run of every
process (with each process's median and the between-process CV, bench.results.stats.cell_stats);
the largest peak memory; what describes the model and the set-up (parameters, effective attention,
compiled graphs) from the first process; the roofline of the first process rescaled to the
pooled p50s (MBU and MFU are inversely proportional to tpot and ttft).
"""

from __future__ import annotations

from typing import Any

from bench.results.stats import cell_stats, summarize

# Result keys that describe the model and its set-up: the same in every process, kept from the first.
FIRST_PROCESS_KEYS = (
    "parameters",
    "quantization",
    "inputs",
    "compiled_graphs",
    "effective_attn_implementation",
    "worker_environment",
    "continuous_batching_config",
    "api_adapted",
    "setup_time_s",
    "load_time_s",
    "warmup_time_s",
    "gpu_telemetry",
    "tensor_parallel",
)


# Result keys the last process decides: the cell's output is its last timed run's, and only the
# last process profiles.
LAST_PROCESS_KEYS = ("output", "profile")


def process_info(index: int, result: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """The ProcessInfo of one process from its worker result and its timing (base)."""
    group = result.get("tensor_parallel") or {}
    return {
        "index": index,
        "pid": base.get("worker_pid"),
        "attempt": base.get("attempt"),
        "runs": len(result.get("runs") or []),
        "load_time_s": result.get("load_time_s"),
        "warmup_time_s": result.get("warmup_time_s"),
        "started_at": base.get("started_at"),
        "finished_at": base.get("finished_at"),
        "duration_s": base.get("duration_s"),
        "compile_cache": base.get("compile_cache"),
        "isolation": base.get("isolation"),
        "warmup_check": result.get("warmup_check"),
        # A tensor-parallel cell starts a group in every process: each start-up is kept.
        **({"group_startup_s": group["group_startup_s"]} if "group_startup_s" in group else {}),
        **{k: base.get(k) for k in ("gpus", "gpu_names", "cpus", "numa_node") if base.get(k) is not None},
    }


def add_process(
    measured: dict[str, Any], index: int, result: dict[str, Any], base: dict[str, Any]
) -> dict[str, Any]:
    """The cell's measured fields with one more process's result added (measured: {} at first)."""
    out = dict(measured)
    first = not out.get("processes")
    if first:
        out.update({k: result[k] for k in FIRST_PROCESS_KEYS if k in result})
    out.update({k: result[k] for k in LAST_PROCESS_KEYS if result.get(k) is not None})
    out["runs"] = [*(out.get("runs") or []), *(result.get("runs") or [])]
    out["processes"] = [*(out.get("processes") or []), process_info(index, result, base)]
    memory = result.get("memory") or {}
    if first or (memory.get("peak_bytes") or 0) > ((out.get("memory") or {}).get("peak_bytes") or 0):
        out["memory"] = memory
    if first:
        out["roofline"] = result.get("roofline")
    return out


def finish(measured: dict[str, Any]) -> dict[str, Any]:
    """The statistics, warm-up check, energy and roofline of the whole cell, once every process is in."""
    out = dict(measured)
    runs = out.get("runs") or []
    out["stats"] = cell_stats(runs)
    checks = [p.get("warmup_check") or {} for p in out.get("processes") or []]
    suspects = [c.get("suspect") for c in checks if c.get("suspect") is not None]
    ratios = [c.get("first_over_median") for c in checks if c.get("first_over_median") is not None]
    out["warmup_check"] = {
        "first_over_median": max(ratios) if ratios else None,
        "suspect": any(suspects) if suspects else None,
        "per_process": checks,
    }
    telemetry = out.get("gpu_telemetry")
    if isinstance(telemetry, dict) and telemetry.get("available"):
        telemetry = dict(telemetry)
        telemetry["energy_per_run_j"] = summarize([r.get("energy_j") for r in runs])
        telemetry["energy_per_token_j"] = summarize([r.get("energy_per_token_j") for r in runs])
        out["gpu_telemetry"] = telemetry
    out["roofline"] = _rescaled(out.get("roofline"), out.get("processes") or [], runs, out["stats"])
    return out


def _rescaled(
    roofline: Any, processes: list[dict[str, Any]], runs: list[dict[str, Any]], stats: dict[str, Any]
) -> Any:
    """The first process's MBU and MFU at the cell's pooled p50 tpot and ttft."""
    if not isinstance(roofline, dict) or len(processes) < 2:
        return roofline
    first = processes[0]["index"]
    own = cell_stats([r for r in runs if (r.get("process") or 0) == first])
    out = dict(roofline)
    for key, metric in (("decode_mbu", "tpot"), ("prefill_mfu", "ttft")):
        was, now = (own.get(metric) or {}).get("p50"), (stats.get(metric) or {}).get("p50")
        if isinstance(out.get(key), (int, float)) and was and now:
            out[key] = out[key] * was / now
    out["p50_of"] = "every process (rescaled from the first process's model arithmetic)"
    return out
