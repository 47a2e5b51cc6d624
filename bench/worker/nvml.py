"""NVML access for the GPU telemetry sampler: loading the binding, reading each metric, the sampling
core, CUDA device numbers to NVML indices, and the main function of the sampler process.

Only the standard library is imported here: the sampler process starts a bare interpreter that
imports this module and the NVML binding, nothing else (see telemetry.Sampler).

A metric the GPU or driver does not support is tried once (with its older alternative, where NVML
has one), recorded as unsupported with its reason and never read again; other NVML errors null
that one value, and a metric failing too many samples in a row is given up.

Device numbering: integers are CUDA ordinals, mapped to NVML's physical indices through
CUDA_VISIBLE_DEVICES (which may hold indices, UUIDs or unique UUID prefixes). CUDA numbers GPUs
fastest first unless CUDA_DEVICE_ORDER=PCI_BUS_ID, NVML by PCI bus: on hosts with different GPU
models the two can disagree, which resolve_devices warns about; a UUID string
(torch.cuda.get_device_properties(i).uuid) is exact in every case, and a MIG instance's UUID names
its parent GPU.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import select
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

NAN = float("nan")

# NVML error codes after which a metric is never read again on that device.
_PERMANENT_CODES = {3, 4, 13}  # NOT_SUPPORTED, NO_PERMISSION, FUNCTION_NOT_FOUND
_PERMANENT_NAMES = {"NVMLError_NotSupported", "NVMLError_NoPermission", "NVMLError_FunctionNotFound"}
_MAX_CONSECUTIVE_ERRORS = 20  # a metric failing this many samples in a row is given up

# The sample columns of each device, as the sampler process exports them.
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


def as_text(value: Any) -> str:
    """A string NVML returned (bytes in old bindings) as str."""
    return value.decode() if isinstance(value, bytes) else str(value)


def error_text(exc: BaseException) -> str:
    """An NVML error in words (its message, or its type when it has none)."""
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


class Core:
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
                self.unsupported[p.device][p.name] = error_text(exc)
                p.read = None  # type: ignore[assignment]
                return True
        p.errors += 1
        p.consecutive += 1
        if p.consecutive >= _MAX_CONSECUTIVE_ERRORS:
            self.unsupported[p.device][p.name] = f"failed {p.consecutive} times in a row: {error_text(exc)}"
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
                as_text(self.nv.nvmlDeviceGetUUID(self.nv.nvmlDeviceGetHandleByIndex(i)))
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
            names = {
                as_text(nv.nvmlDeviceGetName(nv.nvmlDeviceGetHandleByIndex(i))) for i in range(devs.count)
            }
            if len(names) > 1:
                warnings.append(
                    "GPUs of different models and CUDA_DEVICE_ORDER is not PCI_BUS_ID: CUDA ordinals may "
                    "not match NVML indices; pass UUIDs to be sure"
                )
    return out, warnings


# --------------------------------------------------------------------------------------------
# The sampler process


def sampler_main(cfg_json: str) -> None:
    """The sampler process's entry (telemetry.Sampler starts it): answer {"ready": ...} on stdout,
    sample until a line or EOF arrives on stdin, then write the samples as one JSON line."""
    out = sys.stdout.buffer
    cfg = json.loads(cfg_json)
    try:
        nv = load_nvml(cfg["nvml"])
        nv.nvmlInit()
        core = Core(nv, cfg["indices"], cfg["capacity"])
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
