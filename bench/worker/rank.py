"""One rank of a tensor-parallel cell, started by torch.distributed's elastic launcher (tp_group.py).

Every rank joins the process group (NCCL on CUDA, gloo on the CPU), loads the model with
tp_plan="auto" (transformers shards it over the group that is already initialized), and runs the
same warm-up and timed calls in lockstep: every forward holds collectives. A barrier precedes each
call; rank 0's clock is the cell's, its output tokens are the cell's, and only rank 0 samples the
GPUs (all of the cell's). Every rank returns its pid, host, start-up and memory.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import hashlib
import json
import os
import shutil
import signal
import socket
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM, AutoTokenizer

from bench.config.presets import preset_for
from bench.results.records import Task
from bench.results.store import atomic_write_json
from bench.worker import models
from bench.worker.cell import inject_fault, measure_loaded

# The worker's phase relay, set before the launch; the ranks are forked and inherit it, and rank 0
# reports its phases through it (the others stay quiet: one progress line per cell).
PHASE: Any = None
_PR_SET_PDEATHSIG = 1


def die_with_worker() -> None:
    """SIGKILL this rank when the worker that launched it is gone. The ranks share the worker's
    process group, which a timeout kills as a whole; this also covers a worker killed alone."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the worker died before the line above took effect
        os._exit(1)


def backend_for(device: str) -> str:
    return "nccl" if device == "cuda" else "gloo"


def synthetic_checkpoint(task: Task, rank: int) -> str:
    """A synthetic preset saved by rank 0, for every rank to load with tp_plan: transformers shards
    a model only while loading a checkpoint (from_config takes no tp plan). One per model, dtype and
    seed, shared by the run's tensor-parallel cells beside their compile caches (a *.cache
    directory: the runner removes them at the run's end)."""
    cell = task.cell
    cache = Path(task.cache_dir or task.scratch_dir)
    device = cell["device"]
    key = json.dumps([cell["model"], cell["model_config"], cell["dtype"], device, task.seed], sort_keys=True)
    where = cache.parent / "tp-checkpoints.cache" / hashlib.sha256(key.encode()).hexdigest()[:16]
    if rank == 0 and not (where / "config.json").exists():
        # Built on the cell's device, as a tp_size 1 cell builds it: the same seed gives the same
        # weights, so that the outputs of both can agree.
        net, _ = models.load(
            cell["model"], None, cell["model_config"], cell["dtype"], device, "eager", False, task.seed
        )
        partial = where.with_name(where.name + f".partial-{os.getpid()}")
        net.save_pretrained(partial)
        del net
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()  # the whole model held a moment is not the rank's
        try:
            os.rename(partial, where)  # whole or absent
        except OSError:
            if not (where / "config.json").exists():
                raise
            shutil.rmtree(partial, ignore_errors=True)  # another cell's rank 0 saved it first
    dist.barrier()
    return str(where)


def tp_auto() -> dict[str, Any]:
    """from_pretrained's arguments for tp_plan "auto": a DistributedConfig where transformers has
    one (it deprecates the bare tp_plan argument), else the bare argument."""
    try:
        from transformers import DistributedConfig
    except ImportError:
        return {"tp_plan": "auto"}
    return {"distributed_config": DistributedConfig(tp_plan="auto")}


def load_sharded(task: Task, rank: int) -> tuple[Any, Any]:
    """The model sharded with tp_plan="auto" over the initialized group, and its tokenizer."""
    cell = task.cell
    preset = preset_for(cell["model"])
    if preset is not None:
        path, revision = synthetic_checkpoint(task, rank), None
        tokenizer = models.synthetic_tokenizer(int({**preset.config, **cell["model_config"]}["vocab_size"]))
    else:
        path, revision = cell["model"], cell["revision"]
        tokenizer = AutoTokenizer.from_pretrained(
            path, revision=revision, trust_remote_code=task.trust_remote_code
        )
    net = AutoModelForCausalLM.from_pretrained(
        path,
        revision=revision,
        dtype=models.TORCH_DTYPES[cell["dtype"]],
        attn_implementation=cell["attn_implementation"],
        trust_remote_code=task.trust_remote_code,
        **tp_auto(),
    )
    return net.eval(), tokenizer


def whole_model(net: Any) -> Any:
    """The model's architecture on the meta device: the roofline's arithmetic counts the whole
    model, not this rank's shards, and costs no memory."""
    config = copy.deepcopy(net.config)
    with contextlib.suppress(AttributeError):
        del config.distributed_config
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=net.dtype)


def rank_dir(task: Task) -> Path:
    """Where the ranks of a cell's process write their errors."""
    return Path(task.scratch_dir) / "ranks"


def rank_main(raw_task: dict[str, Any], t_launch: float) -> dict[str, Any]:
    """The rank entry: what this rank measured (rank 0: the cell's result) and its own facts."""
    die_with_worker()
    rank = int(os.environ["RANK"])
    task = Task.model_validate(raw_task)
    try:
        return _run_rank(task, rank, t_launch)
    except BaseException as exc:
        # Written as it raises, with the time: the first rank to fail is the group's cause, its
        # peers fail after it in their next collective (tp_group.group_failure reads these).
        error = {"rank": rank, "pid": os.getpid(), "type": type(exc).__name__, "message": str(exc)}
        with contextlib.suppress(OSError):
            rank_dir(task).mkdir(parents=True, exist_ok=True)
            atomic_write_json(rank_dir(task) / f"rank-{rank}.error.json", {**error, "at": time.time()})
        raise


def rank_cores(cores: list[int], local_rank: int, world: int) -> list[int]:
    """This rank's share of the worker's cores: equal, disjoint, in order (the worker's own are
    NUMA-local to its GPUs where the pool placed it). Fewer cores than ranks: every rank shares them."""
    share = len(cores) // world
    if share == 0:
        return list(cores)
    return cores[local_rank * share : (local_rank + 1) * share]


def place_rank(local_rank: int, world: int) -> list[int] | None:
    """Pin this rank to its share of the worker's cores, with as many torch threads. Forked ranks
    inherit the worker's affinity and thread count: unsplit, tp ranks would each run as many threads
    as the whole worker has cores and contend for them (torchrun sets OMP_NUM_THREADS=1 for the same
    reason; here each rank gets its cores' worth instead)."""
    try:
        cores = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None
    mine = rank_cores(cores, local_rank, world)
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, mine)
    torch.set_num_threads(max(1, len(mine)))
    return mine


def _run_rank(task: Task, rank: int, t_launch: float) -> dict[str, Any]:
    local_rank, world = int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    cores = place_rank(local_rank, world)
    cell = task.cell
    device = cell["device"]
    backend = backend_for(device)
    device_id = None
    if device == "cuda":
        device_id = torch.device("cuda", local_rank)
        torch.cuda.set_device(device_id)
    dist.init_process_group(backend, device_id=device_id)
    dist.barrier()
    ready = time.perf_counter() - t_launch
    phase = PHASE if rank == 0 and PHASE is not None else (lambda *a: None)
    torch.manual_seed(task.seed)
    phase("load", 0, 0)
    t = time.perf_counter()
    net, tokenizer = load_sharded(task, rank)
    if device == "cuda":
        torch.cuda.synchronize()
    load_time = time.perf_counter() - t
    inject_fault(cell, os.environ.get("TFBENCH_FAULT"), task.process, rank)
    # Only rank 0 samples the GPUs (all of the cell's); a profiled call would need every rank to
    # make it in lockstep, which the profiler path does not do.
    own = task.model_copy(update={"gpu_monitoring": task.gpu_monitoring and rank == 0, "profile": None})
    gpus = world if device == "cuda" else 1
    out = measure_loaded(
        net,
        tokenizer,
        own,
        phase,
        load_time,
        before_run=dist.barrier,
        gpus=gpus,
        arithmetic_of=whole_model(net),
    )
    dist.barrier()
    dist.destroy_process_group()
    info = {
        "rank": rank,
        "local_rank": local_rank,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "cpus": cores,
        "torch_threads": torch.get_num_threads(),
        "ready_s": ready,
        "load_time_s": load_time,
        "memory": out["memory"],
    }
    if rank != 0:
        return {"rank": info}
    if task.profile:
        out["profile"] = {"available": False, "reason": "not profiled under tensor parallelism"}
    return {"rank": info, "result": out}
