"""The typed records of the results contract: a run's run.json (RunMeta), a cell's record
(CellRecord) and the pieces they hold, plus the per-run settings (Settings).

These are the shapes past every boundary: the worker's result file, the cell files and
run.json on the results volume, and what is read back from a Hub dataset. A file is validated
once, where it is read (bench.results.store); everything after that works on these types. Keys
this version does not know are kept (extra="allow"), so that a record written by a newer
tfbench, or a field added later, passes through unchanged.

The metric table lives here too: one name, unit and direction per metric, for every reader.
"""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bench.plan.matrix import Cell

__all__ = ["ValidationError"]

# Every metric a cell reports, in the order tables and summary.jsonl use.
METRICS = (
    "e2e_latency",
    "ttft",
    "tpot",
    "itl",
    "e2e_throughput",
    "decode_throughput",
    "prefill_throughput",
)
# The metrics with one value per timed run (itl is every gap between tokens: a distribution).
RUN_METRICS = tuple(m for m in METRICS if m != "itl")
UNITS = {
    "e2e_latency": "s",
    "ttft": "s",
    "tpot": "s",
    "itl": "s",
    "e2e_throughput": "tok/s",
    "decode_throughput": "tok/s",
    "prefill_throughput": "tok/s",
}
HIGHER_IS_BETTER = frozenset({"e2e_throughput", "decode_throughput", "prefill_throughput"})
STAT_NAMES = ("n", "mean", "std", "min", "p50", "p90", "p95", "p99", "max")

# partial: some of the cell's worker processes are measured, the others still to run.
Status = Literal["ok", "skipped", "failed", "oom", "timeout", "interrupted", "lost", "running", "partial"]
FAILED_STATUSES = ("failed", "oom", "timeout", "lost")


class _Open(BaseModel):
    """A record part that keeps keys it does not declare."""

    model_config = ConfigDict(extra="allow")

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="python", exclude_unset=True, by_alias=True)


class Settings(BaseModel):
    """Per-run settings the worker needs besides the cell (one copy of the config's fields)."""

    model_config = ConfigDict(frozen=True)

    warmup_iterations: int
    measurement_iterations: int
    seed: int
    trust_remote_code: bool = False
    gpu_monitoring: bool = True
    cell_timeout_s: float = 1800.0
    max_attempts: int = 1
    gpu_sample_interval_s: float = 0.05
    cell_memory_limit_gb: float | None = None
    processes: int = 1
    process_order: str = "round-robin"
    profile: int | None = None
    concurrent_cells: int | str = "auto"  # how many cells run at once (bench.run.pool); not in identity

    @classmethod
    def from_config(cls, config: Any) -> Settings:
        """The settings of a validated BenchConfig (any object with the same field names)."""
        values = {name: getattr(config, name) for name in cls.model_fields if name != "processes"}
        return cls(**values, processes=config.worker_processes)

    def measured(self) -> dict[str, Any]:
        """What changes the numbers of a cell without changing its id (part of a run's identity)."""
        return {
            "warmup_iterations": self.warmup_iterations,
            "measurement_iterations": self.measurement_iterations,
            "seed": self.seed,
            "processes": self.processes,
        }

    def runs_of(self, process: int) -> int:
        """Timed runs of process k: measurement_iterations shared out as evenly as it goes."""
        base, extra = divmod(self.measurement_iterations, self.processes)
        return base + (1 if process < extra else 0)

    def recorded(self) -> dict[str, Any]:
        """What every cell record carries of the settings."""
        keep = ("gpu_monitoring", "cell_timeout_s", "cell_memory_limit_gb", "process_order")
        return {**self.measured(), **{k: getattr(self, k) for k in keep}}


class Task(BaseModel):
    """What the runner hands one worker process: its cell, what to measure it with, and where to
    write. Built by the runner, validated again where it enters the worker."""

    model_config = ConfigDict(extra="forbid")

    cell: dict[str, Any]  # the plan's Cell (bench.plan.matrix.Cell.to_dict)
    process: int = 0  # which of the cell's processes this is
    processes: int = 1
    warmup_iterations: int
    measurement_iterations: int  # this process's share of the cell's timed runs
    seed: int = 0
    trust_remote_code: bool = False
    gpu_monitoring: bool = True
    gpu_sample_interval_s: float = 0.05
    cell_memory_limit_gb: float | None = None
    log_path: str
    scratch_dir: str
    cache_dir: str | None = None  # shared by the processes of one cell (compile caches)
    result_path: str
    memory_limit_bytes: int | None = None  # set by the worker when it applies the limit
    profile: int | None = None  # new tokens of the one profiled generate call after the timed runs
    trace_path: str | None = None  # where that call's trace goes (gzipped Chrome JSON)
    trace_name: str | None = None  # the same, relative to the run's directory (what the record says)
    # Where the worker runs (bench.run.pool): set in the worker before anything touches CUDA.
    cuda_visible_devices: str | None = None  # GPU UUIDs, comma-separated; None: as inherited
    cpus: list[int] | None = None  # host cores (CPU affinity, torch's threads); None: as inherited


# ----------------------------------------------------------------------------------- cell record


class Stats(_Open):
    """Summary statistics of one metric (n = 0 and the rest None when nothing was measured)."""

    n: int = 0
    mean: float | None = None
    std: float | None = None
    min: float | None = None
    p50: float | None = None
    p90: float | None = None
    p95: float | None = None
    p99: float | None = None
    max: float | None = None


class RequestTiming(_Open):
    """One request of a continuous-batching run."""

    e2e_latency: float | None = None
    ttft: float | None = None
    tpot: float | None = None
    token_times: list[float] = Field(default_factory=list)


class TimedRun(_Open):
    """One timed generate call (or one batch of continuous-batching requests)."""

    e2e_latency: float | None = None
    ttft: float | None = None
    tpot: float | None = None
    e2e_throughput: float | None = None
    decode_throughput: float | None = None
    prefill_throughput: float | None = None
    token_times: list[float] | None = None
    e2e_latency_device: float | None = None
    energy_j: float | None = None
    energy_per_token_j: float | None = None
    requests: list[RequestTiming] | None = None
    process: int | None = None  # which of the cell's worker processes ran it (None: the only one)
    pid: int | None = None

    def value(self, metric: str) -> float | None:
        """The run's value of a metric; a per-request metric as the median over its requests
        (the requests of one run share its batch and are not independent of each other)."""
        own = getattr(self, metric, None)
        if own is not None or not self.requests:
            return _positive(own)
        per_request = [v for r in self.requests if (v := _positive(getattr(r, metric, None))) is not None]
        return statistics.median(per_request) if per_request else None

    def values(self, metric: str) -> list[float]:
        """Every value of a metric in this run: its requests' where it has no run-level value."""
        own = _positive(getattr(self, metric, None))
        if own is not None or not self.requests:
            return [] if own is None else [own]
        return [v for r in self.requests if (v := _positive(getattr(r, metric, None))) is not None]


class Memory(_Open):
    peak_bytes: int | None = None  # a tensor-parallel cell: its largest rank's
    nvml_used_peak_bytes: int | None = None
    kv_cache_bytes: int | None = None
    per_rank_peak_bytes: list[int | None] | None = None  # a tensor-parallel cell: by rank


class RankInfo(_Open):
    """One rank of a tensor-parallel cell: where it ran, when it was ready, what it held."""

    rank: int
    local_rank: int | None = None
    pid: int | None = None
    host: str | None = None
    cpus: list[int] | None = None  # its share of the worker's cores, pinned
    torch_threads: int | None = None
    ready_s: float | None = None  # from the launch to this rank through its first barrier
    load_time_s: float | None = None
    memory: dict[str, Any] | None = None


class TensorParallel(_Open):
    """How a tensor-parallel cell ran: its group, how long the group took to start, its ranks."""

    tp_size: int
    world_size: int | None = None
    backend: str | None = None  # "nccl" on cuda, "gloo" on the CPU
    launcher: str | None = None
    group_startup_s: float | None = None  # from the launch to every rank ready
    group_s: float | None = None  # from the launch to the group's end
    ranks: list[RankInfo] = Field(default_factory=list)


class MetricSummary(_Open):
    n: int | None = None
    min: float | None = None
    mean: float | None = None
    max: float | None = None
    p50: float | None = None


class TelemetryDevice(_Open):
    metrics: dict[str, MetricSummary | None] = Field(default_factory=dict)


class Telemetry(_Open):
    """GPU telemetry of a cell; {"available": false, "reason": ...} where none was measured."""

    available: bool = False
    reason: str | None = None
    devices: list[TelemetryDevice] = Field(default_factory=list)
    energy_per_run_j: Stats | None = None
    energy_per_token_j: Stats | None = None

    def mean(self, metric: str) -> float | None:
        """The first device's mean of a sampled metric (gpu_util_pct, power_w, ...)."""
        if not self.devices:
            return None
        summary = self.devices[0].metrics.get(metric)
        return summary.mean if summary is not None else None


class Roofline(_Open):
    available: bool | None = None
    kv_cache_bytes: int | None = None
    decode_mbu: float | None = None
    prefill_mfu: float | None = None


class Output(_Open):
    """What the cell generated: the first sequence of its last timed run (continuous batching: the
    first request), its first ids (bench.results.outputs.OUTPUT_TOKENS_KEPT), their count, a
    sha256 of all of them, their decoded text, and why it looks degenerate (None: it does not)."""

    tokens: list[int] = Field(default_factory=list)
    n: int = 0
    sha256: str = ""
    text: str | None = None
    degenerate: str | None = None


class ProfiledOp(_Open):
    name: str
    calls: int = 0
    self_time_us: float = 0.0
    share: float | None = None
    family: str | None = None


class Profile(_Open):
    """The one profiled generate call after a cell's timed runs; available False with the reason
    where none was taken. trace: the gzipped Chrome trace, relative to the run's directory."""

    available: bool = False
    reason: str | None = None
    new_tokens: int | None = None
    time: str | None = None  # "device" (CUDA self time) or "cpu"
    trace: str | None = None
    trace_bytes: int | None = None
    top_ops: list[ProfiledOp] = Field(default_factory=list)
    total_self_time_us: float | None = None
    shares: dict[str, float | None] = Field(default_factory=dict)


class ErrorInfo(_Open):
    kind: str | None = None
    type: str | None = None
    message: str | None = None
    retryable: bool | None = None
    log_tail: str | None = None


class Attempt(_Open):
    """The short form of an earlier attempt, kept in the next attempt's record."""

    attempt: int | None = None
    status: str | None = None
    reason: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    duration_s: float | None = None
    worker_pid: int | None = None


class ProcessInfo(_Open):
    """One of the worker processes that measured a cell: its own load, warm-up and timed runs."""

    index: int
    pid: int | None = None
    attempt: int | None = None
    runs: int = 0
    load_time_s: float | None = None
    warmup_time_s: float | None = None
    started_at: str | None = None
    finished_at: str | None = None
    duration_s: float | None = None
    compile_cache: str | None = None  # "fresh", or "reused" from an earlier process of this cell
    isolation: dict[str, Any] | None = None
    group_startup_s: float | None = None  # a tensor-parallel cell: its group's start-up in this process
    # Where it ran (bench.run.pool); absent in records written before the GPU pool.
    gpus: list[str] | None = None  # UUIDs of the GPUs it saw
    gpu_names: list[str] | None = None
    cpus: list[int] | None = None  # the host cores it was pinned to; None: not pinned
    numa_node: int | None = None


class CellRecord(_Open):
    """One cell of a run: what it is (the plan's Cell), how it ended, and what it measured."""

    schema_version: int | None = None
    run_id: str | None = None
    shard: str | None = None
    cell_id: str
    status: Status
    reason: str | None = None
    error: ErrorInfo | None = None
    cell: Cell  # the plan's cell, as it was measured
    settings: dict[str, Any] | None = None
    attempt: int | None = None
    attempts: list[Attempt] = Field(default_factory=list)
    started_at: str | None = None
    finished_at: str | None = None
    duration_s: float | None = None
    worker_pid: int | None = None
    log: str | None = None
    runs: list[TimedRun] = Field(default_factory=list)
    stats: dict[str, Stats] = Field(default_factory=dict)
    memory: Memory | None = None
    gpu_telemetry: Telemetry | None = None
    roofline: Roofline | None = None
    load_time_s: float | None = None
    warmup_time_s: float | None = None
    processes: list[ProcessInfo] = Field(default_factory=list)
    output: Output | None = None
    profile: Profile | None = None
    tensor_parallel: TensorParallel | None = None

    @field_validator("runs", "attempts", "processes", mode="before")
    @classmethod
    def _no_list(cls, value: Any) -> Any:
        return [] if value is None else value  # a record of a cell that measured nothing

    @field_validator("stats", mode="before")
    @classmethod
    def _no_stats(cls, value: Any) -> Any:
        return {} if value is None else value

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def name(self) -> str:
        return self.cell.name

    @property
    def index(self) -> int:
        return self.cell.index

    def stat(self, metric: str, stat: str) -> float | None:
        s = self.stats.get(metric)
        value = getattr(s, stat, None) if s is not None else None
        return None if value is None else float(value)

    def samples(self, metric: str) -> list[float]:
        """One positive value per timed run (continuous batching: the median over its requests)."""
        return [v for run in self.runs if (v := run.value(metric)) is not None]

    def process_samples(self, metric: str) -> dict[int, list[float]]:
        """Each worker process's values, one per timed run, by process index in order (runs
        without a process tag: one process)."""
        groups: dict[int, list[float]] = {}
        for run in self.runs:
            value = run.value(metric)
            if value is not None:
                groups.setdefault(run.process or 0, []).append(value)
        return dict(sorted(groups.items()))

    def process_medians(self, metric: str) -> list[float]:
        """The median of each worker process's runs (runs without a process tag: one process)."""
        return [statistics.median(values) for values in self.process_samples(metric).values()]

    @property
    def process_count(self) -> int:
        if self.processes:
            return len(self.processes)
        return len({run.process or 0 for run in self.runs})  # records of earlier versions

    def pooled(self, metric: str) -> list[float]:
        """Every value of a metric: one per run, or one per request where runs hold requests."""
        return [v for run in self.runs for v in run.values(metric)]

    @property
    def peak_memory_bytes(self) -> int | None:
        return self.memory.peak_bytes if self.memory is not None else None

    def with_updates(self, **changes: Any) -> CellRecord:
        """A copy with some fields replaced (validated like a record read from a file)."""
        return CellRecord.model_validate({**self.to_dict(), **changes})


def _positive(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value and value > 0:
        return float(value) if value != float("inf") else None
    return None


def status_counts(records: Any, planned: int | None = None) -> dict[str, int]:
    """How many records have each status; with `planned`, also how many planned cells have none."""
    counts: dict[str, int] = dict(Counter(r.status for r in records))
    if planned is not None:
        counts["not_run"] = planned - sum(counts.values())
    return counts


# ---------------------------------------------------------------------------------------- run.json


class GpuInfo(_Open):
    index: int | None = None
    name: str = "GPU"
    memory_total_bytes: int | None = None
    uuid: str | None = None


class Environment(_Open):
    python: str | None = None
    platform: str | None = None
    hostname: str | None = None
    cpu: str | None = None
    cpu_count: int | None = None
    packages: dict[str, str | None] = Field(default_factory=dict)
    cuda_available: bool | None = None
    driver_version: str | None = None
    cuda_driver_version: str | None = None
    gpus: list[GpuInfo] = Field(default_factory=list)


def hardware_label(env: Environment | None, device: str | None = None) -> str:
    """What the numbers of a run belong to: '8x NVIDIA H100 80GB HBM3', or 'cpu: <model>' for a
    run on the CPU (also on a machine that has GPUs). The one label of the hardware: run
    identity, Hub rows, history's grouping, reports and compare's warnings all use it."""
    env = env or Environment()
    if device != "cpu" and env.gpus:
        counts = Counter(g.name for g in env.gpus)
        return ", ".join(f"{n}x {name}" for name, n in counts.items())
    return f"cpu: {env.cpu or 'unknown'}"


class MeasuredCommit(_Open):
    sha: str | None = None
    source: str | None = None
    branch: str | None = None


class ShardInfo(_Open):
    index: int
    count: int
    name: str
    cell_ids: list[str] = Field(default_factory=list)


class RunMeta(_Open):
    """run.json: which run, its config and plan, where and on what it ran, how it ended."""

    run_id: str
    run_name: str | None = None
    schema_version: int | None = None
    tfbench_version: str | None = None
    status: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    plan: dict[str, Any] | None = None
    identity: dict[str, Any] | None = None
    environment: Environment | None = None
    measured_commit: MeasuredCommit | None = None
    shard: ShardInfo | None = None
    invocations: list[dict[str, Any]] = Field(default_factory=list)
    counts: dict[str, int] | None = None
    pushed: dict[str, Any] | None = None
    concurrency: dict[str, Any] | None = None  # the GPU pool this invocation used (bench.run.pool)

    @property
    def device(self) -> str | None:
        caps = (self.plan or {}).get("capabilities")
        device = caps.get("device") if isinstance(caps, dict) else None
        return device if isinstance(device, str) else None

    @property
    def hardware(self) -> str:
        return hardware_label(self.environment, self.device)

    @property
    def commit_sha(self) -> str | None:
        return self.measured_commit.sha if self.measured_commit is not None else None

    def packages(self) -> dict[str, str | None]:
        return dict(self.environment.packages) if self.environment is not None else {}

    def planned_cells(self) -> list[dict[str, Any]]:
        cells = (self.plan or {}).get("cells")
        return [c for c in cells if isinstance(c, dict)] if isinstance(cells, list) else []


def describe_error(exc: ValidationError, what: str) -> str:
    """A pydantic error as one line naming the field: 'runs.0.ttft: Input should be a valid number'."""
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(p) for p in err.get("loc", ())) or "(top level)"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    more = f" (and {exc.error_count() - 3} more)" if exc.error_count() > 3 else ""
    return f"{what}: " + "; ".join(parts) + more
