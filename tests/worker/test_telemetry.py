"""The GPU telemetry sampler (bench/worker/telemetry.py and nvml.py), against a fake NVML and the
real pynvml of this machine.

The sampler reads NVML in a process of its own, which loads the fake of tests/fake_nvml.py by name;
the worker side (this process) loads its own copy for the energy counter at marks. A test describes
the fake once (FakeSetup) and both copies follow it; what the sampler process called comes back
through a file its copy writes at shutdown.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from bench.worker.energy import energy_between, energy_per_run, joules_per_token, run_labels
from bench.worker.nvml import Unavailable, resolve_devices
from bench.worker.telemetry import Sampler, decode_clock_reasons, sampler_for_device
from tests.fake_nvml import MIGS, NO_TEMPERATURE, UUIDS, FakeNVML, FakeSetup

(MIG,) = MIGS


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """fake(**settings): a FakeSetup (see tests/fake_nvml.py) for this test."""

    def make(**kwargs: Any) -> FakeSetup:
        return FakeSetup(monkeypatch, tmp_path, **kwargs)

    return make


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


def test_sampler_samples_at_the_interval(fake) -> None:
    setup = fake(n=1)
    out = run_for(Sampler([0], interval_s=0.01, nvml=setup.spec), 0.3)
    assert out["available"] and out["mode"] == "process"
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
    assert out["overhead"]["sweep_us_mean"] > 0 and out["overhead"]["sampler_cpu_s"] >= 0
    # nvmlShutdown balanced nvmlInit, in the worker and in the sampler process.
    assert setup.worker_copy().inits == 0 and setup.sampler_inits() == 0
    assert setup.sampler_calls()[("nvmlDeviceGetPowerUsage", 0)] == out["n_samples"]
    json.dumps(out, allow_nan=False)  # the summary goes into a result file as it is


def test_stop_wakes_the_sampler_process_promptly(fake) -> None:
    s = Sampler([0], interval_s=10.0, nvml=fake(n=1).spec).start()
    assert s.available, s.reason
    t0 = time.perf_counter()
    out = s.stop()
    assert time.perf_counter() - t0 < 1.0
    assert out["n_samples"] == 2  # the one at start and the one at stop
    assert s.stop() is out  # idempotent


def test_energy_between_marks_comes_from_the_counter(fake) -> None:
    setup = fake(n=2)
    s = Sampler([0, 1], interval_s=0.5, nvml=setup.spec).start()
    assert s.available, s.reason
    worker = setup.worker_copy()  # the marks read the worker's own counters
    for i in range(3):
        with s.around_run(i):
            worker.energy[0] += 100_000 * (i + 1)  # 100, 200, 300 J on GPU 0
            worker.energy[1] += 50_000 * (i + 1)  # 50, 100, 150 J on GPU 1
        worker.energy[0] += 7_000  # between runs: 7 J on GPU 0, not part of any run
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


def test_unsupported_metrics_are_null_and_read_once(fake) -> None:
    energy_and_temp = {"nvmlDeviceGetTotalEnergyConsumption", *NO_TEMPERATURE}
    setup = fake(n=2, unsupported={1: energy_and_temp})
    s = Sampler([0, 1], interval_s=0.01, nvml=setup.spec).start()
    assert s.available, s.reason
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
    # Tried once (each temperature function once), never again however many samples and marks:
    # the sampler process by its first sample, the worker by its reading at start.
    calls = setup.sampler_calls()
    assert calls[("nvmlDeviceGetTemperature", 1)] == 1
    assert calls[("nvmlDeviceGetTemperatureV", 1)] == 1
    assert calls[("nvmlDeviceGetTotalEnergyConsumption", 1)] == 1
    assert setup.worker_copy().calls[("nvmlDeviceGetTotalEnergyConsumption", 1)] == 1
    assert calls[("nvmlDeviceGetTemperature", 0)] == out["n_samples"]
    # GPU 1 has no counter: its energy is the power integral (constant 150 W, so exact).
    assert d1["energy_source"] == "power_integral"
    assert d1["energy_j_total"] == pytest.approx(150.0 * out["duration_s"], rel=1e-6)
    run0 = energy_between(out["marks"], "run_0_start", "run_0_end")
    assert run0["source"] == "mixed" and run0["devices"][0] == 0.0
    assert run0["devices"][1] == pytest.approx(150.0 * run0["seconds"], rel=1e-6)
    assert energy_per_run(out, 2)[1] == pytest.approx(
        150.0 * energy_between(out["marks"], *run_labels(1))["seconds"]
    )
    json.dumps(out, allow_nan=False)


def test_clock_event_reasons_fall_back_to_throttle_reasons(fake) -> None:
    setup = fake(
        n=2,
        reasons=(0x8, 0x40),
        unsupported={0: {"nvmlDeviceGetCurrentClocksEventReasons"}},
        missing={"nvmlDeviceGetCurrentClocksEventReasons"},  # an older binding
    )
    out = run_for(Sampler([0, 1], interval_s=0.01, nvml=setup.spec), 0.05)
    for dev in out["devices"]:
        assert dev["throttle_reasons_seen"] == ["hw_slowdown", "hw_thermal_slowdown"]
        assert "clock_event_reasons" not in dev["unsupported"]
    assert setup.sampler_calls()[("nvmlDeviceGetCurrentClocksThrottleReasons", 0)] == out["n_samples"]


def test_transient_errors_null_one_value_and_are_counted(fake) -> None:
    setup = fake(n=1, flaky={"nvmlDeviceGetPowerUsage"})
    out = run_for(Sampler([0], interval_s=0.01, nvml=setup.spec), 0.1)
    dev = out["devices"][0]
    assert dev["errors"]["power"] == out["n_samples"] // 3
    assert dev["metrics"]["power_w"]["n"] == out["n_samples"] - out["n_samples"] // 3
    assert "power" not in dev["unsupported"]


def test_keep_samples(fake) -> None:
    out = run_for(Sampler([0], interval_s=0.01, nvml=fake(n=1).spec, keep_samples=True), 0.05)
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
        (None, [MIG], [1]),  # a MIG instance: its parent GPU
        (f"{MIG},0", [0, 1], [1, 0]),
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
        (None, ["MIG-ffff"], "no GPU with UUID 'MIG-ffff'"),
        ("MIG-ffff,0", [0], "leaves 0 GPU(s)"),
    ],
)
def test_devices_not_found(cvd: str | None, devices: list[Any], message: str) -> None:
    environ = {} if cvd is None else {"CUDA_VISIBLE_DEVICES": cvd}
    with pytest.raises(Unavailable, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve_devices(FakeNVML(n=4), devices, environ)


def test_sampler_samples_the_gpu_cuda_visible_devices_names(fake) -> None:
    setup = fake(n=4)
    out = run_for(Sampler([0], interval_s=0.01, nvml=setup.spec, environ={"CUDA_VISIBLE_DEVICES": "2"}), 0.03)
    assert out["devices"][0]["index"] == 2 and out["devices"][0]["uuid"] == UUIDS[2]
    assert out["devices"][0]["requested"] == 0
    calls = setup.sampler_calls()
    assert calls[("nvmlDeviceGetPowerUsage", 2)] == out["n_samples"]
    assert calls[("nvmlDeviceGetPowerUsage", 0)] == 0


def test_mixed_gpu_models_warn_about_cuda_order() -> None:
    fake = FakeNVML(n=2, names=["NVIDIA H100", "NVIDIA A10"])
    _, warnings = resolve_devices(fake, [0], {})
    assert warnings and "CUDA_DEVICE_ORDER" in warnings[0]
    assert resolve_devices(fake, [0], {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"})[1] == []
    assert resolve_devices(fake, [UUIDS[1]], {})[1] == []


# --------------------------------------------------------------------------------------------
# The sampler process: how it is found, fails to start, dies


def test_a_factory_path_builds_the_fake_in_each_process(fake) -> None:
    setup = fake(n=2, unsupported={1: set(NO_TEMPERATURE)})
    s = Sampler([0, 1], interval_s=0.01, nvml=setup.spec).start()
    assert s.available, s.reason
    for i in range(2):
        with s.around_run(i):
            setup.worker_copy().energy[0] += 40_000
            time.sleep(0.05)
    out = s.stop()
    assert out["available"] and out["mode"] == "process"
    assert 5 <= out["n_samples"] <= 40, out["n_samples"]
    d0, d1 = out["devices"]
    assert d0["metrics"]["temperature_c"] is not None
    assert d1["metrics"]["temperature_c"] is None and d1["unsupported"] == {"temperature": "Not Supported"}
    assert d1["metrics"]["power_w"]["mean"] == 150.0
    assert energy_per_run(out, 2) == pytest.approx([40.0, 40.0])
    # The samples are the sampler process's: the worker's copy read only names, UUIDs and counters.
    assert setup.worker_copy().calls[("nvmlDeviceGetPowerUsage", 0)] == 0
    json.dumps(out, allow_nan=False)


def test_the_sampler_process_needs_an_importable_nvml() -> None:
    out = run_for(Sampler([0], nvml=FakeNVML(n=1)), 0)
    assert out == {
        "available": False,
        "reason": "the sampler process needs nvml as an importable module or a 'pkg.mod:attr' path",
    }


def test_a_sampler_process_that_fails_to_start_leaves_a_reason(fake) -> None:
    setup = fake(n=1, sampler_init_error="NVMLError_DriverNotLoaded")
    s = Sampler([0], interval_s=0.01, nvml=setup.spec).start()
    assert not s.available
    with s.around_run(0):
        setup.worker_copy().energy[0] += 1_000
    out = s.stop()
    assert out == {
        "available": False,
        "reason": "the sampler process did not start: NVMLError_DriverNotLoaded: Driver Not Loaded",
    }
    assert setup.worker_copy().inits == 0  # the worker shut its NVML down again
    assert energy_per_run(out, 1) == [None]


def test_the_counter_energy_survives_the_sampler_process_dying(fake) -> None:
    setup = fake(n=2, sampler_dies_at_power_read=2)  # its first sample is the last
    s = Sampler([0, 1], interval_s=0.01, nvml=setup.spec).start()
    assert s.available, s.reason
    with s.around_run(0):
        setup.worker_copy().energy[1] += 12_500
    time.sleep(0.05)
    out = s.stop()
    assert out["available"] and out["n_samples"] == 0
    assert "the sampler process ended without samples (exit code 9)" in out["warnings"]
    assert energy_per_run(out, 1) == pytest.approx([12.5])
    assert out["devices"][1]["metrics"]["power_w"] is None
    json.dumps(out, allow_nan=False)


# --------------------------------------------------------------------------------------------
# Degrading without a GPU


@pytest.mark.parametrize(
    ("devices", "settings", "reason"),
    [
        ("cpu", None, "the cell runs on the CPU (no GPU to sample)"),
        ([0], "tfbench_no_such_nvml_module", "tfbench_no_such_nvml_module could not be imported"),
        (
            [0],
            {"init_error": "NVMLError_DriverNotLoaded"},
            "NVML could not be initialized: Driver Not Loaded",
        ),
        ([5], {"n": 2}, "CUDA device 5 not found: NVML sees 2 GPU(s)"),
    ],
)
def test_degrades_to_a_no_op_with_a_reason(fake, devices: Any, settings: Any, reason: str) -> None:
    nvml = fake(**settings).spec if isinstance(settings, dict) else settings
    s = Sampler(devices, nvml=nvml).start()
    assert not s.available
    with s.around_run(0):
        pass
    out = s.stop()
    assert out["available"] is False and out["reason"].startswith(reason), out
    assert energy_per_run(out, 2) == [None, None]


def test_sampler_for_device(fake) -> None:
    assert sampler_for_device("cpu").start().stop()["reason"].startswith("the cell runs on the CPU")
    spec = fake(n=2).spec
    out = run_for(sampler_for_device("cuda:1", nvml=spec, interval_s=0.01), 0.02)
    assert out["devices"][0]["index"] == 1
    out = run_for(Sampler(0, nvml=spec, interval_s=0.01), 0.02)  # one device as a bare int
    assert out["devices"][0]["index"] == 0


def test_real_pynvml_never_raises() -> None:
    """Here there is no NVIDIA driver: the sampler says so; on a GPU host it samples GPU 0."""
    s = Sampler([0], interval_s=0.01).start()
    time.sleep(0.03)
    s.mark("x")
    out = s.stop()
    if out["available"]:
        assert out["n_samples"] >= 2 and out["devices"][0]["name"]
    else:
        assert out["reason"].startswith(("NVML could not be initialized", "pynvml could not be imported")), (
            out
        )
