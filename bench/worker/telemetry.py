"""GPU telemetry beside the timed runs of a cell: utilization, memory, power, energy, clocks, throttling.

A `Sampler` reads NVML (nvidia-ml-py, imported as `pynvml`; it never creates a CUDA context)
every `interval_s` for each GPU the cell uses, in a thread of the worker (mode="thread", the
default) or in a separate sampler process (mode="process"). `mark(label)` reads the energy
counter of every device at that moment; the worker marks the start and end of each timed run
and gets joules per run from `energy_per_run`, joules per token by dividing by its tokens:

    sampler = Sampler([0]).start()          # or sampler_for_device(cell["device"]).start()
    for i in range(n_runs):
        with sampler.around_run(i):          # marks run_{i}_start / run_{i}_end
            one_run()
    telemetry = sampler.stop()               # a JSON-ready dict, see Sampler.stop
    joules = energy_per_run(telemetry, n_runs)  # [J per run or None]

Nothing here raises for a missing or unusable GPU: without pynvml, without a driver, for a device
that is not there, or for a cell on the CPU, the sampler is a no-op and `stop()` returns
{"available": False, "reason": ...}. A metric the GPU or driver does not support is tried once,
recorded as null with its reason, and never read again; other NVML errors null that one value.

Device numbering: integers are CUDA ordinals, mapped to NVML's physical indices through
CUDA_VISIBLE_DEVICES (which may hold indices, UUIDs or unique UUID prefixes). CUDA numbers GPUs
fastest first unless CUDA_DEVICE_ORDER=PCI_BUS_ID, NVML by PCI bus: on hosts with different GPU
models the two can disagree, which the summary notes in "warnings"; a UUID string
(torch.cuda.get_device_properties(i).uuid) is exact in every case.

Timestamps are time.perf_counter() (CLOCK_MONOTONIC on Linux), comparable between the worker and
the sampler process.

Thread or process (benchmarks/sampler.py): the thread shares the worker's GIL, so its cost lands in
the timed runs and grows with GPUs x metrics x rate, and while the worker's host loop is busy in
Python each NVML call waits for the GIL (sweeps stretch, sample times blur). The process costs a
~0.1-0.2 s start (outside the timed runs) and a few % of another core at 5 ms. Measured on a
2-vCPU VM against a host-bound generate with a stand-in NVML of 30 us per call: at 50 ms both
within ~1-1.7% (the method's noise there is ~1%); at 5 ms thread +9%, process +1-1.3%.

Energy: the counter (Volta and later) is the reference; where it is missing, power samples are
integrated. On recent GPUs nvmlDeviceGetPowerUsage may be an average over up to a second, so that
integral smooths short runs; "energy_counter_update_s" shows how often the counter moved.
"""

from __future__ import annotations

import bisect
import contextlib
import importlib
import json
import math
import os
import select
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

DEFAULT_INTERVAL_S = 0.05
NAN = float("nan")

# Bits of nvmlDeviceGetCurrentClocksEventReasons (formerly ...ThrottleReasons), in bit order.
CLOCK_EVENT_REASONS: tuple[tuple[int, str], ...] = (
    (0x001, "gpu_idle"),
    (0x002, "applications_clocks_setting"),
    (0x004, "sw_power_cap"),
    (0x008, "hw_slowdown"),
    (0x010, "sync_boost"),
    (0x020, "sw_thermal_slowdown"),
    (0x040, "hw_thermal_slowdown"),
    (0x080, "hw_power_brake_slowdown"),
    (0x100, "display_clock_setting"),
)
_KNOWN_REASON_BITS = 0x1FF

# NVML error codes after which a metric is never read again on that device.
_PERMANENT_CODES = {3, 4, 13}  # NOT_SUPPORTED, NO_PERMISSION, FUNCTION_NOT_FOUND
_PERMANENT_NAMES = {"NVMLError_NotSupported", "NVMLError_NoPermission", "NVMLError_FunctionNotFound"}
_MAX_CONSECUTIVE_ERRORS = 20  # a metric failing this many samples in a row is given up

# Summary statistics of these columns (the energy counter and the reason bitmask are treated apart).
STAT_METRICS = (
    "gpu_util_pct",
    "mem_util_pct",
    "memory_used_bytes",
    "power_w",
    "sm_clock_mhz",
    "mem_clock_mhz",
    "temperature_c",
)
COLUMNS = (
    "gpu_util_pct",
    "mem_util_pct",
    "memory_used_bytes",
    "power_mw",
    "energy_mj",
    "sm_clock_mhz",
    "mem_clock_mhz",
    "temperature_c",
    "clock_event_reasons",
)
# probe name -> the columns it fills (utilization fills two from one call)
PROBE_COLUMNS = {
    "utilization": ("gpu_util_pct", "mem_util_pct"),
    "memory": ("memory_used_bytes",),
    "power": ("power_mw",),
    "energy": ("energy_mj",),
    "sm_clock": ("sm_clock_mhz",),
    "mem_clock": ("mem_clock_mhz",),
    "temperature": ("temperature_c",),
    "clock_event_reasons": ("clock_event_reasons",),
}
_METRIC_PROBE = {col: probe for probe, cols in PROBE_COLUMNS.items() for col in cols}
_METRIC_PROBE["power_w"] = "power"


def decode_clock_reasons(mask: int) -> list[str]:
    """Names of the bits set in a clock event (throttle) reason bitmask; unknown bits as 'unknown_0x..'."""
    mask = int(mask)
    names = [name for bit, name in CLOCK_EVENT_REASONS if mask & bit]
    rest = mask & ~_KNOWN_REASON_BITS
    bit = 1 << 9
    while rest and bit <= rest:
        if rest & bit:
            names.append(f"unknown_{bit:#x}")
            rest &= ~bit
        bit <<= 1
    return names


class Unavailable(Exception):
    """Why the sampler cannot sample (turned into {"available": False, "reason": ...})."""


# --------------------------------------------------------------------------------------------
# NVML access


def load_nvml(spec: Any = None) -> Any:
    """The NVML module: None -> pynvml; a module-like object as is; "pkg.mod" or "pkg.mod:attr"
    (attr: a module-like object, or a callable returning one). Raises Unavailable."""
    if spec is None:
        spec = "pynvml"
    if not isinstance(spec, str):
        return spec
    mod_name, _, attr = spec.partition(":")
    try:
        obj = importlib.import_module(mod_name)
    except Exception as exc:  # ImportError, or anything the module raises while importing
        raise Unavailable(f"{mod_name} could not be imported ({type(exc).__name__}: {exc})") from None
    if attr:
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            raise Unavailable(f"{mod_name} has no attribute {attr!r}") from None
        if callable(obj) and not hasattr(obj, "nvmlInit"):
            obj = obj()
    return obj


def _spec_of(nvml: Any) -> str | None:
    """A string the sampler process can load `nvml` from, or None when it cannot cross a process."""
    if nvml is None or isinstance(nvml, str):
        return "pynvml" if nvml is None else nvml
    name = getattr(nvml, "__name__", None)
    if isinstance(name, str) and sys.modules.get(name) is nvml:
        return name
    return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _error_text(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _is_permanent(exc: BaseException) -> bool:
    if isinstance(exc, (AttributeError, TypeError, NotImplementedError)):
        return True  # the binding lacks the function, or it takes other arguments
    return type(exc).__name__ in _PERMANENT_NAMES or getattr(exc, "value", None) in _PERMANENT_CODES


def _readers(nv: Any, handle: Any, probe: str) -> list[Callable[[], Any]]:
    """Ways to read one probe, best first; a missing function becomes a reader that raises AttributeError."""

    def fn(name: str) -> Callable[..., Any]:
        f = getattr(nv, name, None)
        if f is None:

            def missing(*_: Any) -> Any:
                raise AttributeError(f"{name} is not in this NVML binding")

            return missing
        return f

    def const(name: str, default: int) -> int:
        return int(getattr(nv, name, default))

    if probe == "utilization":
        f = fn("nvmlDeviceGetUtilizationRates")

        def utilization() -> tuple[float, float]:
            r = f(handle)
            return r.gpu, r.memory

        return [utilization]
    if probe == "memory":
        f = fn("nvmlDeviceGetMemoryInfo")
        return [lambda: f(handle).used]
    if probe == "power":
        f = fn("nvmlDeviceGetPowerUsage")
        return [lambda: f(handle)]
    if probe == "energy":
        f = fn("nvmlDeviceGetTotalEnergyConsumption")
        return [lambda: f(handle)]
    if probe in ("sm_clock", "mem_clock"):
        f = fn("nvmlDeviceGetClockInfo")
        kind = const("NVML_CLOCK_SM", 1) if probe == "sm_clock" else const("NVML_CLOCK_MEM", 2)
        return [lambda: f(handle, kind)]
    if probe == "temperature":
        sensor = const("NVML_TEMPERATURE_GPU", 0)
        f1, f2 = fn("nvmlDeviceGetTemperature"), fn("nvmlDeviceGetTemperatureV")
        return [lambda: f1(handle, sensor), lambda: f2(handle, sensor)]
    if probe == "clock_event_reasons":
        f1 = fn("nvmlDeviceGetCurrentClocksEventReasons")
        f2 = fn("nvmlDeviceGetCurrentClocksThrottleReasons")
        return [lambda: f1(handle), lambda: f2(handle)]
    raise ValueError(probe)


class _Probe:
    __slots__ = ("name", "device", "read", "alternatives", "cols", "pair", "errors", "consecutive")

    def __init__(self, name: str, device: int, readers: list[Callable[[], Any]], cols: list[list[float]]):
        self.name = name
        self.device = device
        self.read = readers[0]
        self.alternatives = readers[1:]
        self.cols = cols
        self.pair = len(cols) == 2
        self.errors = 0
        self.consecutive = 0


class _Core:
    """Device handles and preallocated sample columns; `sample()` is the whole per-sample cost."""

    def __init__(self, nv: Any, indices: Sequence[int], capacity: int):
        self.nv = nv
        self.indices = list(indices)
        self.handles = [nv.nvmlDeviceGetHandleByIndex(i) for i in self.indices]
        self.capacity = max(16, int(capacity))
        self.n = 0
        self.t: list[float] = [NAN] * self.capacity
        self.columns: list[dict[str, list[float]]] = [
            {c: [NAN] * self.capacity for c in COLUMNS} for _ in self.indices
        ]
        self.unsupported: list[dict[str, str]] = [{} for _ in self.indices]
        self.probes: list[_Probe] = []
        for d, h in enumerate(self.handles):
            for name, cols in PROBE_COLUMNS.items():
                self.probes.append(_Probe(name, d, _readers(nv, h, name), [self.columns[d][c] for c in cols]))
        self.active = list(self.probes)
        self.energy_dead = [False] * len(self.indices)  # for read_energy (marks), apart from the probes
        self.sweep_s_total = 0.0
        self.sweep_s_max = 0.0

    def sample(self) -> None:
        i = self.n
        if i == self.capacity:
            self._grow()
        t0 = time.perf_counter()
        self.t[i] = t0
        dropped = False
        for p in self.active:
            try:
                if p.pair:
                    p.cols[0][i], p.cols[1][i] = p.read()
                else:
                    p.cols[0][i] = p.read()
                p.consecutive = 0
            except Exception as exc:
                dropped |= self._failed(p, exc, i)
        if dropped:
            self.active = [p for p in self.active if p.read is not None]
        self.n = i + 1
        dt = time.perf_counter() - t0
        self.sweep_s_total += dt
        if dt > self.sweep_s_max:
            self.sweep_s_max = dt

    def _failed(self, p: _Probe, exc: BaseException, i: int) -> bool:
        """Record a failed read; True when the probe is dropped for good."""
        if _is_permanent(exc):
            while p.alternatives:  # e.g. ClocksEventReasons -> ClocksThrottleReasons
                p.read = p.alternatives.pop(0)
                try:
                    if p.pair:
                        p.cols[0][i], p.cols[1][i] = p.read()
                    else:
                        p.cols[0][i] = p.read()
                except Exception as exc2:
                    if _is_permanent(exc2):
                        exc = exc2
                        continue
                    break  # a transient error of the alternative: keep it, this value stays null
                return False
            else:
                self.unsupported[p.device][p.name] = _error_text(exc)
                p.read = None  # type: ignore[assignment]
                return True
        p.errors += 1
        p.consecutive += 1
        if p.consecutive >= _MAX_CONSECUTIVE_ERRORS:
            self.unsupported[p.device][p.name] = f"failed {p.consecutive} times in a row: {_error_text(exc)}"
            p.read = None  # type: ignore[assignment]
            return True
        return False

    def _grow(self) -> None:
        extra = [NAN] * self.capacity
        self.t.extend(extra)
        for cols in self.columns:
            for col in cols.values():
                col.extend(extra)
        self.capacity *= 2

    def read_energy(self) -> list[float | None]:
        """Each device's energy counter (mJ) now; None where it failed (never retried if unsupported)."""
        out: list[float | None] = []
        f = getattr(self.nv, "nvmlDeviceGetTotalEnergyConsumption", None)
        for d, h in enumerate(self.handles):
            if f is None or self.energy_dead[d]:
                out.append(None)
                continue
            try:
                out.append(float(f(h)))
            except Exception as exc:
                self.energy_dead[d] = _is_permanent(exc)
                out.append(None)
        return out

    def export(self) -> dict[str, Any]:
        n = self.n
        return {
            "n": n,
            "t": self.t[:n],
            "columns": [{c: col[:n] for c, col in cols.items()} for cols in self.columns],
            "unsupported": self.unsupported,
            "errors": [
                {p.name: p.errors for p in self.probes if p.device == d and p.errors}
                for d in range(len(self.indices))
            ],
            "sweep_s_total": self.sweep_s_total,
            "sweep_s_max": self.sweep_s_max,
        }


# --------------------------------------------------------------------------------------------
# Device resolution: CUDA ordinals and UUIDs -> NVML indices


def _norm_uuid(u: str) -> str:
    u = u.strip().lower()
    return u[4:] if u.startswith("gpu-") else u


class _Devices:
    def __init__(self, nv: Any):
        self.nv = nv
        self.count = int(nv.nvmlDeviceGetCount())
        self._uuids: list[str] | None = None

    def uuids(self) -> list[str]:
        if self._uuids is None:
            self._uuids = [
                _text(self.nv.nvmlDeviceGetUUID(self.nv.nvmlDeviceGetHandleByIndex(i)))
                for i in range(self.count)
            ]
        return self._uuids

    def by_uuid(self, text: str) -> int | None:
        """NVML index of a GPU (or a MIG instance's parent GPU) by UUID or unique UUID prefix."""
        want = _norm_uuid(text)
        if want.startswith("mig-"):
            return self._mig_parent(text.strip())
        if not want:
            return None
        hits = [i for i, u in enumerate(self.uuids()) if _norm_uuid(u).startswith(want)]
        return hits[0] if len(hits) == 1 else None

    def _mig_parent(self, text: str) -> int | None:
        nv = self.nv
        try:
            mig = nv.nvmlDeviceGetHandleByUUID(text)
            parent = nv.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(mig)
            return int(nv.nvmlDeviceGetIndex(parent))
        except Exception:
            return None


def visible_nvml_indices(devs: _Devices, environ: Mapping[str, str]) -> list[int]:
    """NVML indices in CUDA's order as CUDA_VISIBLE_DEVICES leaves them (CUDA stops at the first invalid entry)."""
    raw = environ.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return list(range(devs.count))
    out: list[int] = []
    for part in raw.split(","):
        part = part.strip()
        if part.lstrip("-").isdigit():
            idx = int(part)
            if idx < 0 or idx >= devs.count:
                break
        else:
            found = devs.by_uuid(part) if part else None
            if found is None:
                break
            idx = found
        if idx in out:
            break
        out.append(idx)
    return out


def resolve_devices(
    nv: Any, devices: Sequence[int | str], environ: Mapping[str, str]
) -> tuple[list[tuple[int, int | str]], list[str]]:
    """[(nvml_index, what was asked)], warnings. Ints are CUDA ordinals, strings UUIDs or 'cuda:N'."""
    devs = _Devices(nv)
    visible: list[int] | None = None
    out: list[tuple[int, int | str]] = []
    warnings: list[str] = []
    for d in devices:
        asked: int | str = d
        if isinstance(d, str) and d.strip().lower().startswith("cuda"):
            _, _, num = d.partition(":")
            d = int(num) if num.strip() else 0
        if isinstance(d, int):
            if visible is None:
                visible = visible_nvml_indices(devs, environ)
            if not 0 <= d < len(visible):
                cvd = environ.get("CUDA_VISIBLE_DEVICES")
                where = f"CUDA_VISIBLE_DEVICES={cvd!r} leaves" if cvd is not None else "NVML sees"
                raise Unavailable(f"CUDA device {asked} not found: {where} {len(visible)} GPU(s)")
            out.append((visible[d], asked))
        else:
            idx = devs.by_uuid(str(d))
            if idx is None:
                raise Unavailable(f"no GPU with UUID {d!r} (NVML sees {devs.count} GPU(s))")
            out.append((idx, asked))
    ordinal_based = any(isinstance(a, int) for _, a in out)
    if ordinal_based and devs.count > 1 and environ.get("CUDA_DEVICE_ORDER", "") != "PCI_BUS_ID":
        with contextlib.suppress(Exception):
            names = {_text(nv.nvmlDeviceGetName(nv.nvmlDeviceGetHandleByIndex(i))) for i in range(devs.count)}
            if len(names) > 1:
                warnings.append(
                    "GPUs of different models and CUDA_DEVICE_ORDER is not PCI_BUS_ID: CUDA ordinals may "
                    "not match NVML indices; pass UUIDs to be sure"
                )
    return out, warnings


# --------------------------------------------------------------------------------------------
# The sampler


class Sampler:
    """Samples NVML for the given GPUs from start() to stop(); see the module docstring.

    devices: CUDA ordinals (ints, mapped through CUDA_VISIBLE_DEVICES), UUIDs ("GPU-...", a unique
        prefix, or torch's bare form), or "cuda"/"cuda:N"; empty or "cpu" -> a no-op sampler.
    interval_s: time between samples (the sampling loop keeps a fixed schedule, skipping missed ticks).
    mode: "thread" (a daemon thread here) or "process" (a child python reading NVML, sending the
        samples back at stop; the worker still reads the energy counter itself for marks).
    nvml: None (pynvml), a module-like object (thread mode; process mode only if it is an
        importable module), or "pkg.mod:attr" naming a module-like object or a factory.
    environ: where CUDA_VISIBLE_DEVICES / CUDA_DEVICE_ORDER are read (default os.environ).
    keep_samples: put the raw sample columns in the summary (large: one row per interval).
    """

    def __init__(
        self,
        devices: Sequence[int | str] | str | None,
        interval_s: float = DEFAULT_INTERVAL_S,
        mode: str = "thread",
        nvml: Any = None,
        environ: Mapping[str, str] | None = None,
        keep_samples: bool = False,
        expected_duration_s: float = 120.0,
    ):
        if mode not in ("thread", "process"):
            raise ValueError(f"mode must be 'thread' or 'process', not {mode!r}")
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, not {interval_s!r}")
        if isinstance(devices, (str, int)):
            devices = [] if str(devices).strip().lower() == "cpu" else [devices]
        self.devices = list(devices or [])
        self.interval_s = float(interval_s)
        self.mode = mode
        self.environ = os.environ if environ is None else environ
        self.keep_samples = keep_samples
        self._nvml_arg = nvml
        # Columns are preallocated for this many samples and doubled when full.
        self._capacity = min(max(int(expected_duration_s / self.interval_s) + 16, 256), 1 << 16)
        self.reason: str | None = None
        self.marks: list[dict[str, Any]] = []
        self._nv: Any = None
        self._core: _Core | None = None
        self._resolved: list[tuple[int, int | str]] = []
        self._warnings: list[str] = []
        self._started = False
        self._summary: dict[str, Any] | None = None
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._thread_cpu_s = 0.0
        self._proc: subprocess.Popen[bytes] | None = None
        self._t_start = self._t_stop = 0.0
        self._energy_start: list[float | None] = []
        self._energy_stop: list[float | None] = []
        self._initialized = False
        self._info: list[dict[str, Any]] = []
        self._loop_error: str | None = None

    @property
    def available(self) -> bool:
        return self._started and self.reason is None

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> Sampler:
        """Initialize NVML, take a first sample and begin sampling; a no-op with a reason when it cannot."""
        if self._started:
            return self
        self._started = True
        try:
            self._start()
        except Unavailable as exc:
            self._fail(str(exc))
        except Exception as exc:  # never let telemetry break a cell
            self._fail(f"sampler could not start ({type(exc).__name__}: {exc})")
        return self

    def _fail(self, reason: str) -> None:
        self.reason = reason
        self._stop_children()
        self._shutdown_nvml()
        self._core = None

    def _start(self) -> None:
        if not self.devices:
            raise Unavailable("the cell runs on the CPU (no GPU to sample)")
        self._nv = nv = load_nvml(self._nvml_arg)
        try:
            nv.nvmlInit()
        except Exception as exc:
            raise Unavailable(f"NVML could not be initialized: {_error_text(exc)}") from None
        self._initialized = True
        try:
            self._resolved, self._warnings = resolve_devices(nv, self.devices, self.environ)
        except Unavailable:
            raise
        except Exception as exc:
            raise Unavailable(f"NVML error while finding the GPUs: {_error_text(exc)}") from None
        indices = [i for i, _ in self._resolved]
        # The worker's own handles: the energy counter at marks, names, UUIDs (and all sampling in thread mode).
        self._core = core = _Core(nv, indices, self._capacity if self.mode == "thread" else 16)
        self._info = [
            {
                "index": idx,
                "requested": asked,
                "name": _safe(lambda h=h: _text(nv.nvmlDeviceGetName(h))),
                "uuid": _safe(lambda h=h: _text(nv.nvmlDeviceGetUUID(h))),
            }
            for (idx, asked), h in zip(self._resolved, core.handles)
        ]
        if self.mode == "process":
            self._start_process(indices)
        self._t_start = time.perf_counter()
        self._energy_start = self._core.read_energy()
        if self.mode == "thread":
            self._core.sample()
            self._stop_event.clear()
            self._thread = threading.Thread(target=self._loop, name="tfbench-gpu-sampler", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        core, wait, interval = self._core, self._stop_event.wait, self.interval_s
        assert core is not None
        cpu0 = time.thread_time()
        next_t = core.t[0] + interval
        try:
            while True:
                delay = next_t - time.perf_counter()
                if delay < 0:  # late (GIL, scheduler): skip the missed ticks, keep the phase
                    next_t += interval * (int(-delay / interval) + 1)
                    delay = next_t - time.perf_counter()
                if wait(delay):
                    break
                core.sample()
                next_t += interval
        except Exception as exc:  # a bug here must not end the cell: report it in the summary
            self._loop_error = f"sampling thread stopped early: {type(exc).__name__}: {exc}"
        self._thread_cpu_s = time.thread_time() - cpu0

    def _start_process(self, indices: list[int]) -> None:
        spec = _spec_of(self._nvml_arg)
        if spec is None:
            raise Unavailable("process mode needs nvml as an importable module or a 'pkg.mod:attr' path")
        cfg = {"nvml": spec, "indices": indices, "interval_s": self.interval_s, "capacity": self._capacity}
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        paths = [here] + [p or os.getcwd() for p in sys.path]
        boot = (
            "import sys, json; sys.path[:0] = json.loads(sys.argv[2]); "
            "from bench.worker.telemetry import _child_main; _child_main(sys.argv[1])"
        )
        self._proc = proc = subprocess.Popen(
            [sys.executable, "-c", boot, json.dumps(cfg), json.dumps(paths)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
        )
        assert proc.stdout is not None
        deadline = time.monotonic() + 30.0
        msg: dict[str, Any] = {}
        while "ready" not in msg:
            ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            line = proc.stdout.readline() if ready else b""
            if not line:
                why = "no answer within 30 s" if not ready else f"it exited with code {proc.wait()}"
                raise Unavailable(f"the sampler process did not start: {why}")
            with contextlib.suppress(ValueError):
                msg = json.loads(line)
            if not isinstance(msg, dict):
                msg = {}
        if not msg["ready"]:
            raise Unavailable(f"the sampler process did not start: {msg.get('error')}")

    def _stop_children(self) -> None:
        if self._thread is not None:
            self._stop_event.set()
            self._thread.join(timeout=10)
            self._thread = None
        if self._proc is not None:
            with contextlib.suppress(Exception):
                self._proc.kill()
                self._proc.wait(timeout=5)
            self._proc = None

    def _shutdown_nvml(self) -> None:
        if self._initialized:
            self._initialized = False
            with contextlib.suppress(Exception):
                self._nv.nvmlShutdown()

    def mark(self, label: str) -> None:
        """Record the time and every device's energy counter now (cheap: one NVML call per device)."""
        t = time.perf_counter()
        core = self._core
        energy = core.read_energy() if core is not None and self.available else None
        self.marks.append({"label": label, "t": t, "energy_mj": energy})

    @contextlib.contextmanager
    def around_run(self, i: int) -> Iterator[None]:
        """Marks run_{i}_start and run_{i}_end around one timed run (energy_per_run reads these)."""
        start, end = run_labels(i)
        self.mark(start)
        try:
            yield
        finally:
            self.mark(end)

    def stop(self) -> dict[str, Any]:
        """Stop sampling and summarize; idempotent. Shape:

        {"available": True, "mode", "interval_s", "interval_actual_s", "n_samples", "duration_s",
         "energy_j_total": J over the window, all devices (None if a device has neither counter nor power),
         "devices": [{"index" (NVML), "requested", "name", "uuid", "n_samples",
                      "metrics": {gpu_util_pct|mem_util_pct|memory_used_bytes|power_w|sm_clock_mhz|
                                  mem_clock_mhz|temperature_c: {"n","min","mean","max","p50"} | None},
                      "unsupported": {probe: reason}, "errors": {probe: count},
                      "throttle_reasons_seen": [...], "throttle_reason_fraction": {name: share of samples},
                      "energy_j_total", "energy_source": "counter"|"power_integral"|None,
                      "energy_j_power_integral", "energy_counter_update_s"}],
         "marks": [{"label", "t", "energy_mj": [per device], "power_integral_j": [per device]}],
         "overhead": {"sampler_cpu_s", "cpu_duty", "sweep_us_mean", "sweep_us_max"},
         "warnings": [...], "samples": {...} only with keep_samples}
        or {"available": False, "reason": "..."} when nothing could be sampled.
        """
        if self._summary is not None:
            return self._summary
        if not self._started:
            self.start()
        try:
            self._summary = self._stop()
        except Exception as exc:  # never let telemetry break a cell
            self._fail(f"sampler failed while stopping ({type(exc).__name__}: {exc})")
            self._summary = {"available": False, "reason": self.reason}
        return self._summary

    def _stop(self) -> dict[str, Any]:
        if self.reason is not None or self._core is None:
            return {"available": False, "reason": self.reason or "sampler not started"}
        core = self._core
        export: dict[str, Any]
        if self.mode == "thread":
            self._stop_event.set()
            assert self._thread is not None
            self._thread.join(timeout=10)
            self._thread = None
            core.sample()  # a last sample after every mark
            self._t_stop = time.perf_counter()
            self._energy_stop = core.read_energy()
            export = core.export()
            export["cpu_s"] = self._thread_cpu_s
        else:
            export = self._stop_process()
        try:
            return self._summarize(export)
        finally:
            self._shutdown_nvml()

    def _stop_process(self) -> dict[str, Any]:
        assert self._proc is not None and self._core is not None
        proc, self._proc = self._proc, None
        self._t_stop = time.perf_counter()
        self._energy_stop = self._core.read_energy()
        try:
            out, _ = proc.communicate(input=b"stop\n", timeout=30)
            export = json.loads(out.splitlines()[-1])
            if not isinstance(export, dict) or "columns" not in export:
                raise ValueError
            return export
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            error = "the sampler process did not answer within 30 s"
        except (ValueError, IndexError, OSError):
            error = f"the sampler process ended without samples (exit code {proc.returncode})"
        # The marks' energy counters were read here and still give energy per run.
        n_dev = len(self._resolved)
        return {
            "n": 0,
            "t": [],
            "columns": [{c: [] for c in COLUMNS} for _ in range(n_dev)],
            "unsupported": [{} for _ in range(n_dev)],
            "errors": [{} for _ in range(n_dev)],
            "sweep_s_total": 0.0,
            "sweep_s_max": 0.0,
            "cpu_s": None,
            "error": error,
        }

    # -- summary ---------------------------------------------------------------------------

    def _summarize(self, ex: dict[str, Any]) -> dict[str, Any]:
        n, t = ex["n"], ex["t"]
        window = self._t_stop - self._t_start
        devices = []
        integrals: list[tuple[list[float], list[float], list[float]] | None] = []
        for d in range(len(self._resolved)):
            cols = ex["columns"][d]
            unsupported = ex["unsupported"][d]
            info: dict[str, Any] = dict(self._info[d])
            info["n_samples"] = n
            metrics: dict[str, Any] = {}
            for m in STAT_METRICS:
                if _METRIC_PROBE[m] in unsupported:
                    metrics[m] = None
                    continue
                values = cols["power_mw"] if m == "power_w" else cols[m]
                scale = 1e-3 if m == "power_w" else 1.0
                metrics[m] = _stats([v * scale for v in values if v == v])
            info["metrics"] = metrics
            info["unsupported"] = dict(unsupported)
            info["errors"] = dict(ex["errors"][d])
            masks = Counter(int(v) for v in cols["clock_event_reasons"] if v == v)
            n_masks = sum(masks.values())
            counts: dict[str, int] = {}
            for mask, k in masks.items():
                for name in decode_clock_reasons(mask):
                    counts[name] = counts.get(name, 0) + k
            info["throttle_reasons_seen"] = sorted(counts, key=_reason_order)
            info["throttle_reason_fraction"] = {
                name: counts[name] / n_masks for name in info["throttle_reasons_seen"]
            }
            cum = _cumulative_energy(t, cols["power_mw"]) if "power" not in unsupported else None
            integrals.append(cum)
            e0 = self._energy_start[d] if self._energy_start else None
            e1 = self._energy_stop[d] if self._energy_stop else None
            p_int = None
            if cum is not None:
                p_int = _integral_at(cum, self._t_stop) - _integral_at(cum, self._t_start)
            info["energy_j_power_integral"] = p_int
            if e0 is not None and e1 is not None:
                info["energy_j_total"], info["energy_source"] = (e1 - e0) / 1000.0, "counter"
            elif p_int is not None:
                info["energy_j_total"], info["energy_source"] = p_int, "power_integral"
            else:
                info["energy_j_total"], info["energy_source"] = None, None
            info["energy_counter_update_s"] = _update_period(t, cols["energy_mj"])
            devices.append(info)
        for mark in self.marks:
            mark["power_integral_j"] = [
                None if cum is None else _integral_at(cum, mark["t"]) - _integral_at(cum, self._t_start)
                for cum in integrals
            ]
        totals = [dev["energy_j_total"] for dev in devices]
        cpu_s = float(ex.get("cpu_s") or 0.0)
        summary: dict[str, Any] = {
            "available": True,
            "mode": self.mode,
            "interval_s": self.interval_s,
            "interval_actual_s": statistics.median([b - a for a, b in zip(t, t[1:])]) if n > 1 else None,
            "n_samples": n,
            "duration_s": window,
            "energy_j_total": None if any(e is None for e in totals) else sum(totals),  # type: ignore[arg-type]
            "devices": devices,
            "marks": self.marks,
            "overhead": {
                "sampler_cpu_s": cpu_s,
                "cpu_duty": cpu_s / window if window > 0 else None,
                "sweep_us_mean": 1e6 * ex["sweep_s_total"] / n if n else None,
                "sweep_us_max": 1e6 * ex["sweep_s_max"] if n else None,
            },
            "warnings": self._warnings + [w for w in (self._loop_error, ex.get("error")) if w],
        }
        if self.keep_samples:
            summary["samples"] = {
                "t": [x - self._t_start for x in t],
                "devices": [
                    {c: [None if v != v else v for v in col] for c, col in cols.items()}
                    for cols in ex["columns"]
                ],
            }
        return summary

    def __enter__(self) -> Sampler:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def sampler_for_device(device: str, **kwargs: Any) -> Sampler:
    """The sampler for a cell's device string: "cpu" -> a no-op; "cuda" / "cuda:N" -> that CUDA device."""
    return Sampler(device, **kwargs)


def _safe(f: Callable[[], Any]) -> Any:
    try:
        return f()
    except Exception:
        return None


def _reason_order(name: str) -> int:
    for k, (_, known) in enumerate(CLOCK_EVENT_REASONS):
        if known == name:
            return k
    return len(CLOCK_EVENT_REASONS) + int(name.rpartition("_")[2], 16)


def _stats(values: list[float]) -> dict[str, Any] | None:
    if not values:
        return None
    return {
        "n": len(values),
        "min": min(values),
        "mean": math.fsum(values) / len(values),
        "max": max(values),
        "p50": statistics.median(values),
    }


def _cumulative_energy(
    t: list[float], power_mw: list[float]
) -> tuple[list[float], list[float], list[float]] | None:
    """(times, watts, joules since the first) at each sample with a power value: the trapezoid integral."""
    times = [ti for ti, p in zip(t, power_mw) if p == p]
    watts = [p / 1e3 for p in power_mw if p == p]
    if not times:
        return None
    cum = [0.0]
    for k in range(1, len(times)):
        cum.append(cum[-1] + (times[k] - times[k - 1]) * (watts[k] + watts[k - 1]) / 2)
    return times, watts, cum


def _integral_at(curve: tuple[list[float], list[float], list[float]], x: float) -> float:
    """The cumulative integral at time x: interpolated between samples, the nearest power held outside."""
    t, watts, cum = curve
    k = bisect.bisect_right(t, x) - 1
    if k < 0:
        return cum[0] - (t[0] - x) * watts[0]
    if k >= len(t) - 1:
        return cum[-1] + (x - t[-1]) * watts[-1]
    span = t[k + 1] - t[k]
    return cum[k] + (cum[k + 1] - cum[k]) * ((x - t[k]) / span if span > 0 else 0.0)


def _update_period(t: list[float], energy: list[float]) -> float | None:
    """Median time between observed changes of the energy counter (its effective resolution)."""
    changes = [t[k] for k in range(1, len(t)) if energy[k] == energy[k] and energy[k] != energy[k - 1]]
    if len(changes) < 3:
        return None
    return statistics.median([b - a for a, b in zip(changes, changes[1:])])


# --------------------------------------------------------------------------------------------
# Energy per mark interval, per run, per token


def run_labels(i: int) -> tuple[str, str]:
    return f"run_{i}_start", f"run_{i}_end"


def energy_between(marks: Sequence[Mapping[str, Any]], start_label: str, end_label: str) -> dict[str, Any]:
    """Joules between two marks: {"devices": [J|None], "total_j": J|None, "seconds", "source"}.

    From the energy counter where both marks have it, else from the power samples integrated over
    time (stop() adds that to the marks), else None. Labels should be unique; the last one wins.
    """
    by = {m["label"]: m for m in marks}
    a, b = by.get(start_label), by.get(end_label)
    if a is None or b is None:
        return {"devices": [], "total_j": None, "seconds": None, "source": None}
    ea, eb = a.get("energy_mj") or [], b.get("energy_mj") or []
    pa, pb = a.get("power_integral_j") or [], b.get("power_integral_j") or []
    n = max(len(ea), len(eb), len(pa), len(pb))
    per: list[float | None] = []
    sources = set()
    for d in range(n):
        c0, c1 = _at(ea, d), _at(eb, d)
        if c0 is not None and c1 is not None:
            per.append((c1 - c0) / 1000.0)
            sources.add("counter")
            continue
        q0, q1 = _at(pa, d), _at(pb, d)
        if q0 is not None and q1 is not None:
            per.append(q1 - q0)
            sources.add("power_integral")
            continue
        per.append(None)
    total = None if not per or any(e is None for e in per) else math.fsum(per)  # type: ignore[arg-type]
    source = None if not sources else (sources.pop() if len(sources) == 1 else "mixed")
    return {"devices": per, "total_j": total, "seconds": b["t"] - a["t"], "source": source}


def _at(values: Sequence[Any], d: int) -> Any:
    return values[d] if d < len(values) else None


def energy_per_run(summary: Mapping[str, Any], n_runs: int) -> list[float | None]:
    """Joules of each timed run (all devices), from the run_{i}_start/end marks; None where unknown."""
    if not summary.get("available"):
        return [None] * n_runs
    marks = summary.get("marks") or []
    return [energy_between(marks, *run_labels(i))["total_j"] for i in range(n_runs)]


def joules_per_token(energy: Sequence[float | None], tokens_per_run: int) -> list[float | None]:
    return [None if e is None or tokens_per_run <= 0 else e / tokens_per_run for e in energy]


# --------------------------------------------------------------------------------------------
# The sampler process (mode="process")


def _child_main(cfg_json: str) -> None:
    """Sample until a line or EOF arrives on stdin, then write the samples as one JSON line."""
    out = sys.stdout.buffer
    cfg = json.loads(cfg_json)
    try:
        nv = load_nvml(cfg["nvml"])
        nv.nvmlInit()
        core = _Core(nv, cfg["indices"], cfg["capacity"])
        core.sample()
    except Exception as exc:
        out.write(json.dumps({"ready": False, "error": f"{type(exc).__name__}: {exc}"}).encode() + b"\n")
        out.flush()
        return
    out.write(b'{"ready": true}\n')
    out.flush()
    fd, interval = sys.stdin.fileno(), float(cfg["interval_s"])
    cpu0 = time.process_time()
    next_t = core.t[0] + interval
    while True:
        delay = next_t - time.perf_counter()
        if delay < 0:
            next_t += interval * (int(-delay / interval) + 1)
            delay = next_t - time.perf_counter()
        if select.select([fd], [], [], delay)[0]:
            break  # "stop", or EOF when the worker is gone
        core.sample()
        next_t += interval
    core.sample()
    export = core.export()
    export["cpu_s"] = time.process_time() - cpu0
    with contextlib.suppress(OSError):  # BrokenPipeError: the worker is gone, nobody to answer
        out.write(json.dumps(export).encode() + b"\n")
        out.flush()
    with contextlib.suppress(Exception):
        nv.nvmlShutdown()
    with contextlib.suppress(OSError):
        os.close(1)  # flushed or not, nothing may be written at exit
