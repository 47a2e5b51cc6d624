"""The worker: one fresh process per cell. Load, warm up, measure, write the result, leave.

Runs in a child of the runner's fork server, which has imported torch and transformers but
never computed anything nor touched CUDA. The child makes its own session (so a timeout can
kill its whole process group), writes its log and compile caches into the cell's own
directories, writes its result file atomically and leaves with os._exit.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import json
import math
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from transformers import CompileConfig, GenerationConfig, LogitsProcessor, LogitsProcessorList

from bench.config.presets import is_synthetic
from bench.results.stats import run_metrics, summarize, summarize_runs
from bench.results.store import atomic_write_json
from bench.worker import models, roofline
from bench.worker import telemetry as monitor
from bench.worker.timing import HostClock, make_clock

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
)
for _name in PRELOAD:
    # A module missing in another transformers version only costs start-up time.
    with contextlib.suppress(Exception):
        importlib.import_module(_name)


class CellError(Exception):
    """The cell ran but did not measure what was asked (wrong token count, compile not applied, ...)."""


class TokenClockProcessor(LogitsProcessor):
    """Marks the token clock once per generated token; leaves the scores untouched."""

    def __init__(self, clock: HostClock):
        self.clock = clock

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.clock.mark()
        return scores


class ModelFault(Exception):
    """The model could not be loaded because of the model itself (its files, its cache entry, the
    code it ships): the message says what is wrong in words; the library's exception is the cause."""

    def __init__(self, words: str, retryable: bool):
        super().__init__(words)
        self.retryable = retryable


# What torch's CPU allocator, glibc and C++ code say when an allocation fails; "not enough
# memory" is the allocator's wording on some platforms and versions.
_OOM_WORDS = (
    "out of memory",
    "can't allocate memory",
    "cannot allocate memory",
    "not enough memory",
    "bad_alloc",
)


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and what it was raised from or while handling, without looping on cycles."""
    out: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in out):
        out.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return out


def is_oom(exc: BaseException) -> bool:
    """A failed allocation anywhere in the chain: torch (GPU or CPU allocator), Python, or the OS
    refusing memory (ENOMEM, as under cell_memory_limit_gb)."""
    for e in _chain(exc):
        if isinstance(e, (torch.OutOfMemoryError, MemoryError)):
            return True
        if isinstance(e, OSError) and e.errno == errno.ENOMEM:
            return True
        if isinstance(e, RuntimeError) and any(w in str(e).lower() for w in _OOM_WORDS):
            return True
    return False


# ---------------------------------------------------------------------------------------------
# Model faults: a failed load explained from what is on disk, not from the library's wording
# ---------------------------------------------------------------------------------------------

# Files AutoTokenizer can build a tokenizer from (fast, sentencepiece, BPE, WordPiece, Tekken).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "vocab.json",
    "vocab.txt",
    "tekken.json",
)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
SAFETENSORS_MAX_HEADER = 100_000_000  # the format's own bound; a larger claim is a corrupt file


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_json(path: Path) -> tuple[Any, str | None]:
    """(the file's JSON, None), or (None, what is wrong with it in words)."""
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except json.JSONDecodeError as exc:
        return None, f"{path.name} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"{path.name} cannot be read ({_short(exc)})"


def _safetensors_problem(path: Path) -> str | None:
    """Check a .safetensors file against its own header: 8 bytes of header length, the JSON header,
    then exactly the bytes the header's offsets cover. Reads the header only (no mmap, so a
    memory limit cannot make a sound file look broken)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{path.name} is truncated: {size} bytes, not even a header"
            n = int.from_bytes(head, "little")
            if n > min(size - 8, SAFETENSORS_MAX_HEADER):
                return (
                    f"{path.name} is truncated or corrupt: its header claims {n} bytes, the file has {size}"
                )
            header = json.loads(f.read(n))
        ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"]
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        return f"{path.name} is corrupt: its header cannot be read ({_short(exc)})"
    expected = 8 + n + max(ends, default=0)
    if size < expected:
        return f"{path.name} is truncated: {size} of the {expected} bytes its header describes"
    if size > expected:
        return f"{path.name} is corrupt: {size} bytes where its header describes {expected}"
    return None


def _weight_problems(directory: Path) -> list[str]:
    problems: list[str] = []
    for index in sorted(directory.glob("*.index.json")):
        index_data, bad = _read_json(index)
        if bad is not None:
            problems.append(bad)
            continue
        weight_map = index_data.get("weight_map") if isinstance(index_data, dict) else None
        for name in sorted({v for v in (weight_map or {}).values() if isinstance(v, str)}):
            if not (directory / name).is_file():
                problems.append(f"{name}, listed in {index.name}, is missing")
    for path in sorted(directory.glob("*.safetensors")):
        if (bad := _safetensors_problem(path)) is not None:
            problems.append(bad)
    if not any(p.suffix in WEIGHT_SUFFIXES for p in directory.iterdir()):
        problems.append("no weights (no *.safetensors nor pytorch_model.bin)")
    return problems


def model_dir_problems(directory: Path, tokenizer_failed: bool) -> list[str]:
    """What is wrong with a model directory, in words; empty when nothing visible is."""
    problems: list[str] = []
    config = directory / "config.json"
    if not config.is_file():
        problems.append("no config.json")
    elif (bad := _read_json(config)[1]) is not None:
        problems.append(bad)
    problems += _weight_problems(directory)
    # Only when the tokenizer is what failed: a model may keep its tokenizer in a form not listed.
    if tokenizer_failed and not any((directory / name).is_file() for name in TOKENIZER_FILES):
        problems.append(
            "no tokenizer (none of "
            + ", ".join(TOKENIZER_FILES)
            + "); tfbench tokenizes its prompt with the model's own tokenizer"
        )
    return problems


def _auto_map_words(directory: Path | None) -> str:
    if directory is None:
        return "its config names classes from its own code"
    try:
        auto_map = json.loads((directory / "config.json").read_text(encoding="utf-8"))["auto_map"]
        pairs = ", ".join(f"{k} to {v if isinstance(v, str) else v[0]}" for k, v in auto_map.items())
        return f"its config.json maps {pairs}"
    except Exception:  # noqa: BLE001 - only decorates the message
        return "its config names classes from its own code"


def _cached_snapshot(model: str, revision: str | None) -> Path | None:
    """The local snapshot of a hub model, if the cache holds one (never touches the network)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model, revision=revision, local_files_only=True))
    except Exception:  # noqa: BLE001 - no snapshot, whatever the reason
        return None


def describe_load_failure(
    exc: BaseException, model: str, revision: str | None, trust_remote_code: bool
) -> tuple[str, bool] | None:
    """(what is wrong, in words; whether another attempt could succeed) for a failed model load
    whose cause lies in the model, or None when the failure is something else."""
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError

    if is_synthetic(model):
        return None
    chain = _chain(exc)
    local = Path(model).expanduser()
    is_local = local.is_dir()
    directory = local if is_local else _cached_snapshot(model, revision)
    where = (
        f"model directory {local}"
        if is_local
        else f"model {model}" + (f" at revision {revision}" if revision else "")
    )
    if not trust_remote_code and any("trust_remote_code" in str(e) for e in chain):
        return (
            # The rule first: a reason is cut at 500 characters, the class names can go.
            f"{where} needs trust_remote_code: true, and tfbench runs no code shipped with a model "
            f"unless the config sets it ({_auto_map_words(directory)})",
            False,
        )
    if directory is not None:
        frames = traceback.extract_tb(exc.__traceback__)
        tokenizer_failed = any("tokenization" in Path(f.filename).name for f in frames)
        problems = model_dir_problems(directory, tokenizer_failed)
        if problems:
            if not is_local:
                where += f" (cached in {directory})"
            words = f"{where}: " + "; ".join(problems)
            said = [e for e in chain if type(e).__name__ == "SafetensorError"]
            if said:
                words += f" ({_short(said[0])})"
            return words, False
    if any(isinstance(e, LocalEntryNotFoundError) for e in chain) and not is_local:
        cached = "only partly in" if directory is not None else "not in"
        if constants.HF_HUB_OFFLINE:
            return (
                f"{where} is {cached} the local cache (HF_HOME={constants.HF_HOME}) "
                "and HF_HUB_OFFLINE=1 forbids a download",
                False,
            )
        return (
            f"{where} is {cached} the local cache (HF_HOME={constants.HF_HOME}) and the Hub could not "
            f"be reached ({_short(chain[-1])})",
            True,  # the network may come back
        )
    return None


def _synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _memory(device: str) -> dict[str, Any]:
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


def _expected_attn(cell: dict[str, Any]) -> str:
    attn = cell["attn_implementation"]
    # Continuous batching needs the paged variant of eager; that is the same kernel, not a rewrite.
    return "paged|eager" if cell["continuous_batching"] and attn == "eager" else attn


def _check_attn(net: Any, cell: dict[str, Any], when: str) -> str:
    actual = getattr(net.config, "_attn_implementation", None)
    if cell["model"] == "synthetic:sleep":
        return str(actual)
    if actual != _expected_attn(cell):
        raise CellError(
            f"attention implementation is {actual!r} {when}, not the {cell['attn_implementation']!r} asked for"
        )
    return str(actual)


def make_sampler(task: dict[str, Any], device: str) -> monitor.Sampler:
    """The GPU telemetry sampler of a cell: a no-op (recording why) unless the cell runs on a GPU."""
    if not task.get("gpu_monitoring", True) or device != "cuda":
        return monitor.Sampler("cpu")
    uuid = str(torch.cuda.get_device_properties(torch.cuda.current_device()).uuid)
    # A separate process: at 50 ms it disturbs the timed runs no more than a thread, and at
    # short intervals far less, since it never takes this process's GIL (benchmarks/sampler.py).
    return monitor.Sampler([uuid], interval_s=task.get("gpu_sample_interval_s", 0.05), mode="process")


def warm_then_measure(
    one_run: Any, task: dict[str, Any], device: str, phase: Any
) -> tuple[list[Any], float, dict[str, Any]]:
    """warmup_iterations untimed calls, then measurement_iterations timed ones with the GPU sampled
    beside them; peak memory covers the timed ones. Returns the runs, the warm-up time, the telemetry."""
    warm_start = time.perf_counter()
    for i in range(task["warmup_iterations"]):
        phase("warmup", i + 1, task["warmup_iterations"])
        one_run()
    warmup_time = time.perf_counter() - warm_start
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sampler = make_sampler(task, device).start()
    results = []
    try:
        for i in range(task["measurement_iterations"]):
            phase("measure", i + 1, task["measurement_iterations"])
            # The marks read the energy counters outside the timed call, after its synchronize.
            with sampler.around_run(i):
                results.append(one_run())
    finally:
        telemetry = sampler.stop()
    if not telemetry.get("available") and not task.get("gpu_monitoring", True):
        telemetry = {"available": False, "reason": "gpu_monitoring is off"}
    return results, warmup_time, telemetry


def add_energy(telemetry: dict[str, Any], runs: list[dict[str, Any]], tokens_per_run: int) -> None:
    """Joules per timed run and per generated token, into the runs and the telemetry's statistics."""
    if not telemetry.get("available"):
        return
    energy = monitor.energy_per_run(telemetry, len(runs))
    per_token = monitor.joules_per_token(energy, tokens_per_run)
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


def measure_generate(
    net: Any, tokenizer: Any, rows: list[list[int]], cell: dict[str, Any], task: dict[str, Any], phase: Any
) -> dict[str, Any]:
    device, b, s, n = cell["device"], len(rows), len(rows[0]), cell["num_tokens_to_generate"]
    input_ids = torch.tensor(rows, dtype=torch.long, device=device)
    attention_mask = torch.ones_like(input_ids)
    gen = exact_greedy_config(net, tokenizer, n)
    if cell["compile"]:
        gen.cache_implementation = "static"
        gen.compile_config = _compile_config(cell)
    clock = make_clock(device, n)
    processors = LogitsProcessorList([TokenClockProcessor(clock)])

    def one_run() -> tuple[float, list[float], float | None]:
        clock.start()
        out = net.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            generation_config=gen,
            logits_processor=processors,
        )
        e2e = clock.stop()
        produced = out.shape[1] - s
        if produced != n or out.shape[0] != b:
            raise CellError(f"generate returned {out.shape[0]}x{produced} new tokens, expected {b}x{n}")
        times = clock.token_times()
        if len(times) != n:
            raise CellError(f"the token clock saw {len(times)} tokens, expected {n}")
        return e2e, times, clock.device_e2e

    timed, warmup_time, telemetry = warm_then_measure(one_run, task, device, phase)
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
    stats = summarize_runs([{**r, "itl": _gaps(r["token_times"])} for r in runs])
    return {
        "runs": runs,
        "stats": stats,
        "gpu_telemetry": telemetry,
        "warmup_time_s": warmup_time,
        "inputs": {"shape": list(input_ids.shape), "new_tokens": n},
        "compiled_graphs": graphs,
    }


def measure_continuous_batching(
    net: Any, rows: list[list[int]], cell: dict[str, Any], task: dict[str, Any], phase: Any
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
    manager = net.init_continuous_batching(
        generation_config=gen, continuous_batching_config=ContinuousBatchingConfig(**cb_kwargs)
    )
    effective_attn = _check_attn(net, cell, "after continuous batching set-up")
    setup_start = time.perf_counter()
    if device == "cuda":
        manager.warmup()  # CUDA graph capture belongs to set-up, outside the timed window
    manager.start()
    setup_time = time.perf_counter() - setup_start

    def one_batch() -> dict[str, Any]:
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

    try:
        runs, warmup_time, telemetry = warm_then_measure(one_batch, task, device, phase)
    finally:
        manager.stop(block=True, timeout=30)
    graphs = _compiled_graphs()
    if cell["compile"] and graphs == 0:
        raise CellError("torch.compile was asked for but continuous batching compiled nothing")
    reqs = [r for run in runs for r in run["requests"]]
    stats = {
        "e2e_latency": summarize([r["e2e_latency"] for r in runs]),
        "ttft": summarize([r["ttft"] for r in reqs]),
        "tpot": summarize([r["tpot"] for r in reqs]),
        "itl": summarize([g for r in reqs for g in _gaps(r["token_times"])]),
        "e2e_throughput": summarize([r["e2e_throughput"] for r in runs]),
        # Prefill and decode of different requests interleave: no batch-level split exists.
        "decode_throughput": summarize([]),
        "prefill_throughput": summarize([]),
    }
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
    }


def _gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:])]


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return repr(value)


def worker_environment(device: str) -> dict[str, Any]:
    env: dict[str, Any] = {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "torch_threads": torch.get_num_threads(),
    }
    if device == "cuda":
        env["cuda_device_name"] = torch.cuda.get_device_name()
        env["cudnn"] = torch.backends.cudnn.version()
    return env


def inject_fault(cell: dict[str, Any], spec: str | None) -> None:
    """Fail on purpose, to exercise the runner's fault handling: TFBENCH_FAULT=<cell id prefix|*>:<kind>,...

    Kinds: raise (a Python error), oom (a real failed allocation), segv, kill (SIGKILL),
    exit (exit code 7 without a result), hang (sleeps, with a child process in its group).
    """
    if not spec:
        return
    for item in spec.split(","):
        target, _, kind = item.strip().partition(":")
        if not (target == "*" or cell["cell_id"].startswith(target)):
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


def measure(task: dict[str, Any], phase: Any) -> dict[str, Any]:
    cell = task["cell"]
    device = cell["device"]
    torch.manual_seed(task["seed"])
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
            task["trust_remote_code"],
            task["seed"],
        )
    except Exception as exc:
        fault = None
        if not is_oom(exc):
            # A diagnosis that fails itself must not hide the load error.
            with contextlib.suppress(Exception):
                fault = describe_load_failure(exc, cell["model"], cell["revision"], task["trust_remote_code"])
        if fault is None:
            raise
        raise ModelFault(*fault) from exc
    if cell["kernelize"]:
        from kernels import Mode, kernelize

        mode = Mode.INFERENCE | Mode.TORCH_COMPILE if cell["compile"] else Mode.INFERENCE
        net = kernelize(net, mode=mode, device=device)
    _synchronize(device)
    load_time = time.perf_counter() - t
    inject_fault(cell, os.environ.get("TFBENCH_FAULT"))
    memory_after_load = _memory(device)
    out: dict[str, Any] = {"load_time_s": load_time, "parameters": models.parameter_count(net)}
    rows = models.prompt_ids(tokenizer, cell["batch_size"], cell["sequence_length"])
    with torch.inference_mode():
        if cell["continuous_batching"]:
            out.update(measure_continuous_batching(net, rows, cell, task, phase))
        else:
            out["effective_attn_implementation"] = _check_attn(net, cell, "after loading")
            out.update(measure_generate(net, tokenizer, rows, cell, task, phase))
    out["memory"] = {**_memory(device), "after_load_bytes": memory_after_load["peak_bytes"]}
    if task.get("memory_limit_bytes") is not None:
        out["memory"]["limit_bytes"] = task["memory_limit_bytes"]
    out["worker_environment"] = worker_environment(device)
    # Joules per run and per generated token, for both measurement paths.
    add_energy(out["gpu_telemetry"], out["runs"], cell["batch_size"] * cell["num_tokens_to_generate"])
    nvml_peak = [
        ((dev.get("metrics") or {}).get("memory_used_bytes") or {}).get("max")
        for dev in (out["gpu_telemetry"].get("devices") or [])
    ]
    if nvml_peak and all(v is not None for v in nvml_peak):
        out["memory"]["nvml_used_peak_bytes"] = max(nvml_peak)  # the whole device, any process
    out["warmup_check"] = warmup_check(out["runs"])
    out["roofline"] = cell_roofline(net, cell, out["stats"])
    if out["roofline"].get("kv_cache_bytes") is not None:
        out["memory"]["kv_cache_bytes"] = out["roofline"]["kv_cache_bytes"]
    return out


def warmup_check(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Whether warm-up absorbed compilation and graph capture: the first timed run must not stand out."""
    e2e = [r["e2e_latency"] for r in runs if r.get("e2e_latency") is not None]
    if len(e2e) < 3:
        return {"first_over_median": None, "suspect": None, "reason": "fewer than 3 timed runs"}
    ratio = e2e[0] / statistics.median(e2e)
    # 25%: well above run-to-run noise on a quiet GPU, well below what a compile or a capture costs.
    return {"first_over_median": ratio, "suspect": ratio > 1.25}


def cell_roofline(net: Any, cell: dict[str, Any], stats: dict[str, Any]) -> dict[str, Any]:
    """Decode MBU and prefill MFU from the model's own arithmetic and the GPU's peaks (p50 ttft and tpot)."""
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
    )


# The innermost frames of a traceback: where it failed matters more than how generate got there.
TRACEBACK_FRAMES = 30


def failure(exc: BaseException, task: dict[str, Any]) -> tuple[str, dict[str, Any]]:
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
    oom = is_oom(exc)
    error: dict[str, Any] = {
        "kind": "oom" if oom else ("cell" if isinstance(exc, CellError) else "python"),
        "type": type(exc).__name__,
        "message": str(exc),
        "traceback": traceback.format_exc(limit=-TRACEBACK_FRAMES),
    }
    limit = task.get("memory_limit_bytes")
    # torch.OutOfMemoryError is a device allocator's; the limit only bounds host memory.
    if oom and limit is not None and not isinstance(exc, torch.OutOfMemoryError):
        said = _short(exc, 500)
        error["message"] = (
            f"out of host memory under cell_memory_limit_gb={task.get('cell_memory_limit_gb'):g} "
            f"({limit} bytes of private memory for the worker, RLIMIT_DATA)"
            + (f": {said}" if str(exc) else "")
        )
        error["exception_message"] = str(exc)
        error["memory_limit_bytes"] = limit
    return ("oom" if oom else "failed"), error


def run_cell(task: dict[str, Any], conn: Any, entered: float) -> None:
    """Measure the cell, write its result file, leave through os._exit (never returns)."""
    # Each cell compiles into its own cache: nothing carries over between cells.
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(task["scratch_dir"], "inductor")
    os.environ["TRITON_CACHE_DIR"] = os.path.join(task["scratch_dir"], "triton")

    def phase(name: str, i: int, total: int) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            conn.send(("phase", name, i, total))

    result: dict[str, Any] = {"worker_pid": os.getpid(), "entered_at": entered}
    try:
        result.update(measure(task, phase))
        result["status"] = "ok"
    except BaseException as exc:  # noqa: BLE001 - every failure must become a result
        result["status"], result["error"] = failure(exc, task)
        traceback.print_exc()
    result["finished_at"] = time.perf_counter()
    exit_code = 0
    try:
        atomic_write_json(task["result_path"], result)
        phase("done", 0, 0)
    except BaseException:
        traceback.print_exc()
        exit_code = 3
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)
