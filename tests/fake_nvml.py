"""A fake pynvml for the GPU telemetry tests, importable by the sampler process.

The fake implements the NVML functions the sampler uses, returns changing values, and can refuse
some of them (NotSupported) on some devices. The sampler loads its NVML by name in two processes:
the worker (for the energy counter at marks, names and UUIDs) and the sampler process (for the
samples). `FakeSetup` describes the fake in the environment, which the sampler process inherits,
and names the factory both load ("tests.fake_nvml:configured"); each process builds its own copy.
The copy of this process is `FakeSetup.worker_copy()`; the sampler process's copy writes the calls
it answered to a file at nvmlShutdown, which `FakeSetup.sampler_calls()` reads.

Simulated GPUs for the runner's GPU pool: TFBENCH_TEST_NVML=tests.fake_nvml:gpus<N> makes the
parent's detect_accelerators see N GPUs (fake UUIDs, one model) and its workers run their cuda
cells on the CPU (bench.config.schema.TEST_NVML_ENV); `simulated(n)` is the same fake in process.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ENV = "TFBENCH_TEST_FAKE_NVML"
SPEC = "tests.fake_nvml:configured"


class FakeNVMLError(Exception):
    value = 999
    text = "Unknown Error"

    def __str__(self) -> str:
        return self.text


class NVMLError_NotSupported(FakeNVMLError):
    value, text = 3, "Not Supported"


class NVMLError_FunctionNotFound(FakeNVMLError):
    value, text = 13, "Function Not Found"


class NVMLError_DriverNotLoaded(FakeNVMLError):
    value, text = 9, "Driver Not Loaded"


class NVMLError_InvalidArgument(FakeNVMLError):
    value, text = 2, "Invalid Argument"


class NVMLError_NotFound(FakeNVMLError):
    value, text = 6, "Not Found"


ERRORS = {cls.__name__: cls for cls in (NVMLError_NotSupported, NVMLError_DriverNotLoaded)}

UUIDS = [
    "GPU-aaaaaaaa-0000-0000-0000-000000000000",
    "GPU-bbbbbbbb-0000-0000-0000-000000000001",
    "GPU-cccccccc-0000-0000-0000-000000000002",
    "GPU-cccccccd-0000-0000-0000-000000000003",
]
# Beyond the first four (whose prefixes the device-resolution tests rely on): distinct, no shared prefix.
UUIDS += [f"GPU-5{h:07x}-0000-0000-0000-{h:012d}" for h in range(len(UUIDS), 16)]
# MIG instances: UUID -> the NVML index of the parent GPU
MIGS = {"MIG-dddddddd-0000-0000-0000-000000000000": 1}
NO_TEMPERATURE = {"nvmlDeviceGetTemperature", "nvmlDeviceGetTemperatureV"}


class FakeNVML:
    NVMLError = FakeNVMLError
    NVMLError_NotSupported = NVMLError_NotSupported
    NVML_CLOCK_SM = 1
    NVML_CLOCK_MEM = 2
    NVML_TEMPERATURE_GPU = 0

    def __init__(
        self,
        n: int = 2,
        unsupported: dict[int, set[str]] | None = None,
        init_error: Exception | None = None,
        reasons: tuple[int, ...] = (0x1, 0x4 | 0x20),
        flaky: set[str] | None = None,
        names: list[str] | None = None,
        missing: set[str] | None = None,
    ):
        self.n = n
        self.unsupported = unsupported or {}
        self.init_error = init_error
        self.reasons = reasons
        self.flaky = flaky or set()
        self.names = names or ["NVIDIA H100 80GB HBM3"] * n
        self.energy = [1_000_000.0 * (i + 1) for i in range(n)]  # mJ; tests move it by hand
        self.power_mw = [300_000 - 150_000 * (i % 2) for i in range(n)]  # constant: 300 W, 150 W
        self.calls: Counter[tuple[str, int]] = Counter()
        self.inits = 0
        self.calls_file: Path | None = None  # where nvmlShutdown writes the calls (sampler process)
        self.die_at_power_read: int | None = None  # the sampler process exits at this power read
        for name in missing or ():
            setattr(self, name, None)  # an older binding without the function

    def _call(self, fn: str, h: int) -> int:
        self.calls[(fn, h)] += 1
        if fn in self.unsupported.get(h, ()):
            raise NVMLError_NotSupported()
        k = self.calls[(fn, h)]
        if fn in self.flaky and k % 3 == 0:
            raise FakeNVMLError()
        return k

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise self.init_error
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self.inits -= 1
        if self.calls_file is not None:
            calls = [[fn, h, k] for (fn, h), k in self.calls.items()]
            self.calls_file.write_text(json.dumps({"calls": calls, "inits": self.inits}))

    def nvmlSystemGetDriverVersion(self) -> str:
        return "550.54.15"

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return 12040

    def nvmlDeviceGetCount(self) -> int:
        return self.n

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        if not 0 <= i < self.n:
            raise NVMLError_InvalidArgument()
        return i

    def nvmlDeviceGetUUID(self, h: int) -> str:
        return UUIDS[h]

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> Any:
        if uuid in MIGS:
            return ("mig", MIGS[uuid])
        raise NVMLError_NotFound()

    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, h: Any) -> int:
        if not isinstance(h, tuple):
            raise NVMLError_InvalidArgument()
        return h[1]

    def nvmlDeviceGetIndex(self, h: int) -> int:
        return h

    def nvmlDeviceGetName(self, h: int) -> bytes:
        return self.names[h].encode()  # old pynvml returned bytes

    def nvmlDeviceGetUtilizationRates(self, h: int) -> Any:
        k = self._call("nvmlDeviceGetUtilizationRates", h)
        return SimpleNamespace(gpu=(k * 10) % 101, memory=40 + k % 5)

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:
        k = self._call("nvmlDeviceGetMemoryInfo", h)
        return SimpleNamespace(total=80 << 30, used=(1 << 30) + k, free=0)

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        k = self._call("nvmlDeviceGetPowerUsage", h)
        if k == self.die_at_power_read:
            os._exit(9)
        return self.power_mw[h]

    def nvmlDeviceGetTotalEnergyConsumption(self, h: int) -> float:
        self._call("nvmlDeviceGetTotalEnergyConsumption", h)
        return self.energy[h]

    def nvmlDeviceGetClockInfo(self, h: int, kind: int) -> int:
        k = self._call(f"nvmlDeviceGetClockInfo[{kind}]", h)
        return (1980 - k % 3) if kind == self.NVML_CLOCK_SM else 2619

    def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> int:
        k = self._call("nvmlDeviceGetTemperature", h)
        return 60 + k % 5

    def nvmlDeviceGetTemperatureV(self, h: int, sensor: int) -> int:
        k = self._call("nvmlDeviceGetTemperatureV", h)
        return 60 + k % 5

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: int) -> int:
        k = self._call("nvmlDeviceGetCurrentClocksEventReasons", h)
        return self.reasons[k % len(self.reasons)]

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, h: int) -> int:
        k = self._call("nvmlDeviceGetCurrentClocksThrottleReasons", h)
        return self.reasons[k % len(self.reasons)]


# The copies `configured` built in this process, last one last.
BUILT: list[FakeNVML] = []


def configured() -> FakeNVML:
    """The fake the environment describes (see FakeSetup), built anew at each call."""
    cfg = json.loads(os.environ[ENV])
    in_sampler = os.getpid() != cfg["worker_pid"]
    error = cfg.get("sampler_init_error" if in_sampler else "init_error")
    fake = FakeNVML(
        n=cfg["n"],
        unsupported={int(h): set(fns) for h, fns in cfg["unsupported"].items()},
        init_error=ERRORS[error]() if error else None,
        reasons=tuple(cfg["reasons"]),
        flaky=set(cfg["flaky"]),
        names=cfg["names"],
        missing=set(cfg["missing"]),
    )
    if in_sampler:
        fake.calls_file = Path(cfg["calls_dir"]) / f"{os.getpid()}.json"
        fake.die_at_power_read = cfg["sampler_dies_at_power_read"]
    BUILT.append(fake)
    return fake


class FakeSetup:
    """A fake NVML for the worker and its sampler process, described in the environment.

    Keywords as FakeNVML's (unsupported: {device: function names}; missing: function names the
    binding lacks; init_error: the name of the error nvmlInit raises), and, for the sampler
    process only, sampler_init_error and sampler_dies_at_power_read (its k-th power read on
    device 0 exits the process with code 9).
    """

    spec = SPEC

    def __init__(self, monkeypatch: Any, directory: Path, **kwargs: Any):
        n = kwargs.pop("n", 2)
        cfg = {
            "n": n,
            "unsupported": {str(h): sorted(fns) for h, fns in kwargs.pop("unsupported", {}).items()},
            "init_error": kwargs.pop("init_error", None),
            "sampler_init_error": kwargs.pop("sampler_init_error", None),
            "sampler_dies_at_power_read": kwargs.pop("sampler_dies_at_power_read", None),
            "reasons": list(kwargs.pop("reasons", (0x1, 0x4 | 0x20))),
            "flaky": sorted(kwargs.pop("flaky", ())),
            "names": kwargs.pop("names", None) or ["NVIDIA H100 80GB HBM3"] * n,
            "missing": sorted(kwargs.pop("missing", ())),
            "worker_pid": os.getpid(),
            "calls_dir": tempfile.mkdtemp(prefix="fake-nvml-", dir=directory),
        }
        if kwargs:
            raise TypeError(f"unknown fake NVML settings: {sorted(kwargs)}")
        self.calls_dir = Path(cfg["calls_dir"])
        monkeypatch.setenv(ENV, json.dumps(cfg))
        BUILT.clear()

    def worker_copy(self) -> FakeNVML:
        """The copy the sampler built in this process (the one marks read): move its energy here."""
        assert BUILT, "no sampler has loaded the fake in this process yet"
        return BUILT[-1]

    def _sampler_record(self) -> dict[str, Any]:
        (path,) = self.calls_dir.glob("*.json")  # one sampler process per setup
        return json.loads(path.read_text())

    def sampler_calls(self) -> Counter[tuple[str, int]]:
        """The NVML calls the sampler process made, by (function, device)."""
        return Counter({(fn, h): k for fn, h, k in self._sampler_record()["calls"]})

    def sampler_inits(self) -> int:
        """nvmlInit minus nvmlShutdown calls in the sampler process: 0 when it shut NVML down."""
        return int(self._sampler_record()["inits"])


class SimulatedNVML(FakeNVML):
    """The fake as the parent sees it for simulated GPUs, with a NUMA node per GPU when asked."""

    def __init__(self, n: int, numa: list[int] | None = None, **kwargs: Any):
        super().__init__(n=n, **kwargs)
        if numa is None:
            self.nvmlDeviceGetNumaNodeId = None  # type: ignore[assignment] - the machine does not say
        self.numa = numa

    def nvmlDeviceGetNumaNodeId(self, h: int) -> int:  # type: ignore[no-redef]
        assert self.numa is not None
        return self.numa[h]


def simulated(n: int, numa: list[int] | None = None) -> SimulatedNVML:
    return SimulatedNVML(n, numa)


def __getattr__(name: str) -> Any:
    """gpus<N>: a factory of N simulated GPUs, for TFBENCH_TEST_NVML=tests.fake_nvml:gpus<N>."""
    match = re.fullmatch(r"gpus(\d+)", name)
    if match is None:
        raise AttributeError(name)
    return lambda: simulated(int(match.group(1)))
