"""The config schema and its sources: files (YAML, JSON, JSONL), TFBENCH_* variables, CLI flags.

Precedence is flag > env > file > default. Every mistake becomes a ConfigError that names the
source, the field, the value and what is allowed; nothing here imports torch.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StrictBool,
    StrictInt,
    TypeAdapter,
    ValidationError,
    field_validator,
)

from bench.config.presets import PRESETS, SYNTHETIC_PREFIX, is_synthetic, preset_for
from bench.secrets import looks_like_token

ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flex_attention", "flash_attention_2")
# Worker processes per cell when the config does not say (README, "Processes"; BENCHMARKS.md).
DEFAULT_PROCESSES = 4
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
DTYPES = ("auto", "float32", "float16", "bfloat16")
DEVICES = ("auto", "cuda", "cpu")
# Weight quantization methods, as transformers applies them when it loads a model
# (quantization_config=): torchao on any device, bitsandbytes on CUDA (bench/worker/quantize.py).
QUANTIZATIONS = (
    "none",
    "torchao-int8-weight-only",
    "torchao-int8-weight-int8-activation",
    "bnb-8bit",
    "bnb-4bit",
)
CONFIG_FILE_NAMES = ("config.yaml", "config.yml", "config.json", "config.jsonl")
CONFIG_SUFFIXES = (".yaml", ".yml", ".json", ".jsonl")
ENV_PREFIX = "TFBENCH_"
# TFBENCH_* variables that are not config fields; any other unknown TFBENCH_* is a typo.
NON_FIELD_ENV = {
    "TFBENCH_CONFIG",
    "TFBENCH_RUN_ID",
    "TFBENCH_COMMIT",
    "TFBENCH_FAULT",
    "TFBENCH_SHARD",
    "TFBENCH_SHARD_COUNT",
    "TFBENCH_LOG_FORMAT",
    "TFBENCH_BRANCH",
    "TFBENCH_HUB_CONNECT_TIMEOUT_S",
    "TFBENCH_HUB_READ_TIMEOUT_S",
    "TFBENCH_SLEEP_SCALE",
    "TFBENCH_CALIBRATION",
    "TFBENCH_SYNC_LEASE_S",
}
# Switches of the harness's own tests and benchmarks, not settings: the simulated GPUs (names a
# fake NVML the parent lists GPUs with, bench.run.machine; its workers then compute on the CPU).
TEST_NVML_ENV = "TFBENCH_TEST_NVML"
TEST_ENV = {TEST_NVML_ENV}
# TFBENCH_CONFIG=demo: the embedded CPU demo (what runs without any config).
DEMO_CONFIG = "demo"
MOUNT_HINT = (
    "mount a directory holding config.yaml (docker run -v ./cfg:/cfg ...), "
    f"point TFBENCH_CONFIG at a file, or set TFBENCH_CONFIG={DEMO_CONFIG} for the built-in CPU demo"
)
# Kinds of TFBENCH_FAULT, the harness's own fault injection (see worker.inject_fault).
FAULT_KINDS = ("raise", "oom", "segv", "kill", "exit", "hang")
# Axes that may be given a single value or a list; lists expand to the cross product.
AXIS_FIELDS = ("attn_implementation", "compile", "kernelize", "continuous_batching")
SHAPE_FIELDS = ("batch_size", "sequence_length", "num_tokens_to_generate")
# Like the shapes, quantization and tp_size are properties of the loaded model: they cross every
# combination (axes, coverage level or listed combinations) rather than being one of their axes.
LIST_FIELDS = SHAPE_FIELDS + AXIS_FIELDS + ("quantization", "tp_size")
# Ranks of a tensor-parallel cell: the GPU counts of a node that divide the usual head counts.
TP_SIZES = (1, 2, 4, 8)

PositiveInt = Annotated[StrictInt, Field(ge=1)]


def _tp_size(value: int) -> int:
    if value not in TP_SIZES:
        raise ValueError(f"not one of {', '.join(map(str, TP_SIZES))}")
    return value


TpSize = Annotated[StrictInt, AfterValidator(_tp_size)]
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] | None
BuiltinAttention = Literal["eager", "sdpa", "flex_attention", "flash_attention_2"]
# An attention kernel from the Hub, in transformers' own form (its `is_kernel`, integrations/
# hub_kernels.py): ORG/NAME, then @REVISION (a branch, tag or commit; without it transformers picks
# the kernel's version branch it was tested with), then :FUNCTION (a function of the kernel to
# call). transformers takes any characters but / and : in each part; these are the Hub's own,
# so that a typo is an error here rather than a failed download in every worker.
HUB_KERNEL_RE = re.compile(
    r"^(?P<repo>(?=[^@:]{3,96}(?:[@:]|\Z))[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*)"
    r"(?:@(?P<revision>[A-Za-z0-9][A-Za-z0-9._-]{0,199}))?"
    r"(?::(?P<function>[A-Za-z_][A-Za-z0-9_]{0,99}))?\Z"
)
HUB_KERNEL_FORM = "ORG/NAME[@REVISION][:FUNCTION]"


@dataclass(frozen=True)
class HubKernel:
    """An attn_implementation that names a kernel repo on the Hub, as transformers reads it."""

    repo: str
    revision: str | None
    function: str | None


def hub_kernel(attn: str) -> HubKernel | None:
    """The hub kernel `attn` names, or None for a built-in attention (or no valid kernel name)."""
    match = HUB_KERNEL_RE.match(attn)
    if match is None or ".." in attn:
        return None
    return HubKernel(match.group("repo"), match.group("revision"), match.group("function"))


_BUILTIN_ATTENTION = TypeAdapter(BuiltinAttention)


def _attention(value: Any) -> str:
    """A built-in name (the Literal), else a hub kernel name; one message naming both when neither."""
    try:
        return _BUILTIN_ATTENTION.validate_python(value)
    except ValidationError:
        pass
    if isinstance(value, str) and hub_kernel(value) is not None:
        return value
    if isinstance(value, str) and "/" in value:
        raise ValueError(
            f"not a hub kernel name of the form {HUB_KERNEL_FORM} (letters, digits, . _ - in each part)"
        )
    raise ValueError(f"not one of {', '.join(ATTN_IMPLEMENTATIONS)}, nor a hub kernel {HUB_KERNEL_FORM}")


AttnImplementation = Annotated[str, PlainValidator(_attention)]
# \Z, not $: "$" also matches before a final newline, and "name\n" would pass.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
# At most 96 characters, as the Hub allows.
_HUB_ID_RE = re.compile(r"^(?=.{1,96}\Z)[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?\Z")
_REVISION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}\Z")
# Lists and mappings nested deeper than this are no config (and would exhaust the stack later).
MAX_NESTING = 32

# What each field accepts, in words, for error messages and the README.
ALLOWED: dict[str, str] = {
    "model": "a hub id (org/name), a local directory, or synthetic:<preset> with preset one of "
    + ", ".join(PRESETS),
    "model_config": "a mapping of config overrides for a synthetic preset, keys from that preset",
    "revision": "a branch, tag or commit of the hub repo (letters, digits, . _ - /), or null",
    "dtype": "one of " + ", ".join(DTYPES) + " (auto: bfloat16 on cuda, float32 on cpu)",
    "device": "one of " + ", ".join(DEVICES) + " (auto: cuda when an NVIDIA GPU is visible)",
    "trust_remote_code": "true or false",
    "batch_size": "a positive integer or a list of distinct positive integers",
    "sequence_length": "a positive integer or a list of distinct positive integers",
    "num_tokens_to_generate": "a positive integer or a list of distinct positive integers",
    "warmup_iterations": "an integer >= 0",
    "measurement_iterations": "an integer >= 1: timed runs per cell, shared out between its processes",
    "processes": "an integer >= 1: fresh worker processes per cell, each with its own warm-up; "
    f"null: {DEFAULT_PROCESSES} (fewer when measurement_iterations is smaller)",
    "process_order": "round-robin (process k of every cell, then process k + 1) or shuffled "
    "(each round in an order drawn from seed)",
    "concurrent_cells": "auto (on a GPU host: one cell per free GPU set while each worker can have "
    "enough host cores; on the CPU: one at a time) or an integer >= 1: cells measured at once, "
    "each on GPUs and host cores of its own",
    "coverage": "an integer from 0 to 4, or null to use the explicit axes",
    "combinations": "null (the cross product of the axes), or a list of mappings, each with "
    "attn_implementation and optionally compile, compile_fullgraph, compile_dynamic, kernelize and "
    "continuous_batching: exactly these combinations, each at every shape",
    "attn_implementation": "one or a list of "
    + ", ".join(ATTN_IMPLEMENTATIONS)
    + f", or a hub kernel {HUB_KERNEL_FORM} (e.g. kernels-community/flash-attn2@v4: "
    "transformers loads it with the kernels package, on a CUDA GPU)",
    "compile": "null (no compile) or one of " + ", ".join(COMPILE_MODES) + ", or a list of these",
    "compile_fullgraph": "true or false",
    "compile_dynamic": "true, false or null",
    "kernelize": "true, false, or a list of these",
    "quantization": "one or a list of "
    + ", ".join(QUANTIZATIONS)
    + " (the weights quantized as transformers loads them; torchao on any device, bitsandbytes on cuda)",
    "continuous_batching": "true, false, or a list of these",
    "tp_size": "one or a list of "
    + ", ".join(map(str, TP_SIZES))
    + ": ranks of a tensor-parallel cell (1: no tensor parallelism; more: one rank per GPU, "
    "the model loaded with tp_plan auto)",
    "gpu_monitoring": "true or false",
    "gpu_sample_interval_s": "a number of seconds > 0 (0.05: 20 samples a second)",
    "cell_timeout_s": "a number of seconds > 0",
    "cell_memory_limit_gb": "a number of GiB > 0: the most host memory one cell's worker may take, or null (no limit)",
    "profile": "false (no profile), or an integer >= 1: new tokens of one generate call profiled "
    "with torch.profiler after each cell's timed runs (its trace in traces/<cell_id>.json.gz)",
    "max_attempts": "an integer >= 1: attempts per cell that may end failed, oom, timeout or lost",
    "run_name": "1-64 characters from letters, digits, . _ - (starting with a letter or digit)",
    "output": "a directory path for results",
    "seed": "an integer",
    "push_to_hub": "a Hub dataset repo id ORG/NAME to upload the run to, or null (no upload)",
    "push_private": "true or false: whether a repo created by the upload is private",
    "sync_to": "null (results stay on this machine), or an fsspec URL the run is copied to between cells "
    "and restored from on a new machine: s3://BUCKET/PREFIX, gs://..., az://..., "
    "hf://datasets/ORG/NAME/PREFIX or file:///ABSOLUTE/PATH",
    "transformers_source": "null (the installed transformers), or the transformers to measure: a "
    "checkout, an unpacked wheel, a virtual environment, or another environment's python",
}


class Combination(BaseModel):
    """One (attention, compile, kernels, continuous batching) combination, when a config lists
    them instead of crossing the axes. compile_fullgraph and compile_dynamic left out take the
    config's own values."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    attn_implementation: AttnImplementation
    compile: CompileMode = None
    compile_fullgraph: StrictBool | None = None
    compile_dynamic: StrictBool | None = None
    kernelize: StrictBool = False
    continuous_batching: StrictBool = False


class BenchConfig(BaseModel):
    """One benchmark run: a model, a matrix of axes and shapes, and how to measure each cell."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: Annotated[str, Field(min_length=1, strict=True)]
    # Named synthetic_config in Python (pydantic reserves model_config); "model_config" in files.
    synthetic_config: dict[str, Any] = Field(default_factory=dict, alias="model_config")
    revision: Annotated[str, Field(strict=True)] | None = None
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    device: Literal["auto", "cuda", "cpu"] = "auto"
    trust_remote_code: StrictBool = False
    batch_size: list[PositiveInt] = [1]
    sequence_length: list[PositiveInt] = [128]
    num_tokens_to_generate: list[PositiveInt] = [128]
    warmup_iterations: Annotated[StrictInt, Field(ge=0)] = 5
    measurement_iterations: Annotated[StrictInt, Field(ge=1)] = 20
    processes: Annotated[StrictInt, Field(ge=1)] | None = None
    process_order: Literal["round-robin", "shuffled"] = "round-robin"
    concurrent_cells: Literal["auto"] | Annotated[StrictInt, Field(ge=1)] = "auto"
    coverage: Annotated[StrictInt, Field(ge=0, le=4)] | None = None
    combinations: list[Combination] | None = None
    attn_implementation: list[AttnImplementation] = ["sdpa"]
    compile: list[CompileMode] = [None]
    compile_fullgraph: StrictBool = False
    compile_dynamic: StrictBool | None = None
    kernelize: list[StrictBool] = [False]
    continuous_batching: list[StrictBool] = [False]
    quantization: list[
        Literal[
            "none", "torchao-int8-weight-only", "torchao-int8-weight-int8-activation", "bnb-8bit", "bnb-4bit"
        ]
    ] = ["none"]
    tp_size: list[TpSize] = [1]
    gpu_monitoring: StrictBool = True
    gpu_sample_interval_s: Annotated[float, Field(strict=True, gt=0, allow_inf_nan=False)] = 0.05
    cell_timeout_s: Annotated[float, Field(strict=True, gt=0, allow_inf_nan=False)] = 1800.0
    cell_memory_limit_gb: Annotated[float, Field(strict=True, gt=0, allow_inf_nan=False)] | None = None
    # false or a token count; kept as None or that count (false never reaches the worker).
    profile: Annotated[StrictInt, Field(ge=1)] | StrictBool | None = None
    max_attempts: Annotated[StrictInt, Field(ge=1)] = 2
    run_name: Annotated[str, Field(strict=True)] = "tfbench"
    output: Annotated[str, Field(min_length=1, strict=True)] | None = None
    seed: StrictInt = 0
    push_to_hub: Annotated[str, Field(strict=True)] | None = None
    push_private: StrictBool = True
    sync_to: Annotated[str, Field(min_length=1, strict=True)] | None = None
    transformers_source: Annotated[str, Field(min_length=1, strict=True)] | None = None

    @field_validator("*", mode="before")
    @classmethod
    def _no_tokens(cls, value: Any) -> Any:
        # A config is written to run.json and uploaded with the results; a token must not be.
        stack = [value]
        while stack:
            item = stack.pop()
            if isinstance(item, str) and looks_like_token(item):
                raise ValueError("looks like an access token; tokens belong in HF_TOKEN, never in a config")
            if isinstance(item, dict):
                stack += [*item.keys(), *item.values()]
            elif isinstance(item, (list, tuple)):
                stack += item
        return value

    @field_validator(*LIST_FIELDS, mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return list(value) if isinstance(value, (list, tuple)) else [value]

    @field_validator("quantization", mode="before")
    @classmethod
    def _none_is_a_method(cls, value: Any) -> Any:
        # "none" from an environment variable or a flag reads as null (no compile); here it names
        # the unquantized model, as null does.
        if isinstance(value, (list, tuple)):
            return ["none" if v is None else v for v in value]
        return "none" if value is None else value

    @field_validator(*LIST_FIELDS)
    @classmethod
    def _non_empty_distinct(cls, value: list[Any]) -> list[Any]:
        if not value:
            raise ValueError("the list is empty")
        seen: set[tuple[type, Any]] = set()  # a set: a 100,000-value axis is checked in linear time
        for v in value:
            key = (type(v), v)  # True and 1 are different values here
            if key in seen:
                raise ValueError(f"{v!r} is listed twice")
            seen.add(key)
        return value

    @field_validator("profile")
    @classmethod
    def _profile(cls, value: int | bool | None) -> int | None:
        if value is True:
            raise ValueError("true is not a number of tokens: give one, e.g. 16")
        return None if value is False else value

    @field_validator("push_to_hub")
    @classmethod
    def _repo_id(cls, value: str | None) -> str | None:
        if value is not None and (not _HUB_ID_RE.match(value) or "/" not in value or ".." in value):
            raise ValueError("not a Hub repo id of the form ORG/NAME")
        return value

    @field_validator("model")
    @classmethod
    def _model_reference(cls, value: str) -> str:
        if is_synthetic(value):
            if preset_for(value) is None:
                raise ValueError(f"unknown synthetic preset {value[len(SYNTHETIC_PREFIX) :]!r}")
            return value
        looks_like_path = value.startswith(("/", ".", "~")) or value.count("/") > 1 or os.sep in value[:1]
        if looks_like_path:
            if not _is_dir(value):
                raise ValueError("no such model directory")
            return value
        if _is_dir(value):
            return value
        if not _HUB_ID_RE.match(value) or ".." in value:
            raise ValueError("not a hub id (org/name) nor an existing directory")
        return value

    @field_validator("revision")
    @classmethod
    def _revision(cls, value: str | None) -> str | None:
        if value is not None and (not _REVISION_RE.match(value) or ".." in value):
            raise ValueError("not a valid revision")
        return value

    @field_validator("run_name")
    @classmethod
    def _run_name(cls, value: str) -> str:
        if not NAME_RE.match(value):
            raise ValueError("not a valid run name")
        return value

    def check_combinations(self, given: set[str]) -> list[tuple[str, Any, str]]:
        """Cross-field problems as (field, value, message); `given` is the set of fields a source set."""
        problems: list[tuple[str, Any, str]] = []
        if self.combinations is not None:
            if not self.combinations:
                problems.append(("combinations", [], "the list is empty"))
            if self.coverage is not None:
                problems.append(
                    (
                        "combinations",
                        "[...]",
                        f"cannot be combined with coverage={self.coverage}: use one of them",
                    )
                )
            for name in AXIS_FIELDS:
                if name in given:
                    problems.append(
                        (
                            name,
                            getattr(self, name),
                            "cannot be combined with combinations: set it in each combination instead",
                        )
                    )
        elif self.coverage is not None:
            for name in AXIS_FIELDS:
                if name in given:
                    problems.append(
                        (
                            name,
                            getattr(self, name),
                            f"cannot be combined with coverage={self.coverage}: "
                            "use a coverage level or explicit axes, not both",
                        )
                    )
        preset = preset_for(self.model)
        if self.synthetic_config:
            if preset is None:
                problems.append(
                    ("model_config", self.synthetic_config, "only applies to synthetic:<preset> models")
                )
            else:
                for key, value in self.synthetic_config.items():
                    if key not in preset.config:
                        hint = did_you_mean(key, preset.config)
                        problems.append(
                            (
                                f"model_config.{key}",
                                value,
                                f"not a setting of preset {preset.name}{hint}; allowed: "
                                + ", ".join(preset.config),
                            )
                        )
                    elif (message := _override_problem(value, preset.config[key])) is not None:
                        problems.append((f"model_config.{key}", value, message))
        if self.processes is not None and self.processes > self.measurement_iterations:
            problems.append(
                (
                    "processes",
                    self.processes,
                    f"each process needs at least one timed run, and measurement_iterations is "
                    f"{self.measurement_iterations}",
                )
            )
        compile_options_set = self.compile_fullgraph or self.compile_dynamic is not None
        no_mode = all(mode is None for mode in self.compile) and not any(
            c.compile for c in self.combinations or ()
        )
        if compile_options_set and self.coverage is None and no_mode:
            problems.append(
                (
                    "compile_fullgraph" if self.compile_fullgraph else "compile_dynamic",
                    self.compile_fullgraph if self.compile_fullgraph else self.compile_dynamic,
                    "has no effect without a compile mode",
                )
            )
        return problems

    @property
    def worker_processes(self) -> int:
        """The processes each cell is measured in: as given, else the default (at most one per run)."""
        if self.processes is not None:
            return self.processes
        return min(DEFAULT_PROCESSES, self.measurement_iterations)

    def as_given(self) -> dict[str, Any]:
        """The config as a plain dict with file field names (for run.json)."""
        return self.model_dump(by_alias=True)


def _is_dir(path: str) -> bool:
    """Whether `path` names a directory; a name the system cannot look up (too long, a NUL, the
    home of a user that does not exist) names none."""
    try:
        return Path(path).expanduser().is_dir()
    except (OSError, ValueError, RuntimeError):
        return False


def _override_problem(value: Any, default: Any) -> str | None:
    """An override must have the preset value's type: sizes stay integers, rates stay numbers."""
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "must be true or false"
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            return f"must be an integer (the preset has {default})"
        return None if value >= 0 else "must be >= 0"
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            return f"must be a number (the preset has {default})"
        return None if value >= 0 else "must be >= 0"
    return None


@dataclass
class LoadedConfig:
    config: BenchConfig
    source: str  # where the file part came from, e.g. "cfg/config.yaml line 3", or "defaults"
    given: dict[str, Any] = field(default_factory=dict)  # merged raw values, before validation
    origins: dict[str, str] = field(default_factory=dict)  # field -> "file X" / "env TFBENCH_Y" / "flag --z"


def did_you_mean(name: str, choices: Any) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def field_names() -> list[str]:
    """Config keys as written in files."""
    return [f.alias or name for name, f in BenchConfig.model_fields.items()]


def python_name(key: str) -> str:
    return "synthetic_config" if key == "model_config" else key


def env_name(key: str) -> str:
    return ENV_PREFIX + key.upper()
