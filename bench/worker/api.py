"""What the measured transformers offers a cell.

The code under test may be any recent transformers release or checkout (`transformers_source`,
`tfbench ab`), not only the one the image pins. Each cell asks for APIs that came and went
across releases: continuous batching and its config's options, CompileConfig's options, the
attention implementations. A cell whose API is missing is skipped with the reason, never crashed;
an option that was only renamed is translated, and the record says so.
"""

from __future__ import annotations

import importlib.metadata
import inspect
from typing import Any

import transformers

from bench.config.schema import hub_kernel

# ContinuousBatchingConfig options under their older names (5.17 calls page_size block_size: the
# same field, tokens per cache page).
RENAMED_CB_OPTIONS = {"page_size": "block_size"}
# Options that only steer a behaviour newer releases added: without the option there is nothing
# to steer (auto_switch_to_flash keeps newer releases from replacing the attention asked for).
OPTIONAL_CB_OPTIONS = ("auto_switch_to_flash",)


def version() -> str:
    return str(getattr(transformers, "__version__", "unknown"))


def parameters(obj: Any) -> set[str]:
    try:
        return set(inspect.signature(obj).parameters)
    except (TypeError, ValueError):
        return set()


def attention_names() -> set[str]:
    """The attention implementations this transformers registers (eager is built in)."""
    try:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    except ImportError:
        return {"eager"}
    mapping = getattr(ALL_ATTENTION_FUNCTIONS, "_global_mapping", None)
    names = set(mapping) if isinstance(mapping, dict) else set(ALL_ATTENTION_FUNCTIONS)
    return names | {"eager"}


def missing(cell: dict[str, Any]) -> str | None:
    """Why this transformers cannot run the cell (the first API it lacks), or None."""
    have = f"transformers {version()}"
    if cell["continuous_batching"]:
        if not hasattr(transformers, "ContinuousBatchingConfig"):
            return f"{have} has no ContinuousBatchingConfig (continuous batching needs it)"
        try:
            from transformers.generation.continuous_batching import ContinuousMixin
        except ImportError:
            ContinuousMixin = None  # noqa: N806 - a class, when it exists
        if ContinuousMixin is None or not hasattr(ContinuousMixin, "init_continuous_batching"):
            return f"{have} has no init_continuous_batching (continuous batching needs it)"
    if cell["compile"]:
        if not hasattr(transformers, "CompileConfig"):
            return f"{have} has no CompileConfig (compiled cells need it)"
        lacking = {"mode", "fullgraph", "dynamic"} - parameters(transformers.CompileConfig)
        if lacking:
            return f"{have}: CompileConfig has no option {', '.join(sorted(lacking))}"
    if hub_kernel(cell["attn_implementation"]) is not None:
        return missing_hub_kernels(cell["attn_implementation"])
    names, accepted = attention_names(), expected_attn(cell)
    if not accepted & names:
        wanted = " or ".join(repr(a) for a in sorted(accepted))
        return f"{have} has no attention implementation {wanted} (it has {', '.join(sorted(names))})"
    return None


def missing_hub_kernels(attn: str) -> str | None:
    """Why this transformers cannot load the hub kernel `attn`: it does not read the name as one,
    or the installed kernels is outside the versions it asks for (it would raise at load)."""
    have = f"transformers {version()}"
    try:
        from transformers.integrations.hub_kernels import is_kernel
        from transformers.utils import import_utils
    except ImportError:
        return f"{have} cannot load attention kernels from the Hub (no integrations.hub_kernels.is_kernel)"
    if not is_kernel(attn):
        return f"{have} does not read {attn!r} as a hub kernel"
    available = getattr(import_utils, "is_kernels_available", None)
    if callable(available) and not available():
        low = getattr(import_utils, "KERNELS_MIN_VERSION", "?")
        high = getattr(import_utils, "KERNELS_MAX_VERSION", "?")
        try:
            installed = f"kernels {importlib.metadata.version('kernels')} is installed"
        except importlib.metadata.PackageNotFoundError:
            installed = "kernels is not installed"
        return f"{have} loads hub kernels only with kernels >= {low}, < {high}, and {installed}"
    return None


def expected_attn(cell: dict[str, Any]) -> set[str]:
    """The attention implementations that are the one the cell asked for. A hub kernel is its name
    as given: transformers registers the kernel under it and sets the config to it; a model that
    swaps in another kernel (its _compatible_flash_implementations) shows that other name."""
    attn = cell["attn_implementation"]
    if not cell["continuous_batching"]:
        return {attn}
    # Continuous batching runs the paged variant of an attention (eager always; sdpa in releases
    # before 5.18 too): the same kernel over a paged cache, not another attention.
    return {f"paged|{attn}"} if attn == "eager" else {attn, f"paged|{attn}"}


def continuous_batching_options(wanted: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The options for this release's ContinuousBatchingConfig, and what was translated or dropped."""
    accepted = parameters(transformers.ContinuousBatchingConfig)
    out: dict[str, Any] = {}
    notes: list[str] = []
    for key, value in wanted.items():
        if key in accepted:
            out[key] = value
        elif key in RENAMED_CB_OPTIONS and RENAMED_CB_OPTIONS[key] in accepted:
            out[RENAMED_CB_OPTIONS[key]] = value
            notes.append(f"{key} passed as {RENAMED_CB_OPTIONS[key]} (its name in transformers {version()})")
        elif key in OPTIONAL_CB_OPTIONS:
            notes.append(f"{key} dropped: transformers {version()} has no such option")
        else:
            raise TypeError(f"transformers {version()}: ContinuousBatchingConfig has no option {key!r}")
    return out, notes
