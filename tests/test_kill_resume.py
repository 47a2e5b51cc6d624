"""Kill-and-resume: the runner stopped with SIGTERM or SIGKILL at random instants, many times,
restarted each time; the files on disk are whole after every kill, and every finished run holds
every cell exactly once, each measured once to completion (the loop is tests/kill_loop.py;
`make bench` runs a long version of it, benchmarks/kill_loop.py)."""

from __future__ import annotations

import os
import signal

import pytest

from tests.kill_loop import kill_trials

# Trials per signal here (8 in all); `make bench` runs many more (benchmarks/kill_loop.py).
TRIALS = 4


def _seed() -> int | None:
    return int(os.environ["TFBENCH_TEST_SEED"]) if os.environ.get("TFBENCH_TEST_SEED") else None


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_random_kills_then_restarts_yield_every_cell_once(tmp_path, sig):
    outcome = kill_trials(tmp_path, TRIALS, (sig,), seed=_seed())
    context = f"seed={outcome.seed}: {outcome.as_dict()}"
    assert outcome.trials == TRIALS
    assert outcome.runs_completed >= 1 and outcome.cells_checked >= 6, context
    # Most kills really cut a run short, or this test proved little.
    assert outcome.invocations >= TRIALS // 2, context
    if sig == signal.SIGTERM:
        assert outcome.exit_codes[143] >= 3, context
        assert set(outcome.exit_codes) <= {0, 143}, context
        assert outcome.lost_attempts == 0, context  # an orderly stop never costs an attempt
    else:
        assert outcome.exit_codes[-signal.SIGKILL] >= TRIALS - 2, context
