"""The plan: a config expanded into cells, each with a stable id, runnable or skipped with a reason.

Pure functions of the config and the machine's capabilities; no torch import. A combination
that cannot run stays in the plan as skipped, never rewritten into another one.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from typing import Any

from packaging.version import InvalidVersion, Version

from bench.config.presets import preset_for
from bench.config.schema import ATTN_IMPLEMENTATIONS, COMPILE_MODES, BenchConfig, HubKernel, hub_kernel

# The packages transformers quantizes with, per method prefix (its quantizers' validate_environment:
# TorchAoHfQuantizer needs torchao; Bnb4BitHfQuantizer and Bnb8BitHfQuantizer need accelerate and
# bitsandbytes), each at least at the *_MIN_VERSION of transformers' utils/import_utils.py.
QUANTIZATION_PACKAGES = {"torchao": ("torchao",), "bnb": ("accelerate", "bitsandbytes")}

# Bump only if the meaning of a cell changes; ids must stay stable across releases otherwise.
CELL_ID_VERSION = 1
CB_COMPILE_MODES = (None, "default", "max-autotune-no-cudagraphs")

# attn_implementation, compile mode, kernelize, continuous batching
Combo = tuple[str, str | None, bool, bool]


def coverage_combos(level: int) -> list[Combo]:
    """The (attn, compile, kernelize, continuous batching) combinations of a coverage level.

    Follows transformers' benchmark_v2 levels with one meaning of "compiled": mode "default"
    at every level, and level 0 uncompiled as documented.
    """
    if level >= 3:
        modes: list[str | None] = [None, "default"] if level == 3 else [None, *COMPILE_MODES]
        return list(itertools.product(ATTN_IMPLEMENTATIONS, modes, (False, True), (False, True)))
    combos: list[Combo] = [("flex_attention", None, False, False)]
    if level >= 1:
        combos += [
            ("flash_attention_2", None, False, False),
            ("eager", "default", False, False),
            ("flash_attention_2", None, False, True),
        ]
    if level >= 2:
        combos += [
            ("sdpa", "default", False, False),
            ("flex_attention", "default", True, False),
            ("flash_attention_2", None, True, False),
            ("sdpa", None, False, True),
        ]
    return combos


@dataclass(frozen=True)
class Capabilities:
    """What the machine offers, as seen by the parent (device already resolved from 'auto')."""

    device: str  # "cuda" or "cpu"
    flash_attn: bool
    kernels: bool
    # What a hub kernel (attn_implementation ORG/NAME[@REVISION]) needs besides a GPU: the kernels
    # package's installed version, and the range the measured transformers asks for ((min, max),
    # min included; None where it names none, or where this is not known).
    kernels_version: str | None = None
    kernels_required: tuple[str, str] | None = None
    # While HF_HUB_OFFLINE is set, kernels looks only in its cache: that directory, and what it
    # can load from there: ORG/NAME@REVISION for every ref and commit with a build, ORG/NAME alone
    # for a repo LOCAL_KERNELS maps to a directory (any revision). None: online, where a kernel
    # missing from the cache is downloaded when a worker loads it.
    offline_kernels_cache: str | None = None
    cached_hub_kernels: frozenset[str] = frozenset()
    # Quantization: the installed version of each package of QUANTIZATION_PACKAGES (None: not
    # installed), and the minimum versions the measured transformers asks for (where known).
    quantization_packages: dict[str, str | None] = field(default_factory=dict)
    quantization_minimums: dict[str, str] = field(default_factory=dict)
    # For tensor-parallel cells: the GPUs this process may use (CUDA_VISIBLE_DEVICES applied, read
    # through NVML by the parent) and the CPUs it may run on (None: unknown).
    gpu_count: int = 0
    cpu_count: int | None = None


@dataclass(frozen=True, kw_only=True)
class Cell:
    """One cell of the matrix: what defines its measurement (hashed into cell_id) and its name.

    Also the `cell` of every record (bench.results.records.CellRecord): the optional fields have
    defaults so that records written by other tools or versions without them still read."""

    index: int = 0
    cell_id: str = ""
    name: str
    model: str
    revision: str | None = None
    model_config: dict[str, Any] = field(default_factory=dict)
    dtype: str
    device: str
    attn_implementation: str
    compile: str | None = None
    compile_fullgraph: bool = False
    compile_dynamic: bool | None = None
    kernelize: bool = False
    continuous_batching: bool = False
    # "none", or how the weights are quantized (bench.config.schema.QUANTIZATIONS); hashed into
    # cell_id only when not "none", so that the ids of unquantized cells stay what they were.
    quantization: str = "none"
    batch_size: int
    sequence_length: int
    num_tokens_to_generate: int
    tp_size: int = 1
    skip_reason: str | None = None

    @property
    def runnable(self) -> bool:
        return self.skip_reason is None

    @property
    def gpus_needed(self) -> int:
        """GPUs the cell holds while it runs: one per rank on cuda, none on the CPU."""
        return self.tp_size if self.device == "cuda" else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "cell_id": self.cell_id,
            "name": self.name,
            "model": self.model,
            "revision": self.revision,
            "model_config": self.model_config,
            "dtype": self.dtype,
            "device": self.device,
            "attn_implementation": self.attn_implementation,
            "compile": self.compile,
            "compile_fullgraph": self.compile_fullgraph,
            "compile_dynamic": self.compile_dynamic,
            "kernelize": self.kernelize,
            "continuous_batching": self.continuous_batching,
            "quantization": self.quantization,
            "batch_size": self.batch_size,
            "sequence_length": self.sequence_length,
            "num_tokens_to_generate": self.num_tokens_to_generate,
            # Only above 1: a cell without tensor parallelism reads as it did before the field.
            **({"tp_size": self.tp_size} if self.tp_size > 1 else {}),
            "skip_reason": self.skip_reason,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Cell:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass(frozen=True)
class Plan:
    cells: list[Cell]
    capabilities: Capabilities
    warnings: list[str] = field(default_factory=list)

    @property
    def runnable(self) -> list[Cell]:
        return [c for c in self.cells if c.runnable]

    @property
    def skipped(self) -> list[Cell]:
        return [c for c in self.cells if not c.runnable]

    def to_dict(self) -> dict[str, Any]:
        return {
            "capabilities": {
                "device": self.capabilities.device,
                "flash_attn": self.capabilities.flash_attn,
                "kernels": self.capabilities.kernels,
                "kernels_version": self.capabilities.kernels_version,
                "kernels_required": self.capabilities.kernels_required,
                "offline_kernels_cache": self.capabilities.offline_kernels_cache,
                "quantization_packages": self.capabilities.quantization_packages,
                "quantization_minimums": self.capabilities.quantization_minimums,
                "gpu_count": self.capabilities.gpu_count,
                "cpu_count": self.capabilities.cpu_count,
            },
            "cells": [c.to_dict() for c in self.cells],
            "warnings": self.warnings,
        }


def resolve_dtype(dtype: str, device: str) -> str:
    if dtype != "auto":
        return dtype
    return "bfloat16" if device == "cuda" else "float32"


def cell_id(defining: dict[str, Any]) -> str:
    """A hash of what defines the measurement: the same cell gets the same id on any run and machine."""
    blob = json.dumps({"v": CELL_ID_VERSION, **defining}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def combo_name(attn: str, mode: str | None, kernelize: bool, cb: bool) -> str:
    """How a combination reads: 'eager, no compile', 'sdpa, compile default, kernels, cb'."""
    parts = [attn, f"compile {mode}" if mode else "no compile"]
    if kernelize:
        parts.append("kernels")
    if cb:
        parts.append("cb")
    return ", ".join(parts)


def cell_name(
    attn: str,
    mode: str | None,
    kernelize: bool,
    cb: bool,
    b: int,
    s: int,
    n: int,
    quantization: str = "none",
    tp: int = 1,
) -> str:
    """A cell as people read it: 'sdpa, compile default, b4 s256 n32', with the quantization
    before the shape when there is one ('sdpa, no compile, bnb-4bit, b1 s128 n128') and ', tp2'
    after it under tensor parallelism. Not part of the cell id (cell_id hashes the fields
    themselves), so the wording can change without changing an id."""
    quantized = f", {quantization}" if quantization != "none" else ""
    tp_part = f", tp{tp}" if tp > 1 else ""
    return f"{combo_name(attn, mode, kernelize, cb)}{quantized}, b{b} s{s} n{n}{tp_part}"


# Why kernelize is not measured under tensor parallelism (the worker says the same).
TP_KERNELIZE = (
    "kernelize with tp_size > 1 is not measured: transformers' kernel mapping "
    "(integrations/hub_kernels.py) knows nothing of its tensor-parallel hooks, and the pair is untried"
)


def tp_skip_reason(
    tp: int,
    model: str,
    model_config: dict[str, Any],
    caps: Capabilities,
    kernelize: bool = False,
    quantization: str = "none",
) -> str | None:
    """Why a cell cannot run with tp ranks here, or None. A hub or local model's tp plan and
    heads are unknown to the parent (it reads no model config): its worker checks them."""
    if tp == 1:
        return None
    if kernelize:
        return TP_KERNELIZE
    if quantization != "none":
        # transformers' tp plans shard plain Linear weights; a quantized weight is a tensor
        # subclass (torchao) or a packed Params4bit/Int8Params (bitsandbytes), and the pair is untried.
        return f"{quantization} with tp_size > 1 is not measured: the pair is untried"
    if caps.device == "cuda" and tp > caps.gpu_count:
        return f"tp_size {tp} needs {tp} GPUs, and {caps.gpu_count} are visible"
    # On the CPU each gloo rank computes on cores of its own; more ranks than cores would measure
    # the ranks waiting for one another, not tensor parallelism.
    if caps.device == "cpu" and caps.cpu_count is not None and tp > caps.cpu_count:
        return f"tp_size {tp} on the CPU needs a core per rank, and {caps.cpu_count} are available"
    preset = preset_for(model)
    if preset is None:
        return None
    if not preset.tensor_parallel:
        return f"synthetic:{preset.name} has no tp plan in transformers (tp_plan auto cannot shard it)"
    for key, heads in preset.heads(model_config).items():
        if heads % tp:
            return f"{key} = {heads} is not divisible by tp_size {tp}"
    return None


def skip_reason(
    attn: str,
    mode: str | None,
    kernelize: bool,
    cb: bool,
    seq: int,
    new_tokens: int,
    model: str,
    model_config: dict[str, Any],
    caps: Capabilities,
) -> str | None:
    """Why this combination cannot run here, or None. First matching rule wins."""
    kernel = hub_kernel(attn)
    # transformers takes a hub kernel whose name says flash for flash attention (its
    # is_flash_attention_requested: "flash" in the name), with what that implies below.
    flash = attn == "flash_attention_2" or (kernel is not None and "flash" in attn)
    preset = preset_for(model)
    if preset is not None:
        # A hub kernel is an attention function like flash_attention_2's: an architecture that
        # takes flash_attention_2 takes it.
        takes_kernels = "flash_attention_2" in preset.attn_implementations
        if attn not in preset.attn_implementations and not (kernel is not None and takes_kernels):
            supports = [*preset.attn_implementations, *(["hub kernels"] if takes_kernels else [])]
            return f"synthetic:{preset.name} does not support {attn} (supports: {', '.join(supports)})"
        if mode is not None and not preset.compilable:
            return f"synthetic:{preset.name} cannot be compiled"
        if cb and not preset.continuous_batching:
            return f"synthetic:{preset.name} does not support continuous batching"
        limit = preset.max_positions(model_config)
        if limit is not None and seq + new_tokens > limit:
            return (
                f"sequence_length + num_tokens_to_generate = {seq + new_tokens} exceeds "
                f"the model's {limit} positions"
            )
    if attn == "flash_attention_2":
        if caps.device != "cuda":
            return "flash_attention_2 needs a CUDA GPU (device is cpu)"
        if not caps.flash_attn:
            return "flash_attention_2 needs the flash-attn package, which is not installed"
    if kernel is not None and (reason := hub_kernel_reason(attn, kernel, caps)) is not None:
        return reason
    if kernelize and not caps.kernels:
        return "kernelize needs the kernels package, which is not installed"
    if flash and mode is not None and not cb:
        return f"{attn} with torch.compile is not supported by plain generate"
    if cb and kernel is not None and not flash:
        return (
            f"continuous batching runs eager, sdpa or a flash attention only, and transformers does not "
            f"read {attn} as flash attention (no 'flash' in its name)"
        )
    if cb and attn == "flex_attention":
        return "continuous batching does not support flex_attention"
    if cb and mode not in CB_COMPILE_MODES:
        return (
            f"continuous batching compiles only with mode default or max-autotune-no-cudagraphs, not {mode} "
            "(it manages CUDA graphs itself)"
        )
    if mode == "reduce-overhead" and caps.device == "cpu":
        return (
            "reduce-overhead only adds CUDA graphs, which do not exist on cpu: it would measure mode default"
        )
    return None


def quantization_reason(method: str, mode: str | None, model: str, caps: Capabilities) -> str | None:
    """Why the weights cannot be quantized with `method` here, or None."""
    if method == "none":
        return None
    family = method.partition("-")[0]
    preset = preset_for(model)
    if preset is not None and preset.architecture == "sleep":
        return f"synthetic:{preset.name} has no weights to quantize"
    if family == "torchao" and preset is not None and preset.architecture == "gpt2":
        # transformers' torchao quantizer converts nn.Linear weights only (param_needs_quantization);
        # GPT-2's layers are Conv1D, and its one Linear, the lm_head, is kept unquantized.
        return f"{method}: torchao quantizes nn.Linear layers, and synthetic:{preset.name} has none (Conv1D)"
    if family == "bnb" and caps.device != "cuda":
        return f"{method}: tfbench runs bitsandbytes on a CUDA GPU only (device is {caps.device})"
    for package in QUANTIZATION_PACKAGES[family]:
        have = caps.quantization_packages.get(package)
        low = caps.quantization_minimums.get(package)
        wanted = f" >= {low}" if low else ""
        if have is None:
            return f"{method} needs the {package} package{wanted}, which is not installed"
        if low and not _at_least(have, low):
            return f"{method}: transformers quantizes with {package}{wanted} only, and {package} {have} is installed"
    if family == "bnb" and mode is not None:
        # generate compiles only where the quantizer says it can (hf_quantizer.is_compileable),
        # and transformers' bitsandbytes quantizers say no: the cell would run uncompiled.
        return f"{method} with torch.compile: transformers does not compile bitsandbytes models"
    return None


def _at_least(version: str, low: str) -> bool:
    try:
        return Version(version) >= Version(low)
    except InvalidVersion:
        return False


def hub_kernel_reason(attn: str, kernel: HubKernel, caps: Capabilities) -> str | None:
    """Why the hub kernel `attn` cannot load here, or None: transformers loads it through the
    kernels package (get_kernel), for the GPU, and only from the kernels cache while offline."""
    if caps.device != "cuda":
        return f"{attn} is a hub kernel: it needs a CUDA GPU (device is {caps.device})"
    wanted = ""
    if caps.kernels_required is not None:
        low, high = caps.kernels_required
        wanted = f"kernels >= {low}, < {high}"
    if not caps.kernels:
        asks = f" (transformers asks for {wanted})" if wanted else ""
        return f"{attn} is a hub kernel: it needs the kernels package{asks}, which is not installed"
    if wanted and not _within(caps.kernels_version, caps.kernels_required):
        return (
            f"{attn} is a hub kernel: transformers loads hub kernels only with {wanted}, "
            f"and kernels {caps.kernels_version or '(version unknown)'} is installed"
        )
    if caps.offline_kernels_cache is not None and kernel.repo not in caps.cached_hub_kernels:
        cached = caps.cached_hub_kernels
        if kernel.revision is not None and f"{kernel.repo}@{kernel.revision}" not in cached:
            return (
                f"{attn} is a hub kernel, HF_HUB_OFFLINE is set, and {kernel.repo}@{kernel.revision} is "
                f"not in the kernels cache {caps.offline_kernels_cache}: pre-fetch it (the image: "
                "--build-arg HUB_KERNELS) or unset HF_HUB_OFFLINE"
            )
        # Without a revision transformers asks for one version branch (v1, v2, ...) of the kernel,
        # and which one depends on the torch it runs with, unknown to the parent (which never
        # imports torch): any cached version passes here, and a worker names the one it missed.
        versions = [k for k in cached if k.startswith(f"{kernel.repo}@v") and k.rpartition("@v")[2].isdigit()]
        if kernel.revision is None and not versions:
            return (
                f"{attn} is a hub kernel, HF_HUB_OFFLINE is set, and no version branch (v1, v2, ...) "
                f"of {kernel.repo} is in the kernels cache {caps.offline_kernels_cache}: pre-fetch it "
                "(the image: --build-arg HUB_KERNELS) or unset HF_HUB_OFFLINE"
            )
    return None


def _within(version: str | None, required: tuple[str, str]) -> bool:
    """Whether `version` is in [min, max), as transformers' is_kernels_available compares it."""
    try:
        return version is not None and Version(required[0]) <= Version(version) < Version(required[1])
    except InvalidVersion:
        return False


def combinations(config: BenchConfig) -> list[tuple[str, str | None, bool, bool, bool, bool | None]]:
    """(attn, compile mode, kernelize, continuous batching, fullgraph, dynamic) of every
    combination the config asks for: a coverage level, its listed combinations, or the cross
    product of its axes. fullgraph and dynamic only define the measurement of a compiled cell."""
    if config.combinations is not None:
        listed = []
        for c in config.combinations:
            fullgraph = config.compile_fullgraph if c.compile_fullgraph is None else c.compile_fullgraph
            given = c.model_fields_set
            dynamic = c.compile_dynamic if "compile_dynamic" in given else config.compile_dynamic
            listed.append(
                (c.attn_implementation, c.compile, c.kernelize, c.continuous_batching, fullgraph, dynamic)
            )
        combos = listed
    else:
        crossed: list[Combo] = (
            coverage_combos(config.coverage)
            if config.coverage is not None
            else list(
                itertools.product(
                    config.attn_implementation, config.compile, config.kernelize, config.continuous_batching
                )
            )
        )
        combos = [(*c, config.compile_fullgraph, config.compile_dynamic) for c in crossed]
    return [
        (attn, mode, kern, cb, fullgraph if mode else False, dynamic if mode else None)
        for attn, mode, kern, cb, fullgraph, dynamic in combos
    ]


def build_plan(config: BenchConfig, caps: Capabilities) -> Plan:
    shapes = list(itertools.product(config.batch_size, config.sequence_length, config.num_tokens_to_generate))
    dtype = resolve_dtype(config.dtype, caps.device)
    overrides = dict(config.synthetic_config)
    base = {
        "model": config.model,
        "revision": config.revision,
        "model_config": overrides,
        "dtype": dtype,
        "device": caps.device,
    }
    cells: list[Cell] = []
    seen: set[str] = set()
    for (attn, mode, kern, cb, fullgraph, dynamic), quant, tp in itertools.product(
        combinations(config), config.quantization, config.tp_size
    ):
        reason_cache: dict[tuple[int, int], str | None] = {}
        # Only where it is more than 1: every cell without tensor parallelism keeps the id it had.
        tp_defining = {"tp_size": tp} if tp > 1 else {}
        for b, s, n in shapes:
            defining = {
                **base,
                "attn_implementation": attn,
                "compile": mode,
                "compile_fullgraph": fullgraph,
                "compile_dynamic": dynamic,
                "kernelize": kern,
                "continuous_batching": cb,
                "batch_size": b,
                "sequence_length": s,
                "num_tokens_to_generate": n,
                **tp_defining,
            }
            if quant != "none":
                defining["quantization"] = quant  # absent for "none": the ids from before stay
            cid = cell_id(defining)
            if cid in seen:
                continue
            seen.add(cid)
            if (s, n) not in reason_cache:
                reason_cache[(s, n)] = (
                    skip_reason(attn, mode, kern, cb, s, n, config.model, overrides, caps)
                    or quantization_reason(quant, mode, config.model, caps)
                    or tp_skip_reason(tp, config.model, overrides, caps, kern, quant)
                )
            cells.append(
                Cell(
                    index=len(cells),
                    cell_id=cid,
                    name=cell_name(attn, mode, kern, cb, b, s, n, quant, tp),
                    skip_reason=reason_cache[(s, n)],
                    **defining,
                )
            )
    warnings = []
    if not any(c.runnable for c in cells):
        warnings.append("no cell in this plan can run on this machine; see the skip reasons")
    return Plan(cells=cells, capabilities=caps, warnings=warnings)
