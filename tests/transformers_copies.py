"""Copies of the installed transformers as `tfbench ab` sources: every file linked, not copied (a
copy costs under a second), with an optional slowdown planted in Llama's forward.

Used by the ab tests and by benchmarks/verdicts.py (A/A through ab, and a planted slowdown).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import transformers

# Appended to the copy's modeling_llama.py: every forward (prefill and each decode step) waits
# this long first, as a slower code path would.
SLOWDOWN = """

import time as _planted_time

_planted_forward = LlamaForCausalLM.forward


def _slower_forward(self, *args, **kwargs):
    _planted_time.sleep({delay!r})
    return _planted_forward(self, *args, **kwargs)


LlamaForCausalLM.forward = _slower_forward
"""


def transformers_copy(dest: Path, delay_s: float | None = None, wheel_version: str | None = None) -> Path:
    """dest/transformers: the installed package, file by file as links; dest is the source to name.

    delay_s: plant a sleep of that many seconds in every Llama forward. wheel_version: add the
    metadata directory an unpacked wheel has.
    """
    src = Path(transformers.__file__).parent
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(
        src, dest / "transformers", copy_function=os.symlink, ignore=shutil.ignore_patterns("__pycache__")
    )
    if delay_s is not None:
        target = dest / "transformers" / "models" / "llama" / "modeling_llama.py"
        text = (src / "models" / "llama" / "modeling_llama.py").read_text(encoding="utf-8")
        target.unlink()
        target.write_text(text + SLOWDOWN.format(delay=delay_s), encoding="utf-8")
    if wheel_version is not None:
        info = dest / f"transformers-{wheel_version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Name: transformers\nVersion: {wheel_version}\n", encoding="utf-8")
    return dest
