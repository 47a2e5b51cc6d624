"""GPU telemetry beside the timed runs of a cell: utilization, memory, power, energy, clocks, throttling.

A `Sampler` reads NVML (nvidia-ml-py, imported as `pynvml`; it never creates a CUDA context)
every `interval_s` for each GPU the cell uses, in a separate sampler process (nvml.sampler_main)
that sends its samples back at stop. `mark(label)` reads the energy counter of every device at
that moment, in the worker itself; the worker marks the start and end of each timed run and gets
joules per run from `energy.energy_per_run`, joules per token by dividing by its tokens:

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
Which GPU an ordinal or a UUID names is nvml.resolve_devices' job; on hosts with different GPU
models the summary notes in "warnings" that CUDA ordinals may not match NVML indices.

Timestamps are time.perf_counter() (CLOCK_MONOTONIC on Linux), comparable between the worker and
the sampler process.

Why a process (benchmarks/sampler.py): a sampler inside the worker would share its GIL, so its
cost would land in the timed runs and grow with GPUs x metrics x rate, and while the worker's host
loop is busy in Python each NVML call would wait for the GIL (sweeps stretch, sample times blur).
The process costs a ~0.1-0.2 s start (outside the timed runs) and a few % of another core at 5 ms.
Measured on a 2-vCPU VM against a host-bound generate with a stand-in NVML of 30 us per call: at
50 ms a sampler thread and the process were both within ~1-1.7% (the method's noise there is
~1%); at 5 ms the thread cost +9%, the process +1-1.3%.

Energy: the counter where the GPU has one, else the power samples integrated (see energy.py).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import select
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.worker.energy import cumulative_energy, integral_at, run_labels, update_period
from bench.worker.nvml import (
    COLUMNS,
    PROBE_COLUMNS,
    Core,
    Unavailable,
    as_text,
    error_text,
    load_nvml,
    resolve_devices,
)

DEFAULT_INTERVAL_S = 0.05
# The directory that holds the bench package, first on the sampler process's path.
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])

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


def _spec_of(nvml: Any) -> str | None:
    """A string the sampler process can load `nvml` from, or None when it cannot cross a process."""
    if nvml is None or isinstance(nvml, str):
        return "pynvml" if nvml is None else nvml
    name = getattr(nvml, "__name__", None)
    if isinstance(name, str) and sys.modules.get(name) is nvml:
        return name
    return None


class Sampler:
    """Samples NVML for the given GPUs from start() to stop(); see the module docstring.

    devices: CUDA ordinals (ints, mapped through CUDA_VISIBLE_DEVICES), UUIDs ("GPU-...", a unique
        prefix, or torch's bare form), or "cuda"/"cuda:N"; empty or "cpu" -> a no-op sampler.
    interval_s: time between samples (the sampling loop keeps a fixed schedule, skipping missed ticks).
    nvml: None (pynvml), an importable module, or "pkg.mod:attr" naming a module-like object or a
        factory: the sampler process loads it by that name, and so does the worker for its marks.
    environ: where CUDA_VISIBLE_DEVICES / CUDA_DEVICE_ORDER are read (default os.environ).
    keep_samples: put the raw sample columns in the summary (large: one row per interval).
    """

    def __init__(
        self,
        devices: Sequence[int | str] | str | None,
        interval_s: float = DEFAULT_INTERVAL_S,
        nvml: Any = None,
        environ: Mapping[str, str] | None = None,
        keep_samples: bool = False,
        expected_duration_s: float = 120.0,
    ):
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, not {interval_s!r}")
        if isinstance(devices, (str, int)):
            devices = [] if str(devices).strip().lower() == "cpu" else [devices]
        self.devices = list(devices or [])
        self.interval_s = float(interval_s)
        self.environ = os.environ if environ is None else environ
        self.keep_samples = keep_samples
        self._nvml_arg = nvml
        # The sampler process preallocates columns for this many samples and doubles them when full.
        self._capacity = min(max(int(expected_duration_s / self.interval_s) + 16, 256), 1 << 16)
        self.reason: str | None = None
        self.marks: list[dict[str, Any]] = []
        self._nv: Any = None
        self._core: Core | None = None
        self._resolved: list[tuple[int, int | str]] = []
        self._warnings: list[str] = []
        self._started = False
        self._summary: dict[str, Any] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._t_start = self._t_stop = 0.0
        self._energy_start: list[float | None] = []
        self._energy_stop: list[float | None] = []
        self._initialized = False
        self._info: list[dict[str, Any]] = []

    @property
    def available(self) -> bool:
        return self._started and self.reason is None

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> Sampler:
        """Initialize NVML, start the sampler process and begin sampling; a no-op with a reason when it cannot."""
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
        self._stop_process_now()
        self._shutdown_nvml()
        self._core = None

    def _start(self) -> None:
        if not self.devices:
            raise Unavailable("the cell runs on the CPU (no GPU to sample)")
        spec = _spec_of(self._nvml_arg)
        if spec is None:
            raise Unavailable(
                "the sampler process needs nvml as an importable module or a 'pkg.mod:attr' path"
            )
        self._nv = nv = load_nvml(self._nvml_arg)
        try:
            nv.nvmlInit()
        except Exception as exc:
            raise Unavailable(f"NVML could not be initialized: {error_text(exc)}") from None
        self._initialized = True
        try:
            self._resolved, self._warnings = resolve_devices(nv, self.devices, self.environ)
        except Unavailable:
            raise
        except Exception as exc:
            raise Unavailable(f"NVML error while finding the GPUs: {error_text(exc)}") from None
        indices = [i for i, _ in self._resolved]
        # The worker's own handles: the energy counter at marks, names, UUIDs.
        self._core = core = Core(nv, indices, 16)
        self._info = [
            {
                "index": idx,
                "requested": asked,
                "name": _safe(lambda h=h: as_text(nv.nvmlDeviceGetName(h))),
                "uuid": _safe(lambda h=h: as_text(nv.nvmlDeviceGetUUID(h))),
            }
            for (idx, asked), h in zip(self._resolved, core.handles)
        ]
        self._start_process(spec, indices)
        self._t_start = time.perf_counter()
        self._energy_start = core.read_energy()

    def _start_process(self, spec: str, indices: list[int]) -> None:
        cfg = {"nvml": spec, "indices": indices, "interval_s": self.interval_s, "capacity": self._capacity}
        paths = [_PACKAGE_ROOT] + [p or os.getcwd() for p in sys.path]
        boot = (
            "import sys, json; sys.path[:0] = json.loads(sys.argv[2]); "
            "from bench.worker.nvml import sampler_main; sampler_main(sys.argv[1])"
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

    def _stop_process_now(self) -> None:
        """End the sampler process without its samples (start failed), closing its pipes."""
        if self._proc is not None:
            proc, self._proc = self._proc, None
            with contextlib.suppress(Exception):
                proc.kill()
                proc.communicate(timeout=5)

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

        {"available": True, "mode": "process", "interval_s", "interval_actual_s", "n_samples", "duration_s",
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
        try:
            return self._summarize(self._stop_process())
        finally:
            self._shutdown_nvml()

    def _stop_process(self) -> dict[str, Any]:
        """Ask the sampler process for its samples; an empty export (with the error) if it cannot answer."""
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
            proc.communicate()
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
        integrals = []
        for d in range(len(self._resolved)):
            info, cum = self._device_summary(d, ex)
            devices.append(info)
            integrals.append(cum)
        for mark in self.marks:
            mark["power_integral_j"] = [
                None if cum is None else integral_at(cum, mark["t"]) - integral_at(cum, self._t_start)
                for cum in integrals
            ]
        totals = [dev["energy_j_total"] for dev in devices]
        cpu_s = float(ex.get("cpu_s") or 0.0)
        summary: dict[str, Any] = {
            "available": True,
            "mode": "process",
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
            "warnings": self._warnings + ([ex["error"]] if ex.get("error") else []),
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

    def _device_summary(self, d: int, ex: dict[str, Any]) -> tuple[dict[str, Any], Any]:
        """Device d's entry of the summary, and its power curve (None without power samples)."""
        n, t = ex["n"], ex["t"]
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
        cum = cumulative_energy(t, cols["power_mw"]) if "power" not in unsupported else None
        e0 = self._energy_start[d] if self._energy_start else None
        e1 = self._energy_stop[d] if self._energy_stop else None
        p_int = None
        if cum is not None:
            p_int = integral_at(cum, self._t_stop) - integral_at(cum, self._t_start)
        info["energy_j_power_integral"] = p_int
        if e0 is not None and e1 is not None:
            info["energy_j_total"], info["energy_source"] = (e1 - e0) / 1000.0, "counter"
        elif p_int is not None:
            info["energy_j_total"], info["energy_source"] = p_int, "power_integral"
        else:
            info["energy_j_total"], info["energy_source"] = None, None
        info["energy_counter_update_s"] = update_period(t, cols["energy_mj"])
        return info, cum

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
