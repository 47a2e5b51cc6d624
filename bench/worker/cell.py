"""The worker: one fresh process per cell. Load, warm up, measure, write the result, leave.

Runs in a child of the runner's fork server, which has imported torch and transformers (and this
module, with what it imports) but never computed anything nor touched CUDA. The child makes its
own session (so a timeout can kill its whole process group), writes its log and compile caches
into the cell's own directories, writes its result file atomically and leaves with os._exit.
The measurement is in generate.py, the diagnosis of failures in diagnose.py.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
import traceback
from typing import Any

import torch

from bench.config.presets import is_synthetic
from bench.config.schema import TEST_NVML_ENV
from bench.results.outputs import OUTPUT_TOKENS_KEPT, degenerate, output_digest
from bench.results.records import Task
from bench.results.store import atomic_write_json
from bench.worker import api, models, quantize, roofline
from bench.worker.diagnose import ModelFault, describe_load_failure, is_oom, short_message
from bench.worker.generate import (
    CellError,
    add_energy,
    check_attn,
    measure_continuous_batching,
    measure_generate,
)

# Modules transformers imports lazily inside from_pretrained and generate (about 1-2 s). The fork
# server imports this module once, so every worker starts with them loaded. Import only: the
# server must never compute (libgomp state) nor touch CUDA.
PRELOAD = (
    "transformers.modeling_utils",
    "transformers.generation.utils",
    "transformers.generation.continuous_batching",
    "transformers.masking_utils",
    "transformers.integrations.sdpa_attention",
    "transformers.integrations.flex_attention",
    "transformers.integrations.eager_paged",
    "transformers.quantizers.auto",
    "transformers.models.llama.modeling_llama",
    "transformers.models.gpt2.modeling_gpt2",
    "torch._dynamo",
    "torch.distributed.launcher.api",  # a tensor-parallel cell's launcher
)
for _name in PRELOAD:
    # A module missing in another transformers version only costs start-up time.
    with contextlib.suppress(Exception):
        importlib.import_module(_name)


def _synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def memory(device: str) -> dict[str, Any]:
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    out: dict[str, Any] = {"peak_rss_bytes": peak_rss}
    if device == "cuda":
        out.update(
            peak_allocated_bytes=torch.cuda.max_memory_allocated(),
            peak_reserved_bytes=torch.cuda.max_memory_reserved(),
            allocated_bytes=torch.cuda.memory_allocated(),
        )
        out["peak_bytes"] = out["peak_allocated_bytes"]
    else:
        out["peak_bytes"] = peak_rss
    return out


def worker_environment(device: str) -> dict[str, Any]:
    import transformers

    env: dict[str, Any] = {
        "transformers": api.version(),
        "transformers_path": os.path.dirname(transformers.__file__ or ""),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "torch_threads": torch.get_num_threads(),
        # Where the runner placed this worker (bench.run.pool), as the worker sees it.
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "cpu_affinity": sorted(os.sched_getaffinity(0)),
    }
    if device == "cuda":
        env["cuda_device_name"] = torch.cuda.get_device_name()
        env["cudnn"] = torch.backends.cudnn.version()
    return env


def inject_fault(cell: dict[str, Any], spec: str | None, process: int = 0, rank: int | None = None) -> None:
    """Fail on purpose, to exercise the runner's fault handling:
    TFBENCH_FAULT=<cell id prefix|*>[@<process>][#<rank>]:<kind>,... (@k: only the cell's process k;
    #r: only rank r of a tensor-parallel cell, which fails there after its load).

    Kinds: raise (a Python error), oom (a real failed allocation), segv, kill (SIGKILL),
    exit (exit code 7 without a result), hang (sleeps, with a child process in its group).
    """
    if not spec:
        return
    for item in spec.split(","):
        target, _, kind = item.strip().partition(":")
        target, hashed, ranked = target.partition("#")
        target, at, which = target.partition("@")
        if not (target == "*" or cell["cell_id"].startswith(target)):
            continue
        if at and int(which) != process:
            continue
        if hashed and int(ranked) != rank:
            continue
        if kind == "raise":
            raise RuntimeError("fault injected by TFBENCH_FAULT")
        if kind == "oom":
            bytearray(1 << 50)  # 1 PiB: the allocator refuses, as in any host out-of-memory
        if kind == "segv":
            os.kill(os.getpid(), signal.SIGSEGV)
        if kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if kind == "exit":
            os._exit(7)
        if kind == "hang":
            subprocess.Popen(["sleep", "3600"])  # a helper in the worker's group, as inductor starts
            time.sleep(3600)


class Unsupported(Exception):
    """The measured transformers lacks an API the cell needs: the cell is skipped, not failed."""


class RankFailure(Exception):
    """A rank of a tensor-parallel cell failed and its group was stopped; `details` goes into the
    error record (the failing rank, its exit code, every rank's end)."""

    def __init__(self, message: str, details: dict[str, Any]):
        super().__init__(message)
        self.details = details


def measure(task: Task, phase: Any) -> dict[str, Any]:
    cell = task.cell
    device = cell["device"]
    lacking = api.missing(cell)
    if lacking is not None:
        raise Unsupported(lacking)
    torch.manual_seed(task.seed)
    phase("load", 0, 0)
    t = time.perf_counter()
    try:
        net, tokenizer = models.load(
            cell["model"],
            cell["revision"],
            cell["model_config"],
            cell["dtype"],
            device,
            cell["attn_implementation"],
            task.trust_remote_code,
            task.seed,
            cell.get("quantization", "none"),
        )
    except Exception as exc:
        fault = None
        if not is_oom(exc):
            # A diagnosis that fails itself must not hide the load error.
            with contextlib.suppress(Exception):
                fault = describe_load_failure(exc, cell["model"], cell["revision"], task.trust_remote_code)
        if fault is None:
            raise
        raise ModelFault(*fault) from exc
    if cell["kernelize"]:
        from kernels import Mode, kernelize

        mode = Mode.INFERENCE | Mode.TORCH_COMPILE if cell["compile"] else Mode.INFERENCE
        net = kernelize(net, mode=mode, device=device)
    _synchronize(device)
    load_time = time.perf_counter() - t
    inject_fault(cell, os.environ.get("TFBENCH_FAULT"), task.process)
    return measure_loaded(net, tokenizer, task, phase, load_time)


def measure_loaded(
    net: Any,
    tokenizer: Any,
    task: Task,
    phase: Any,
    load_time: float,
    before_run: Any = None,
    gpus: int = 1,
    arithmetic_of: Any = None,
) -> dict[str, Any]:
    """Warm-up, timed runs and what the record says of them, for a loaded model. A tensor-parallel
    rank passes its group's barrier (before_run), the cell's GPU count (telemetry over all of them,
    the roofline's aggregate peaks) and the whole model for the arithmetic (its own are shards)."""
    cell = task.cell
    device = cell["device"]
    memory_after_load = memory(device)
    whole = net if arithmetic_of is None else arithmetic_of
    out: dict[str, Any] = {"load_time_s": load_time, "parameters": models.parameter_count(whole)}
    if cell.get("quantization", "none") != "none":
        out["quantization"] = quantize.applied(net, cell["quantization"], models.TORCH_DTYPES[cell["dtype"]])
        if not out["quantization"]["quantized_parameters"]:
            # Never measure the unquantized model under a quantized cell's name.
            raise CellError(f"{cell['quantization']} quantized none of the model's weights")
    rows = models.prompt_ids(tokenizer, cell["batch_size"], cell["sequence_length"])
    measured_memory: dict[str, Any] = {}

    def settle() -> None:
        # Peak memory of the timed runs, read before a profiled call can raise it.
        measured_memory.update(memory(device))

    group = {"before_run": before_run, "all_gpus": gpus > 1}
    with torch.inference_mode():
        if cell["continuous_batching"]:
            # No barrier: the manager's own thread runs the forwards and their collectives, and a
            # barrier from this thread on the same group would interleave with them.
            group["before_run"] = None
            out.update(measure_continuous_batching(net, rows, cell, task, phase, settle, **group))
        else:
            out["effective_attn_implementation"] = check_attn(net, cell, "after loading")
            out.update(measure_generate(net, tokenizer, rows, cell, task, phase, settle, **group))
    out["output"] = cell_output(out.pop("output_ids", None), tokenizer, cell["model"])
    out["memory"] = {
        **(measured_memory or memory(device)),
        "after_load_bytes": memory_after_load["peak_bytes"],
    }
    if task.memory_limit_bytes is not None:
        out["memory"]["limit_bytes"] = task.memory_limit_bytes
    out["worker_environment"] = worker_environment(device)
    # Joules per run and per generated token, for both measurement paths.
    add_energy(out["gpu_telemetry"], out["runs"], cell["batch_size"] * cell["num_tokens_to_generate"])
    nvml_peak = [
        ((dev.get("metrics") or {}).get("memory_used_bytes") or {}).get("max")
        for dev in (out["gpu_telemetry"].get("devices") or [])
    ]
    if nvml_peak and all(v is not None for v in nvml_peak):
        out["memory"]["nvml_used_peak_bytes"] = max(nvml_peak)  # the whole device, any process
    # Which of the cell's processes ran each timed run: the unit of the noise model.
    for run in out["runs"]:
        run["process"], run["pid"] = task.process, os.getpid()
    out["warmup_check"] = warmup_check(out["runs"])
    out["roofline"] = cell_roofline(whole, cell, out["stats"], gpus)
    if out["roofline"].get("kv_cache_bytes") is not None:
        out["memory"]["kv_cache_bytes"] = out["roofline"]["kv_cache_bytes"]
    return out


def cell_output(ids: list[int] | None, tokenizer: Any, model: str) -> dict[str, Any] | None:
    """The record's Output part: the digest of the ids, their decoded text (the kept ids only),
    and for a real model whether the output is degenerate (a synthetic model's random weights
    loop by nature: no flag there)."""
    if ids is None:
        return None
    text = None
    # Decoding 64 ids costs microseconds; a tokenizer that cannot only loses the text.
    with contextlib.suppress(Exception):
        text = str(tokenizer.decode(ids[:OUTPUT_TOKENS_KEPT], skip_special_tokens=True))
    out = output_digest(ids, text)
    if not is_synthetic(model):
        out["degenerate"] = degenerate(ids)
    return out


def warmup_check(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Whether warm-up absorbed compilation and graph capture: the first timed run must not stand out."""
    e2e = [r["e2e_latency"] for r in runs if r.get("e2e_latency") is not None]
    if len(e2e) < 3:
        return {"first_over_median": None, "suspect": None, "reason": "fewer than 3 timed runs"}
    ratio = e2e[0] / statistics.median(e2e)
    # 25%: well above run-to-run noise on a quiet GPU, well below what a compile or a capture costs.
    return {"first_over_median": ratio, "suspect": ratio > 1.25}


def cell_roofline(net: Any, cell: dict[str, Any], stats: dict[str, Any], gpus: int = 1) -> dict[str, Any]:
    """Decode MBU and prefill MFU from the model's own arithmetic and the GPU's peaks (p50 ttft and
    tpot); a tensor-parallel cell's peaks are its `gpus` GPUs' together."""
    try:
        facts = roofline.model_facts(net)
    except Exception as exc:  # noqa: BLE001 - a model the arithmetic does not know is not a failed cell
        return {"available": False, "reason": f"model arithmetic unavailable: {type(exc).__name__}: {exc}"}
    gpu, reason = None, None
    if cell["device"] == "cuda":
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        gpu, reason = roofline.match_gpu_with_reason(props.name, props.total_memory)
    return roofline.roofline(
        facts,
        gpu,
        cell["dtype"],
        cell["batch_size"],
        cell["sequence_length"],
        cell["num_tokens_to_generate"],
        (stats.get("ttft") or {}).get("p50"),
        (stats.get("tpot") or {}).get("p50"),
        gpu_reason=reason,
        device=cell["device"],
        gpus=gpus,
    )


# The innermost frames of a traceback: where it failed matters more than how generate got there.
TRACEBACK_FRAMES = 30


def failure(exc: BaseException, task: Task) -> tuple[str, dict[str, Any]]:
    """The status and error record of a cell that raised. `type` is always the exception the
    library raised; where `message` is reworded, the library's own is kept in `exception_message`."""
    if isinstance(exc, ModelFault) and exc.__cause__ is not None:
        cause = exc.__cause__
        return "failed", {
            "kind": "model",
            "type": type(cause).__name__,
            "message": str(exc),
            "exception_message": str(cause),
            # Read by the attempt accounting: a deterministic fault is not worth another load.
            "retryable": exc.retryable,
            "traceback": "".join(traceback.format_exception(cause, limit=-TRACEBACK_FRAMES)),
        }
    if isinstance(exc, RankFailure):
        oom = exc.details.get("kind") == "oom"
        return ("oom" if oom else "failed"), {
            "type": type(exc).__name__,
            "message": str(exc),
            **exc.details,
            "kind": "oom" if oom else "rank",
        }
    oom = is_oom(exc)
    error: dict[str, Any] = {
        "kind": "oom" if oom else ("cell" if isinstance(exc, CellError) else "python"),
        "type": type(exc).__name__,
        "message": str(exc),
        "traceback": traceback.format_exc(limit=-TRACEBACK_FRAMES),
    }
    limit = task.memory_limit_bytes
    # torch.OutOfMemoryError is a device allocator's; the limit only bounds host memory.
    if oom and limit is not None and not isinstance(exc, torch.OutOfMemoryError):
        said = short_message(exc, 500)
        error["message"] = (
            f"out of host memory under cell_memory_limit_gb={task.cell_memory_limit_gb:g} "
            f"({limit} bytes of private memory for the worker, RLIMIT_DATA)"
            + (f": {said}" if str(exc) else "")
        )
        error["exception_message"] = str(exc)
        error["memory_limit_bytes"] = limit
    return ("oom" if oom else "failed"), error


def run_cell(task: Task, conn: Any, entered: float, how: Any = None) -> None:
    """Measure the cell (with `how`, else measure), write its result file, leave through os._exit
    (never returns)."""
    # Each cell compiles into its own cache: nothing carries over between cells. The processes of
    # one cell share theirs (cache_dir), so that later ones need not recompile from scratch.
    cache = task.cache_dir or task.scratch_dir
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(cache, "inductor")
    os.environ["TRITON_CACHE_DIR"] = os.path.join(cache, "triton")
    if task.cpus:
        # As many compute threads as the worker has cores: more would contend with each other.
        torch.set_num_threads(len(task.cpus))
    # Set when the parent's GPUs are a test double: cuda cells then run on the CPU, while the pool
    # still hands each worker its own (simulated) GPUs and cores.
    if os.environ.get(TEST_NVML_ENV) and task.cell["device"] == "cuda":
        # The test suite's simulated GPUs cannot compute: the cell runs on the CPU, on its own cores.
        task.cell = {**task.cell, "device": "cpu"}

    def phase(name: str, i: int, total: int) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            conn.send(("phase", name, i, total))

    result: dict[str, Any] = {"worker_pid": os.getpid(), "entered_at": entered}
    try:
        result.update((how or measure)(task, phase))
        result["status"] = "ok"
    except Unsupported as exc:
        result["status"], result["reason"] = "skipped", str(exc)
        result["worker_environment"] = worker_environment(task.cell["device"])
    except BaseException as exc:  # noqa: BLE001 - every failure must become a result
        result["status"], result["error"] = failure(exc, task)
        traceback.print_exc()
    result["finished_at"] = time.perf_counter()
    exit_code = 0
    try:
        atomic_write_json(task.result_path, result)
        phase("done", 0, 0)
    except BaseException:
        traceback.print_exc()
        exit_code = 3
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)
