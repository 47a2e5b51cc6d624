"""Clocks for one generate call: e2e on the host around synchronization, per-token times on the device.

A token clock is marked once per generated token from inside generate (a logits processor,
which runs on the host as the step is enqueued). On the CPU the mark is the host clock. On CUDA
it records a device event, which costs no host synchronization; the events are read after the
call. Both give token times in seconds from the start of the call.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol


class Event(Protocol):
    def record(self) -> None: ...
    def elapsed_time(self, end: Any) -> float: ...  # milliseconds, as torch.cuda.Event


class HostClock:
    """perf_counter marks; sync() is a no-op on the CPU, where work is done when the call returns."""

    def __init__(self, synchronize: Callable[[], None] = lambda: None):
        self._sync = synchronize
        self._marks: list[float] = []
        self.t0 = self.t1 = 0.0
        # The call's duration by the device's own clock (EventClock); None on the host clock.
        self.device_e2e: float | None = None

    def start(self) -> None:
        self._marks.clear()
        self._sync()
        self.t0 = time.perf_counter()

    def mark(self) -> None:
        self._marks.append(time.perf_counter())

    def stop(self) -> float:
        self._sync()
        self.t1 = time.perf_counter()
        return self.t1 - self.t0

    def token_times(self) -> list[float]:
        return [m - self.t0 for m in self._marks]


class EventClock(HostClock):
    """Device-event marks: e2e stays on the host clock around a synchronize; token times come from events.

    `make_event` builds a timing event (torch.cuda.Event(enable_timing=True) on CUDA); events are
    created before the call so that marking costs one record() and nothing else.
    """

    def __init__(self, make_event: Callable[[], Event], synchronize: Callable[[], None], capacity: int):
        super().__init__(synchronize)
        self._make_event = make_event
        self._start = make_event()
        self._end = make_event()
        self._events = [make_event() for _ in range(capacity)]
        self._used = 0

    def start(self) -> None:
        self._used = 0
        super().start()
        self._start.record()

    def stop(self) -> float:
        # An end event too, so that the device's clock can be checked against the host's.
        self._end.record()
        e2e = super().stop()
        self.device_e2e = self._start.elapsed_time(self._end) / 1000.0
        return e2e

    def mark(self) -> None:
        if self._used == len(self._events):
            self._events.append(self._make_event())
        self._events[self._used].record()
        self._used += 1

    def token_times(self) -> list[float]:
        # Valid after stop(): the synchronize there guarantees every event has completed.
        return [self._start.elapsed_time(ev) / 1000.0 for ev in self._events[: self._used]]


def make_clock(device: str, capacity: int) -> HostClock:
    if device == "cuda":
        import torch

        return EventClock(lambda: torch.cuda.Event(enable_timing=True), torch.cuda.synchronize, capacity)
    return HostClock()
