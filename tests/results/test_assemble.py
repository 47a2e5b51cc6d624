"""A cell put together from its processes: the output and profile are the last process's."""

from __future__ import annotations

from bench.results.assemble import add_process, finish


def test_output_and_profile_come_from_the_last_process():
    first = {"runs": [{"e2e_latency": 1.0}], "output": {"n": 1, "sha256": "a"}, "profile": None}
    last = {"runs": [{"e2e_latency": 1.1}], "output": {"n": 1, "sha256": "b"}, "profile": {"available": True}}
    cell = finish(add_process(add_process({}, 0, first, {}), 1, last, {}))
    assert cell["output"] == {"n": 1, "sha256": "b"} and cell["profile"] == {"available": True}
    alone = finish(add_process({}, 0, first, {}))
    assert alone["output"]["sha256"] == "a" and "profile" not in alone  # None: not profiled
