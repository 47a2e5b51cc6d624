"""What a side server says about its environment, and what the plan then assumes there (the side
servers themselves run in tests/test_ab.py and tests/run/test_ab.py)."""

from __future__ import annotations

import json

from bench.plan.matrix import Capabilities
from bench.run.side import probe, side_capabilities


def test_probe_names_the_kernels_its_transformers_asks_for():
    from transformers.utils import import_utils

    facts = json.loads(json.dumps(probe()))  # as it crosses the pipe
    assert facts["kernels_required"] == [import_utils.KERNELS_MIN_VERSION, import_utils.KERNELS_MAX_VERSION]
    assert facts["kernels_version"] == facts["packages"]["kernels"]


def test_a_side_plans_with_its_own_kernels():
    here = Capabilities("cuda", flash_attn=True, kernels=False, offline_kernels_cache="/opt/kernels")
    facts = {
        "flash_attn": False,
        "kernels": True,
        "kernels_version": "0.18.2",
        "kernels_required": ["0.18.2", "0.19.0"],
    }
    there = side_capabilities(here, facts)
    assert (there.flash_attn, there.kernels, there.kernels_version) == (False, True, "0.18.2")
    assert there.kernels_required == ("0.18.2", "0.19.0")
    assert there.offline_kernels_cache == "/opt/kernels"  # the machine's, shared by both sides
    older = side_capabilities(here, {"flash_attn": False, "kernels": False})  # a release naming no range
    assert (older.kernels_version, older.kernels_required) == (None, None)
