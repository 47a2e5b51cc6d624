"""How much GPU telemetry sampling (bench/worker/telemetry.py) disturbs a timed workload: none vs process.

The worker reads NVML in a sampler process of its own (telemetry.Sampler). For each setting (the
sampler process at 50 ms and at 5 ms, and none as an A/A control) the benchmark times --pairs
adjacent pairs of units of work, one without a sampler and one with it (the sampler starts before
and stops after the timed unit), in random order, settings shuffled. Slowdown = p10 of the units
with the sampler / p10 of all units without one (noise on a shared host only ever slows a unit
down, and every unit holds several samples, so a low quantile keeps the sampler's cost and sheds
the noise); the median of the per-pair ratios is shown too, both with bootstrap 95% intervals. The
goal is < 1%.

NVML: the real pynvml when it finds a GPU (or --nvml real), else a stand-in (--nvml stand-in)
whose every call costs --call-us of CPU (default 30 us, an assumed middle of the 20-50 us a real
NVML query takes; not measurable on a host without a driver), in two variants (--gil), which
change how the sampler process spends its CPU (it never shares the workload's GIL):
- hold: all of it pure Python holding the GIL;
- release: as pynvml's ctypes calls do, 1 us of Python (pynvml 13's wrapper measured 0.7-1.1 us
  per call with a no-op C function behind it) and the rest in C with the GIL released (hashlib
  on a buffer sized to take that long), so the GIL changes hands twice per call.
The sampler process loads the stand-in by name (STAND_IN), with the settings in the environment.
One sample is 8 calls per GPU (utilization, memory, power, energy, 2 clocks, temperature, clock
event reasons).

Workloads (--workload):
- llama (default): a tiny synthetic Llama's generate (built offline from a config), torch on one
  thread: host-bound like a small model's decode on a GPU. On a GPU host, --device cuda runs it on
  the GPU (synchronized), the real case of a cell.
- python: a pure-Python loop, the most GIL-bound case. On the 2-vCPU VM this was written on, its
  unit times were bimodal (host effects): use it on a quiet host only.

    python benchmarks/sampler.py [--pairs 40] [--workload llama python] [--nvml auto|real|stand-in]
                                 [--gil hold release] [--call-us 30] [--device cpu|cuda] [--json out.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.worker.telemetry import Sampler  # noqa: E402

STAND_IN = "benchmarks.sampler:stand_in"  # what the sampler process (and the marks' side) imports
NONE: tuple[str, float | None] = ("none", None)
SETTINGS: list[tuple[str, float | None]] = [
    NONE,  # an A/A control: the noise floor of the method
    ("process", 0.05),
    ("process", 0.005),
]


# --------------------------------------------------------------------------------------------
# A stand-in NVML whose calls cost about what real ones cost


class _StandInError(Exception):
    pass


class StandInNVML:
    """The NVML functions the sampler calls; each burns `call_us` of CPU before it answers."""

    NVMLError = _StandInError
    NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_TEMPERATURE_GPU = 1, 2, 0

    def __init__(self, call_us: float, gil: str, n: int = 1):
        self.n = n
        self.call_s = call_us * 1e-6
        self.release = gil == "release"
        self.python_s = min(self.call_s, 1e-6) if self.release else self.call_s
        self._buf = b""
        if self.release:  # hashlib releases the GIL for buffers over 2 KiB: size one to the C part
            self._buf = bytes(max(4096, int((self.call_s - self.python_s) / _sha256_s_per_byte())))
        self._util = SimpleNamespace(gpu=97, memory=60)
        self._mem = SimpleNamespace(total=80 << 30, used=40 << 30, free=40 << 30)
        self._energy = 0

    def _burn(self) -> None:
        end = time.perf_counter() + self.python_s
        while time.perf_counter() < end:
            pass
        if self._buf:
            hashlib.sha256(self._buf).digest()

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        return self.n

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetName(self, h: int) -> str:
        return "stand-in GPU"

    def nvmlDeviceGetUUID(self, h: int) -> str:
        return f"GPU-00000000-0000-0000-0000-{h:012d}"

    def nvmlDeviceGetUtilizationRates(self, h: int) -> Any:
        self._burn()
        return self._util

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:
        self._burn()
        return self._mem

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        self._burn()
        return 350_000

    def nvmlDeviceGetTotalEnergyConsumption(self, h: int) -> int:
        self._burn()
        self._energy += 17
        return self._energy

    def nvmlDeviceGetClockInfo(self, h: int, kind: int) -> int:
        self._burn()
        return 1980

    def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> int:
        self._burn()
        return 55

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: int) -> int:
        self._burn()
        return 0


_PER_BYTE: list[float] = []


def _sha256_s_per_byte() -> float:
    if not _PER_BYTE:
        probe = bytes(1 << 20)
        t0 = time.perf_counter()
        for _ in range(20):
            hashlib.sha256(probe).digest()
        _PER_BYTE.append((time.perf_counter() - t0) / (20 << 20))
    return _PER_BYTE[0]


def stand_in() -> StandInNVML:
    """Factory for the sampler process: the parent's settings come through the environment."""
    return StandInNVML(
        float(os.environ.get("TFBENCH_STANDIN_CALL_US", "30")),
        os.environ.get("TFBENCH_STANDIN_GIL", "hold"),
        int(os.environ.get("TFBENCH_STANDIN_GPUS", "1")),
    )


def real_nvml_works() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return False
    try:
        return pynvml.nvmlDeviceGetCount() > 0
    finally:
        pynvml.nvmlShutdown()


# --------------------------------------------------------------------------------------------
# Workloads: one timed unit of about `target_s`


def python_workload(target_s: float) -> Any:
    def loop(n: int) -> int:
        acc = 0
        for i in range(n):
            acc = (acc + i * i) % 1_000_003
        return acc

    loop(200_000)
    t0 = time.perf_counter()
    loop(200_000)
    n = max(10_000, int(200_000 * target_s / (time.perf_counter() - t0)))
    return lambda: loop(n)


def llama_workload(target_s: float, device: str) -> Any:
    import torch

    from bench.worker import models
    from bench.worker.generate import exact_greedy_config

    torch.set_num_threads(1)
    net, tok = models.load("synthetic:llama-tiny", None, {}, "float32", device, "sdpa", False, 0)
    ids = torch.tensor(models.prompt_ids(tok, 1, 32), device=device)
    mask = torch.ones_like(ids)
    gen = exact_greedy_config(net, tok, 32)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def once() -> None:
        with torch.inference_mode():
            net.generate(input_ids=ids, attention_mask=mask, generation_config=gen)

    for _ in range(3):
        once()
    sync()
    t0 = time.perf_counter()
    once()
    sync()
    reps = max(1, round(target_s / (time.perf_counter() - t0)))

    def unit() -> None:
        for _ in range(reps):
            once()
        sync()

    return unit


# --------------------------------------------------------------------------------------------


def run_setting(workload: Any, setting: tuple[str, float | None], nvml_spec: str | None) -> tuple[float, Any]:
    """One timed unit under one setting; the sampler starts before and stops after the timed region."""
    _, interval = setting
    if interval is None:
        t0 = time.perf_counter()
        workload()
        return time.perf_counter() - t0, None
    sampler = Sampler([0], interval_s=interval, nvml=nvml_spec).start()
    if not sampler.available:
        sys.exit(f"sampler unavailable: {sampler.reason}")
    t0 = time.perf_counter()
    workload()
    t = time.perf_counter() - t0
    out = sampler.stop()
    return t, {**out["overhead"], "interval": out["interval_actual_s"]}


def measure(workload: Any, pairs: int, nvml_spec: str | None, seed: int) -> dict[str, Any]:
    """Per setting, `pairs` adjacent (no sampler, sampler) units in random order: ratios within a pair
    are free of the drift between minutes that a shared machine shows."""
    rng = random.Random(seed)
    res: dict[str, Any] = {label(s): {"ratios": [], "times": [], "overhead": []} for s in SETTINGS}
    for _ in range(2):  # warm-up, not kept
        workload()
    for _ in range(pairs):
        order = SETTINGS[:]
        rng.shuffle(order)
        for setting in order:
            first_none = rng.random() < 0.5
            if first_none:
                base, _ = run_setting(workload, NONE, nvml_spec)
            t, ov = run_setting(workload, setting, nvml_spec)
            if not first_none:
                base, _ = run_setting(workload, NONE, nvml_spec)
            r = res[label(setting)]
            r["ratios"].append(t / base)
            r["times"].append(t)
            if ov is not None:
                r["overhead"].append(ov)
    return res


def label(setting: tuple[str, float | None]) -> str:
    mode, interval = setting
    return "none (A/A control)" if interval is None else f"{mode}@{interval * 1000:g}ms"


def p10(values: list[float]) -> float:
    return statistics.quantiles(values, n=10, method="inclusive")[0]


def bootstrap(
    values: list[float], base: list[float] | None, rng: random.Random, n: int = 2000
) -> tuple[float, float]:
    """95% interval of median(values), or of p10(values) / p10(base) when base is given."""
    if base is None:
        est = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(n))
    else:
        est = sorted(
            p10(rng.choices(values, k=len(values))) / p10(rng.choices(base, k=len(base))) for _ in range(n)
        )
    return est[int(0.025 * n)], est[int(0.975 * n) - 1]


def verdict(est: float, hi: float) -> str:
    if hi < 1.01:
        return "yes"
    if est < 1.01:
        return "likely (interval reaches 1%)"
    return "**no**"


def rows(name: str, res: dict[str, Any], rng: random.Random) -> list[str]:
    # Every unit without a sampler is a baseline; the A/A control's "with" units are such units too.
    base = [t / r for v in res.values() for t, r in zip(v["times"], v["ratios"])]
    base += res[label(NONE)]["times"]
    out = []
    for setting in SETTINGS:
        r = res[label(setting)]
        med = statistics.median(r["ratios"])
        lo, hi = bootstrap(r["ratios"], None, rng)
        q = p10(r["times"]) / p10(base)
        qlo, qhi = bootstrap(r["times"], base, rng)
        unit = f"{p10(r['times']) * 1000:.1f}"
        mode, interval = setting
        head = f"| {name} | {mode} | {'-' if interval is None else f'{interval * 1000:g} ms'} | {unit} "
        figures = f"| {q:.4f} ({qlo:.4f}-{qhi:.4f}) | {med:.4f} ({lo:.4f}-{hi:.4f}) "
        if interval is None:
            out.append(head + figures + "| - | - | - | (A/A control: the method's noise) |")
            continue
        ov = r["overhead"]
        duty = statistics.median([o["cpu_duty"] for o in ov])
        sweep = statistics.median([o["sweep_us_mean"] for o in ov])
        per_s = 1 / statistics.median([o["interval"] for o in ov])
        out.append(
            head
            + figures
            + f"| {100 * duty:.2f}% | {sweep:.0f} | {per_s:.0f} of {1 / interval:.0f} | {verdict(q, qhi)} |"
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=30, help="(without, with) pairs per setting")
    ap.add_argument("--unit-s", type=float, default=0.2, help="length of one timed unit of work")
    ap.add_argument("--workload", nargs="+", choices=["python", "llama"], default=["llama"])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the llama workload runs")
    ap.add_argument("--nvml", choices=["auto", "real", "stand-in"], default="auto")
    ap.add_argument("--call-us", type=float, default=30.0, help="stand-in: CPU cost of one NVML call")
    ap.add_argument(
        "--gil", nargs="+", choices=["hold", "release"], default=["hold", "release"], help="stand-in variants"
    )
    ap.add_argument("--json", type=Path, help="also write the raw figures here")
    args = ap.parse_args()

    use_real = args.nvml == "real" or (args.nvml == "auto" and real_nvml_works())
    variants: list[tuple[str, str | None, str | None]] = []
    if use_real:
        variants.append(("real pynvml (GPU 0)", None, None))
    else:
        for gil in args.gil:
            variants.append((f"stand-in, GIL {'held' if gil == 'hold' else 'released'}", gil, STAND_IN))

    print("## GPU telemetry sampler: disturbance of a timed workload\n")
    print(
        f"python {platform.python_version()}, {os.cpu_count()} CPUs ({platform.machine()}); "
        + ("NVML: real; " if use_real else f"NVML stand-in: {args.call_us:g} us per call; ")
        + f"{args.pairs} adjacent (without, with) pairs per setting, in random order, of ~{args.unit_s:g} s "
        "units. Slowdown: p10 of the units with the sampler / p10 of all units without one (host noise only "
        "ever slows a unit down, and every unit holds several samples, so the low quantile keeps the "
        "sampler's cost and drops the noise); also the median of the per-pair ratios; both with bootstrap "
        "95% intervals; '< 1%?' judges the p10 ratio. Sampler CPU duty: the sampler process's CPU time / "
        "wall time. Sweep: wall time of one sample of all "
        "metrics. Samples/s: 1 / median time between samples, of asked.\n"
    )
    print(
        "| NVML | workload | sampler | interval | unit p10 (ms) | slowdown: p10 ratio (95%) "
        "| median pair ratio (95%) | sampler CPU duty | sweep (us) | samples/s | < 1%? |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    rng = random.Random(1)
    raw: dict[str, Any] = {}
    workloads: dict[str, Any] = {}
    for what, gil, spec in variants:
        if gil is not None:  # the sampler process inherits the stand-in's settings
            os.environ.update(
                TFBENCH_STANDIN_CALL_US=str(args.call_us), TFBENCH_STANDIN_GIL=gil, TFBENCH_STANDIN_GPUS="1"
            )
        for name in args.workload:
            if name not in workloads:
                workloads[name] = (
                    python_workload(args.unit_s)
                    if name == "python"
                    else llama_workload(args.unit_s, args.device)
                )
            shown = name if name == "python" else f"llama-tiny generate ({args.device}, 1 thread)"
            res = measure(workloads[name], args.pairs, spec, seed=len(name))
            raw[f"{what} / {shown}"] = res
            for row in rows(shown, res, rng):
                print(f"| {what} {row}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(raw, indent=1))


if __name__ == "__main__":
    main()
