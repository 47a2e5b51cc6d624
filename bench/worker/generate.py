"""The measurement itself: warm-up, then timed generate calls (or continuous-batching batches)
with the token clock and the GPU sampler beside them, and what each timed run yields.

Shared with the benchmarks under benchmarks/ (exact_greedy_config, TokenClockProcessor), which
time generate the same way the worker does.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from transformers import CompileConfig, GenerationConfig, LogitsProcessor, LogitsProcessorList

from bench.results.records import Task
from bench.results.stats import cell_stats, run_metrics, summarize
from bench.worker import api
from bench.worker.energy import energy_per_run, joules_per_token
from bench.worker.telemetry import Sampler
from bench.worker.timing import HostClock, make_clock


class CellError(Exception):
    """The cell ran but did not measure what was asked (wrong token count, compile not applied, ...)."""


class TokenClockProcessor(LogitsProcessor):
    """Marks the token clock once per generated token; leaves the scores untouched."""

    def __init__(self, clock: HostClock):
        self.clock = clock

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.clock.mark()
        return scores


def _compiled_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"].get("unique_graphs", 0))


def _compile_config(cell: dict[str, Any]) -> CompileConfig:
    cc = CompileConfig(
        mode=cell["compile"], fullgraph=cell["compile_fullgraph"], dynamic=cell["compile_dynamic"]
    )
    if cell["device"] == "cpu":
        # transformers only auto-compiles generate on accelerators unless this flag is set.
        cc._compile_all_devices = True
    return cc


def check_attn(net: Any, cell: dict[str, Any], when: str) -> str:
    """The attention implementation the model runs; CellError when it is not the one asked for."""
    actual = getattr(net.config, "_attn_implementation", None)
    if cell["model"] == "synthetic:sleep":
        return str(actual)
    if actual not in api.expected_attn(cell):
        raise CellError(
            f"attention implementation is {actual!r} {when}, not the {cell['attn_implementation']!r} asked for"
        )
    return str(actual)


def make_sampler(task: Task, device: str, all_gpus: bool = False) -> Sampler:
    """The GPU telemetry sampler of a cell: a no-op (recording why) unless the cell runs on a GPU.
    all_gpus: every GPU visible to the process (a tensor-parallel cell's), else the current one."""
    if not task.gpu_monitoring or device != "cuda":
        return Sampler("cpu")
    indices = range(torch.cuda.device_count()) if all_gpus else [torch.cuda.current_device()]
    uuids = [str(torch.cuda.get_device_properties(i).uuid) for i in indices]
    # The sampler reads NVML in a process of its own: it never takes this process's GIL.
    return Sampler(uuids, interval_s=task.gpu_sample_interval_s)


def warm_then_measure(
    one_run: Any, task: Task, device: str, phase: Any, before_run: Any = None, all_gpus: bool = False
) -> tuple[list[Any], float, dict[str, Any]]:
    """warmup_iterations untimed calls, then measurement_iterations timed ones with the GPU sampled
    beside them; peak memory covers the timed ones. Returns the runs, the warm-up time, the telemetry.
    before_run, untimed, before every call: a tensor-parallel group's barrier."""
    warm_start = time.perf_counter()
    for i in range(task.warmup_iterations):
        phase("warmup", i + 1, task.warmup_iterations)
        if before_run is not None:
            before_run()
        one_run()
    warmup_time = time.perf_counter() - warm_start
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sampler = make_sampler(task, device, all_gpus).start()
    results = []
    try:
        for i in range(task.measurement_iterations):
            phase("measure", i + 1, task.measurement_iterations)
            if before_run is not None:
                before_run()
            # The marks read the energy counters outside the timed call, after its synchronize.
            with sampler.around_run(i):
                results.append(one_run())
    finally:
        telemetry = sampler.stop()
    if not telemetry.get("available") and not task.gpu_monitoring:
        telemetry = {"available": False, "reason": "gpu_monitoring is off"}
    return results, warmup_time, telemetry


def add_energy(telemetry: dict[str, Any], runs: list[dict[str, Any]], tokens_per_run: int) -> None:
    """Joules per timed run and per generated token, into the runs and the telemetry's statistics."""
    if not telemetry.get("available"):
        return
    energy = energy_per_run(telemetry, len(runs))
    per_token = joules_per_token(energy, tokens_per_run)
    for run, e, t in zip(runs, energy, per_token):
        run["energy_j"], run["energy_per_token_j"] = e, t
    telemetry["energy_per_run_j"] = summarize([e for e in energy if e is not None])
    telemetry["energy_per_token_j"] = summarize([t for t in per_token if t is not None])


def exact_greedy_config(net: Any, tokenizer: Any, n: int) -> GenerationConfig:
    """Greedy decoding of exactly n new tokens, EOS ignored (the harness and its benchmarks share it)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    # generate fills unset fields from the model's own generation config; clear its EOS so that
    # exactly n tokens come out without adding a logits processor.
    net.generation_config.eos_token_id = None
    return GenerationConfig(
        do_sample=False, max_new_tokens=n, eos_token_id=None, pad_token_id=pad, use_cache=True
    )


def _profile(
    task: Task, call_of: Any, device: str, all_threads: bool = False, max_tokens: int | None = None
) -> dict[str, Any] | None:
    """The cell's Profile part: only in its last process (one trace per cell), only when asked.
    max_tokens: the most new tokens the call can make (a cache sized for the timed runs)."""
    if not task.profile or task.process != task.processes - 1:
        return None
    if not task.trace_path or not task.trace_name:
        return {"available": False, "reason": "the task names no trace path"}
    from bench.worker.profile import profile_call

    tokens = task.profile if max_tokens is None else min(task.profile, max_tokens)
    try:
        call = call_of(tokens)
    except Exception as exc:  # noqa: BLE001 - a failed profile is recorded, never a failed cell
        return {"available": False, "reason": f"profiling failed: {type(exc).__name__}: {exc}"}
    out = profile_call(call, device, tokens, task.trace_path, task.trace_name, all_threads)
    if tokens < task.profile:
        said = f"{tokens} new tokens, not the {task.profile} asked: the cache is sized for the timed runs"
        out["note"] = "; ".join(filter(None, (out.get("note"), said)))
    return out


def measure_generate(
    net: Any,
    tokenizer: Any,
    rows: list[list[int]],
    cell: dict[str, Any],
    task: Task,
    phase: Any,
    settle: Any = lambda: None,
    before_run: Any = None,
    all_gpus: bool = False,
) -> dict[str, Any]:
    """Warm-up and timed generate calls; settle() runs after the timed ones and before the
    profiled call (the caller reads peak memory there, so that the profiler's never counts).
    before_run and all_gpus: see warm_then_measure."""
    device, b, s, n = cell["device"], len(rows), len(rows[0]), cell["num_tokens_to_generate"]
    input_ids = torch.tensor(rows, dtype=torch.long, device=device)
    attention_mask = torch.ones_like(input_ids)
    gen = exact_greedy_config(net, tokenizer, n)
    if cell["compile"]:
        gen.cache_implementation = "static"
        gen.compile_config = _compile_config(cell)
    clock = make_clock(device, n)
    processors = LogitsProcessorList([TokenClockProcessor(clock)])
    last: list[Any] = [None]  # the last call's output: its first sequence is the cell's output

    def one_run() -> tuple[float, list[float], float | None]:
        clock.start()
        out = net.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            generation_config=gen,
            logits_processor=processors,
        )
        e2e = clock.stop()
        last[0] = out
        produced = out.shape[1] - s
        if produced != n or out.shape[0] != b:
            raise CellError(f"generate returned {out.shape[0]}x{produced} new tokens, expected {b}x{n}")
        times = clock.token_times()
        if len(times) != n:
            raise CellError(f"the token clock saw {len(times)} tokens, expected {n}")
        return e2e, times, clock.device_e2e

    timed, warmup_time, telemetry = warm_then_measure(one_run, task, device, phase, before_run, all_gpus)
    runs = []
    for e2e, times, device_e2e in timed:
        run = run_metrics(e2e, times, b, s)
        run.pop("itl")  # derivable from token_times; kept out of the raw record to halve its size
        run["token_times"] = times
        if device_e2e is not None:
            run["e2e_latency_device"] = device_e2e  # the same call by CUDA events: a check on the host clock
        runs.append(run)
    graphs = _compiled_graphs()
    if cell["compile"] and graphs == 0:
        raise CellError("torch.compile was asked for but generate compiled nothing (transformers skipped it)")
    stats = cell_stats(runs)
    settle()

    def profiled(tokens: int) -> Any:
        # The same call as a timed one, without the token clock, for `tokens` new tokens.
        pgen = gen.copy() if hasattr(gen, "copy") else GenerationConfig(**gen.to_dict())
        pgen.max_new_tokens = tokens
        return lambda: net.generate(
            input_ids=input_ids, attention_mask=attention_mask, generation_config=pgen
        )

    return {
        "runs": runs,
        "stats": stats,
        "gpu_telemetry": telemetry,
        "warmup_time_s": warmup_time,
        "inputs": {"shape": list(input_ids.shape), "new_tokens": n},
        "compiled_graphs": graphs,
        "output_ids": last[0][0, s:].tolist() if last[0] is not None else None,
        "profile": _profile(task, profiled, device),
    }


def measure_continuous_batching(
    net: Any,
    rows: list[list[int]],
    cell: dict[str, Any],
    task: Task,
    phase: Any,
    settle: Any = lambda: None,
    before_run: Any = None,
    all_gpus: bool = False,
) -> dict[str, Any]:
    from transformers import ContinuousBatchingConfig

    device, b, s, n = cell["device"], len(rows), len(rows[0]), cell["num_tokens_to_generate"]
    gen = GenerationConfig(do_sample=False, max_new_tokens=n, eos_token_id=-1)  # -1: EOS disabled in CB
    if cell["compile"]:
        gen.compile_config = _compile_config(cell)
    cb_kwargs: dict[str, Any] = {
        "auto_switch_to_flash": False,  # never measure another attention than the one asked for
        "allow_block_sharing": False,  # identical prompts would otherwise share their prefill
    }
    if device == "cpu":
        # Explicit sizes: sizing from free memory is slow and meaningless on the CPU.
        page = 256
        cb_kwargs.update(
            page_size=page,
            num_blocks=b * math.ceil((s + n) / page) + 1,
            max_batch_tokens=max(b * s, b),
        )
    options, adapted = api.continuous_batching_options(cb_kwargs)
    manager = net.init_continuous_batching(
        generation_config=gen, continuous_batching_config=ContinuousBatchingConfig(**options)
    )
    effective_attn = check_attn(net, cell, "after continuous batching set-up")
    setup_start = time.perf_counter()
    if device == "cuda":
        manager.warmup()  # CUDA graph capture belongs to set-up, outside the timed window
    manager.start()
    setup_time = time.perf_counter() - setup_start

    first_output: list[Any] = [None]  # the first request's tokens in the last batch

    def one_batch(n: int = n) -> dict[str, Any]:
        t0 = time.perf_counter()
        ids = manager.add_requests(rows, max_new_tokens=n, record_timestamps=True)
        results: dict[str, Any] = {}
        while len(results) < len(ids):
            out = manager.get_result(timeout=1.0)
            if out is None:
                if not manager.is_running():
                    raise CellError("the continuous batching loop stopped before all requests finished")
                continue
            if out.is_finished():
                results[out.request_id] = out
        e2e = time.perf_counter() - t0
        first_output[0] = list(results[ids[0]].generated_tokens)
        requests = []
        for rid in ids:
            out = results[rid]
            if out.error:
                raise CellError(f"request {rid} failed: {out.error}")
            if len(out.generated_tokens) != n or not out.timestamps or len(out.timestamps) != n:
                raise CellError(f"request {rid} produced {len(out.generated_tokens)} tokens, expected {n}")
            times = [t - t0 for t in out.timestamps]
            req_e2e = times[-1]
            requests.append(
                {
                    "e2e_latency": req_e2e,
                    "ttft": times[0],
                    "tpot": (req_e2e - times[0]) / (n - 1) if n > 1 else None,
                    "token_times": times,
                }
            )
        return {"e2e_latency": e2e, "e2e_throughput": b * n / e2e, "requests": requests}

    profile = None
    try:
        runs, warmup_time, telemetry = warm_then_measure(one_batch, task, device, phase, before_run, all_gpus)
        output_ids = first_output[0]
        settle()
        # The profiled batch goes through the same running manager: the one set-up is reused.
        # On the CPU the cache holds exactly the timed runs' tokens (sized above): no more fit.
        cap = n if device == "cpu" else None
        profile = _profile(task, lambda tokens: lambda: one_batch(tokens), device, True, cap)
    finally:
        manager.stop(block=True, timeout=30)
    graphs = _compiled_graphs()
    if cell["compile"] and graphs == 0:
        raise CellError("torch.compile was asked for but continuous batching compiled nothing")
    stats = cell_stats(runs)
    resolved = manager.continuous_batching_config
    return {
        "runs": runs,
        "stats": stats,
        "gpu_telemetry": telemetry,
        "warmup_time_s": warmup_time,
        "setup_time_s": setup_time,
        "effective_attn_implementation": effective_attn,
        "inputs": {"shape": [len(rows), len(rows[0])], "new_tokens": n},
        "compiled_graphs": graphs,
        "continuous_batching_config": {k: _plain(v) for k, v in vars(resolved).items()},
        "output_ids": output_ids,
        "profile": profile,
        **({"api_adapted": adapted} if adapted else {}),
    }


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return repr(value)
