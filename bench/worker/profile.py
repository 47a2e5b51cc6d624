"""One generate call under torch.profiler, after a cell's timed runs (so that the timed numbers
never carry the profiler's overhead): its trace as gzipped Chrome/Perfetto JSON, and the top
operators by self time for the record. A profile that fails never fails the cell: the record's
profile part says why there is none.
"""

from __future__ import annotations

import gzip
import os
import shutil
from typing import Any

import torch

from bench.results.outputs import is_operator, op_summary


def _self_time(event: Any, device: str) -> float:
    """An operator's self time in µs: on the device when the cell runs on a GPU (the time that
    bounds generate there), on the CPU otherwise. torch < 2.4 names the device time cuda."""
    if device == "cuda":
        return float(
            getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0)
        )
    return float(event.self_cpu_time_total)


def _all_threads() -> Any:
    """A profiler config that records the operators of every thread (continuous batching runs
    its model in a background thread, which the profiler's default, the calling thread only,
    misses); None where this torch has no such option."""
    try:
        from torch._C._profiler import _ExperimentalConfig

        return _ExperimentalConfig(profile_all_threads=True)
    except Exception:  # noqa: BLE001 - an older torch: the caller records what is missed
        return None


def profile_call(
    call: Any, device: str, new_tokens: int, trace_path: str, trace_name: str, all_threads: bool = False
) -> dict[str, Any]:
    """Run call() once under the profiler; the record's Profile part (available False with the
    reason when anything went wrong). all_threads: the model runs in another thread than call()."""
    try:
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        extra: dict[str, Any] = {}
        note = None
        if all_threads:
            config = _all_threads()
            if config is not None:
                extra["experimental_config"] = config
            elif device != "cuda":  # on a GPU the kernels are seen from any thread
                note = f"torch {torch.__version__} profiles the calling thread only: the model's thread is missed"
        with torch.profiler.profile(
            activities=activities, record_shapes=True, with_stack=True, **extra
        ) as prof:
            call()
            if device == "cuda":
                torch.cuda.synchronize()
        # with_stack adds Python frames to the averages; only operators and kernels are counted.
        ops = [
            (e.key, e.count, t)
            for e in prof.key_averages()
            if (t := _self_time(e, device)) > 0 and (device == "cuda" or is_operator(e.key))
        ]
        os.makedirs(os.path.dirname(trace_path), exist_ok=True)
        raw = trace_path + ".tmp.json"
        prof.export_chrome_trace(raw)
        # Gzipped: a trace with stacks is tens of MB of JSON that compresses ~10x; Perfetto and
        # chrome://tracing open .json.gz as they are.
        with open(raw, "rb") as src, gzip.open(trace_path + ".tmp", "wb", compresslevel=6) as dst:
            shutil.copyfileobj(src, dst)
        os.remove(raw)
        os.replace(trace_path + ".tmp", trace_path)
        return {
            "available": True,
            "new_tokens": new_tokens,
            "time": "device" if device == "cuda" else "cpu",
            "trace": trace_name,
            "trace_bytes": os.path.getsize(trace_path),
            **op_summary(ops),
            **({"note": note} if note else {}),
        }
    except Exception as exc:  # noqa: BLE001 - a failed profile is recorded, never a failed cell
        return {
            "available": False,
            "new_tokens": new_tokens,
            "reason": f"profiling failed: {type(exc).__name__}: {exc}",
        }
