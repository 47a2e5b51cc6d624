"""Token clocks: the host clock, and the device-event clock driven by a CPU stand-in event."""

from __future__ import annotations

import time

import pytest

from bench.worker.timing import EventClock, HostClock


class StandInEvent:
    """Behaves like torch.cuda.Event(enable_timing=True) with the host clock behind it."""

    records = 0

    def __init__(self) -> None:
        self.t: float | None = None

    def record(self) -> None:
        StandInEvent.records += 1
        self.t = time.perf_counter()

    def elapsed_time(self, end: StandInEvent) -> float:
        assert self.t is not None and end.t is not None, "read before both events completed"
        return (end.t - self.t) * 1000.0  # milliseconds, as CUDA events report


def test_host_clock_times_are_relative_to_start():
    clock = HostClock()
    clock.start()
    time.sleep(0.01)
    clock.mark()
    time.sleep(0.01)
    clock.mark()
    e2e = clock.stop()
    t = clock.token_times()
    assert len(t) == 2
    assert 0.01 <= t[0] < t[1] <= e2e


def test_event_clock_with_stand_in_events():
    syncs = []
    clock = EventClock(StandInEvent, synchronize=lambda: syncs.append(1), capacity=2)
    clock.start()
    for _ in range(3):  # one more than the capacity: the clock grows
        time.sleep(0.005)
        clock.mark()
    e2e = clock.stop()
    times = clock.token_times()
    assert len(times) == 3
    assert all(b > a for a, b in zip(times, times[1:], strict=False))
    assert times[0] >= 0.005 and times[-1] <= e2e
    assert len(syncs) == 2  # once before the start, once after the end: never per token
    # The device's own measure of the call agrees with the host's around the synchronizations.
    assert clock.device_e2e is not None and 0 < clock.device_e2e <= e2e
    assert clock.device_e2e == pytest.approx(e2e, rel=0.05, abs=1e-3)
    assert HostClock().device_e2e is None


def test_event_clock_marks_cost_one_record_each():
    clock = EventClock(StandInEvent, synchronize=lambda: None, capacity=8)
    before = StandInEvent.records
    clock.start()
    for _ in range(5):
        clock.mark()
    clock.stop()
    assert StandInEvent.records - before == 1 + 5 + 1  # start, one per token, end


def test_event_clock_resets_between_runs():
    clock = EventClock(StandInEvent, synchronize=lambda: None, capacity=4)
    for marks in (3, 1):
        clock.start()
        for _ in range(marks):
            clock.mark()
        clock.stop()
        assert len(clock.token_times()) == marks


@pytest.mark.parametrize("clock_factory", [HostClock, lambda: EventClock(StandInEvent, lambda: None, 4)])
def test_identity_holds_for_both_clocks(clock_factory):
    from bench.results.stats import run_metrics

    clock = clock_factory()
    clock.start()
    for _ in range(4):
        time.sleep(0.002)
        clock.mark()
    e2e = clock.stop()
    m = run_metrics(e2e, clock.token_times(), 1, 8)
    assert m["ttft"] + 3 * m["tpot"] == pytest.approx(e2e, rel=1e-12)
