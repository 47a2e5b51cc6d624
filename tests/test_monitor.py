"""The GPU telemetry sampler (bench/monitor.py), against a fake NVML and the real pynvml of this machine.

The fake implements the NVML functions the sampler uses, returns changing values, and can refuse
some of them (NotSupported) on some devices. Process mode gets the fake through a factory path
("tests.test_monitor:make_fake"), which the sampler process imports and calls itself.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from types import SimpleNamespace
from typing import Any

import pytest

from bench.worker import telemetry as monitor
from bench.worker.telemetry import (
    Sampler,
    Unavailable,
    decode_clock_reasons,
    energy_between,
    energy_per_run,
    joules_per_token,
    resolve_devices,
    sampler_for_device,
)

# --------------------------------------------------------------------------------------------
# A fake pynvml


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


UUIDS = [
    "GPU-aaaaaaaa-0000-0000-0000-000000000000",
    "GPU-bbbbbbbb-0000-0000-0000-000000000001",
    "GPU-cccccccc-0000-0000-0000-000000000002",
    "GPU-cccccccd-0000-0000-0000-000000000003",
]


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

    def nvmlDeviceGetCount(self) -> int:
        return self.n

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        if not 0 <= i < self.n:
            raise NVMLError_InvalidArgument()
        return i

    def nvmlDeviceGetUUID(self, h: int) -> str:
        return UUIDS[h]

    def nvmlDeviceGetName(self, h: int) -> bytes:
        return self.names[h].encode()  # old pynvml returned bytes

    def nvmlDeviceGetUtilizationRates(self, h: int) -> Any:
        k = self._call("nvmlDeviceGetUtilizationRates", h)
        return SimpleNamespace(gpu=(k * 10) % 101, memory=40 + k % 5)

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:
        k = self._call("nvmlDeviceGetMemoryInfo", h)
        return SimpleNamespace(total=80 << 30, used=(1 << 30) + k, free=0)

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        self._call("nvmlDeviceGetPowerUsage", h)
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


NO_TEMPERATURE = {"nvmlDeviceGetTemperature", "nvmlDeviceGetTemperatureV"}


def make_fake() -> FakeNVML:
    """The fake the sampler process builds for itself (process mode): GPU 1 has no temperature sensor."""
    return FakeNVML(n=2, unsupported={1: set(NO_TEMPERATURE)})


def run_for(sampler: Sampler, seconds: float) -> dict[str, Any]:
    sampler.start()
    time.sleep(seconds)
    return sampler.stop()


# --------------------------------------------------------------------------------------------


def test_decode_clock_reasons() -> None:
    assert decode_clock_reasons(0) == []
    assert decode_clock_reasons(0x1) == ["gpu_idle"]
    assert decode_clock_reasons(0x4 | 0x20 | 0x100) == [
        "sw_power_cap",
        "sw_thermal_slowdown",
        "display_clock_setting",
    ]
    assert decode_clock_reasons(0x1FF) == [
        "gpu_idle",
        "applications_clocks_setting",
        "sw_power_cap",
        "hw_slowdown",
        "sync_boost",
        "sw_thermal_slowdown",
        "hw_thermal_slowdown",
        "hw_power_brake_slowdown",
        "display_clock_setting",
    ]
    assert decode_clock_reasons(0x201) == ["gpu_idle", "unknown_0x200"]


def test_thread_sampler_samples_at_the_interval() -> None:
    fake = FakeNVML(n=1)
    out = run_for(Sampler([0], interval_s=0.01, nvml=fake), 0.3)
    assert out["available"] and out["mode"] == "thread"
    assert 10 <= out["n_samples"] <= 40, out["n_samples"]  # ~31 expected: first + 29 ticks + last
    assert 0.005 <= out["interval_actual_s"] <= 0.03
    dev = out["devices"][0]
    assert dev["index"] == 0 and dev["uuid"] == UUIDS[0] and dev["name"] == "NVIDIA H100 80GB HBM3"
    m = dev["metrics"]
    assert m["power_w"] == {"n": out["n_samples"], "min": 300.0, "mean": 300.0, "max": 300.0, "p50": 300.0}
    assert m["gpu_util_pct"]["min"] < m["gpu_util_pct"]["max"]  # changing values were recorded
    assert m["sm_clock_mhz"]["max"] == 1980 and m["mem_clock_mhz"]["p50"] == 2619
    assert m["memory_used_bytes"]["min"] > 1 << 30
    assert dev["throttle_reasons_seen"] == ["gpu_idle", "sw_power_cap", "sw_thermal_slowdown"]
    assert abs(dev["throttle_reason_fraction"]["gpu_idle"] - 0.5) < 0.1
    assert dev["unsupported"] == {} and dev["errors"] == {}
    assert out["overhead"]["sweep_us_mean"] > 0
    assert fake.inits == 0  # nvmlShutdown balanced nvmlInit
    json.dumps(out, allow_nan=False)  # the summary goes into a result file as it is


def test_stop_wakes_the_thread_promptly() -> None:
    s = Sampler([0], interval_s=10.0, nvml=FakeNVML(n=1)).start()
    t0 = time.perf_counter()
    out = s.stop()
    assert time.perf_counter() - t0 < 1.0
    assert out["n_samples"] == 2  # the one at start and the one at stop
    assert s.stop() is out  # idempotent


def test_energy_between_marks_comes_from_the_counter() -> None:
    fake = FakeNVML(n=2)
    s = Sampler([0, 1], interval_s=0.5, nvml=fake).start()
    for i in range(3):
        with s.around_run(i):
            fake.energy[0] += 100_000 * (i + 1)  # 100, 200, 300 J on GPU 0
            fake.energy[1] += 50_000 * (i + 1)  # 50, 100, 150 J on GPU 1
        fake.energy[0] += 7_000  # between runs: 7 J on GPU 0, not part of any run
    out = s.stop()
    assert energy_per_run(out, 3) == pytest.approx([150.0, 300.0, 450.0])
    assert joules_per_token(energy_per_run(out, 3), 10) == pytest.approx([15.0, 30.0, 45.0])
    both = energy_between(out["marks"], "run_0_start", "run_1_end")
    assert both["devices"] == pytest.approx([307.0, 150.0]) and both["total_j"] == pytest.approx(457.0)
    assert both["source"] == "counter" and both["seconds"] >= 0
    assert out["devices"][0]["energy_j_total"] == pytest.approx(600.0 + 21.0)
    assert out["devices"][1]["energy_j_total"] == pytest.approx(300.0)
    assert out["energy_j_total"] == pytest.approx(921.0)
    assert [m["label"] for m in out["marks"]][:2] == ["run_0_start", "run_0_end"]
    assert energy_between(out["marks"], "run_0_start", "nope")["total_j"] is None


def test_unsupported_metrics_are_null_and_read_once() -> None:
    energy_and_temp = {"nvmlDeviceGetTotalEnergyConsumption", *NO_TEMPERATURE}
    fake = FakeNVML(n=2, unsupported={1: energy_and_temp})
    s = Sampler([0, 1], interval_s=0.01, nvml=fake).start()
    for i in range(2):
        with s.around_run(i):
            time.sleep(0.05)
    time.sleep(0.05)
    out = s.stop()
    assert out["n_samples"] >= 8
    d0, d1 = out["devices"]
    assert d0["metrics"]["temperature_c"] is not None and d0["energy_source"] == "counter"
    assert d1["metrics"]["temperature_c"] is None
    assert d1["unsupported"] == {"energy": "Not Supported", "temperature": "Not Supported"}
    assert d1["metrics"]["power_w"]["mean"] == 150.0  # the rest of GPU 1 is still sampled
    # Tried once (each temperature function once), never again however many samples and marks.
    assert fake.calls[("nvmlDeviceGetTemperature", 1)] == 1
    assert fake.calls[("nvmlDeviceGetTemperatureV", 1)] == 1
    assert fake.calls[("nvmlDeviceGetTotalEnergyConsumption", 1)] == 2  # the start reading + the first sample
    assert fake.calls[("nvmlDeviceGetTemperature", 0)] == out["n_samples"]
    # GPU 1 has no counter: its energy is the power integral (constant 150 W, so exact).
    assert d1["energy_source"] == "power_integral"
    assert d1["energy_j_total"] == pytest.approx(150.0 * out["duration_s"], rel=1e-6)
    run0 = energy_between(out["marks"], "run_0_start", "run_0_end")
    assert run0["source"] == "mixed" and run0["devices"][0] == 0.0
    assert run0["devices"][1] == pytest.approx(150.0 * run0["seconds"], rel=1e-6)
    assert energy_per_run(out, 2)[1] == pytest.approx(
        150.0 * energy_between(out["marks"], *monitor.run_labels(1))["seconds"]
    )
    json.dumps(out, allow_nan=False)


def test_clock_event_reasons_fall_back_to_throttle_reasons() -> None:
    fake = FakeNVML(n=2, reasons=(0x8, 0x40), unsupported={0: {"nvmlDeviceGetCurrentClocksEventReasons"}})
    fake.nvmlDeviceGetCurrentClocksEventReasons = None  # type: ignore[method-assign]  # an older binding
    out = run_for(Sampler([0, 1], interval_s=0.01, nvml=fake), 0.05)
    for dev in out["devices"]:
        assert dev["throttle_reasons_seen"] == ["hw_slowdown", "hw_thermal_slowdown"]
        assert "clock_event_reasons" not in dev["unsupported"]
    assert fake.calls[("nvmlDeviceGetCurrentClocksThrottleReasons", 0)] == out["n_samples"]


def test_transient_errors_null_one_value_and_are_counted() -> None:
    fake = FakeNVML(n=1, flaky={"nvmlDeviceGetPowerUsage"})
    out = run_for(Sampler([0], interval_s=0.01, nvml=fake), 0.1)
    dev = out["devices"][0]
    assert dev["errors"]["power"] == out["n_samples"] // 3
    assert dev["metrics"]["power_w"]["n"] == out["n_samples"] - out["n_samples"] // 3
    assert "power" not in dev["unsupported"]


def test_keep_samples() -> None:
    out = run_for(Sampler([0], interval_s=0.01, nvml=FakeNVML(n=1), keep_samples=True), 0.05)
    samples = out["samples"]
    assert len(samples["t"]) == out["n_samples"] == len(samples["devices"][0]["power_mw"])
    assert samples["t"] == sorted(samples["t"])


# --------------------------------------------------------------------------------------------
# Which GPU: CUDA ordinals through CUDA_VISIBLE_DEVICES, UUIDs


@pytest.mark.parametrize(
    ("cvd", "devices", "expected"),
    [
        (None, [0, 2], [0, 2]),
        ("2,3", [0, 1], [2, 3]),
        ("3,1", ["cuda:1", "cuda"], [1, 3]),
        ("GPU-bbbbbbbb-0000-0000-0000-000000000001", [0], [1]),
        ("GPU-cccccccd,0", [0, 1], [3, 0]),  # a unique UUID prefix, as CUDA accepts it
        ("3,GPU-nonexistent,1", [0], [3]),  # CUDA stops at the first invalid entry
        (None, ["GPU-cccccccc-0000-0000-0000-000000000002"], [2]),
        (None, ["cccccccd-0000-0000-0000-000000000003"], [3]),  # torch's uuid form
        ("1", [UUIDS[3]], [3]),  # a UUID names the GPU whatever CUDA_VISIBLE_DEVICES says
    ],
)
def test_cuda_visible_devices_mapping(cvd: str | None, devices: list[Any], expected: list[int]) -> None:
    environ = {} if cvd is None else {"CUDA_VISIBLE_DEVICES": cvd}
    resolved, _ = resolve_devices(FakeNVML(n=4), devices, environ)
    assert [i for i, _ in resolved] == expected


@pytest.mark.parametrize(
    ("cvd", "devices", "message"),
    [
        ("2,3", [2], "CUDA device 2 not found: CUDA_VISIBLE_DEVICES='2,3' leaves 2 GPU(s)"),
        ("", [0], "leaves 0 GPU(s)"),
        ("GPU-ccccccc", [0], "leaves 0 GPU(s)"),  # matches both cccccccc... and cccccccd...: ambiguous
        (None, [4], "CUDA device 4 not found: NVML sees 4 GPU(s)"),
        (None, ["GPU-ffff"], "no GPU with UUID 'GPU-ffff'"),
    ],
)
def test_devices_not_found(cvd: str | None, devices: list[Any], message: str) -> None:
    environ = {} if cvd is None else {"CUDA_VISIBLE_DEVICES": cvd}
    with pytest.raises(Unavailable, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve_devices(FakeNVML(n=4), devices, environ)


def test_sampler_samples_the_gpu_cuda_visible_devices_names() -> None:
    fake = FakeNVML(n=4)
    out = run_for(Sampler([0], interval_s=0.01, nvml=fake, environ={"CUDA_VISIBLE_DEVICES": "2"}), 0.03)
    assert out["devices"][0]["index"] == 2 and out["devices"][0]["uuid"] == UUIDS[2]
    assert out["devices"][0]["requested"] == 0
    assert fake.calls[("nvmlDeviceGetPowerUsage", 2)] == out["n_samples"]
    assert fake.calls[("nvmlDeviceGetPowerUsage", 0)] == 0


def test_mixed_gpu_models_warn_about_cuda_order() -> None:
    fake = FakeNVML(n=2, names=["NVIDIA H100", "NVIDIA A10"])
    _, warnings = resolve_devices(fake, [0], {})
    assert warnings and "CUDA_DEVICE_ORDER" in warnings[0]
    assert resolve_devices(fake, [0], {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"})[1] == []
    assert resolve_devices(fake, [UUIDS[1]], {})[1] == []


# --------------------------------------------------------------------------------------------
# Process mode


def test_process_mode_with_a_fake_from_a_factory_path() -> None:
    parent_fake_holder: dict[str, FakeNVML] = {}
    s = Sampler([0, 1], interval_s=0.01, mode="process", nvml="tests.test_monitor:make_fake").start()
    assert s.available, s.reason
    parent_fake_holder["fake"] = s._nv  # the worker's own copy, which marks read
    for i in range(2):
        with s.around_run(i):
            parent_fake_holder["fake"].energy[0] += 40_000
            time.sleep(0.05)
    out = s.stop()
    assert out["available"] and out["mode"] == "process"
    assert 5 <= out["n_samples"] <= 40, out["n_samples"]
    d0, d1 = out["devices"]
    assert d0["metrics"]["temperature_c"] is not None
    assert d1["metrics"]["temperature_c"] is None and d1["unsupported"] == {"temperature": "Not Supported"}
    assert d1["metrics"]["power_w"]["mean"] == 150.0
    assert energy_per_run(out, 2) == pytest.approx([40.0, 40.0])
    assert out["overhead"]["sampler_cpu_s"] >= 0
    json.dumps(out, allow_nan=False)


def test_process_mode_needs_an_importable_nvml() -> None:
    out = run_for(Sampler([0], mode="process", nvml=FakeNVML(n=1)), 0)
    assert out == {
        "available": False,
        "reason": "process mode needs nvml as an importable module or a 'pkg.mod:attr' path",
    }


# --------------------------------------------------------------------------------------------
# Degrading without a GPU


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"devices": "cpu"}, "the cell runs on the CPU (no GPU to sample)"),
        (
            {"devices": [0], "nvml": "tfbench_no_such_nvml_module"},
            "tfbench_no_such_nvml_module could not be imported",
        ),
        (
            {"devices": [0], "nvml": FakeNVML(init_error=NVMLError_DriverNotLoaded())},
            "NVML could not be initialized: Driver Not Loaded",
        ),
        ({"devices": [5], "nvml": FakeNVML(n=2)}, "CUDA device 5 not found: NVML sees 2 GPU(s)"),
    ],
)
def test_degrades_to_a_no_op_with_a_reason(kwargs: dict[str, Any], reason: str) -> None:
    s = Sampler(**kwargs).start()
    assert not s.available
    with s.around_run(0):
        pass
    out = s.stop()
    assert out["available"] is False and out["reason"].startswith(reason), out
    assert energy_per_run(out, 2) == [None, None]


def test_sampler_for_device() -> None:
    assert sampler_for_device("cpu").start().stop()["reason"].startswith("the cell runs on the CPU")
    out = run_for(sampler_for_device("cuda:1", nvml=FakeNVML(n=2), interval_s=0.01), 0.02)
    assert out["devices"][0]["index"] == 1
    out = run_for(Sampler(0, nvml=FakeNVML(n=2), interval_s=0.01), 0.02)  # one device as a bare int
    assert out["devices"][0]["index"] == 0


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_real_pynvml_never_raises(mode: str) -> None:
    """Here there is no NVIDIA driver: the sampler says so; on a GPU host it samples GPU 0."""
    s = Sampler([0], interval_s=0.01, mode=mode).start()
    time.sleep(0.03)
    s.mark("x")
    out = s.stop()
    if out["available"]:
        assert out["n_samples"] >= 2 and out["devices"][0]["name"]
    else:
        assert out["reason"].startswith(("NVML could not be initialized", "pynvml could not be imported")), (
            out
        )


def test_process_mode_keeps_the_counter_energy_when_the_sampler_process_dies() -> None:
    s = Sampler([0, 1], interval_s=0.01, mode="process", nvml="tests.test_monitor:make_fake").start()
    assert s.available, s.reason
    with s.around_run(0):
        s._nv.energy[1] += 12_500
    assert s._proc is not None
    s._proc.kill()
    s._proc.wait()
    out = s.stop()
    assert out["available"] and out["n_samples"] == 0
    assert any("ended without samples" in w for w in out["warnings"])
    assert energy_per_run(out, 1) == pytest.approx([12.5])
    assert out["devices"][1]["metrics"]["power_w"] is None
    json.dumps(out, allow_nan=False)
