"""transformers' benchmark_v2, as a config source: its config dicts (both generations), config
files, coverage levels and the cross product its flags make, translated into one BenchConfig.

The facts are in docs/compat/benchmark_v2.md (section numbers below refer to it). Nothing is
rewritten silently: where benchmark_v2 would turn a config into another one, tfbench keeps the
asked-for cell (which its plan skips, with the reason) and says what benchmark_v2 would have run.
Pure functions; no torch, no transformers.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.config.schema import ATTN_IMPLEMENTATIONS, COMPILE_MODES
from bench.errors import UserError

# BenchmarkConfig.to_dict() key order (section 2); the hash is sha256 of json.dumps in this order.
CONFIG_KEYS = (
    "name",
    "warmup_iterations",
    "measurement_iterations",
    "gpu_monitoring",
    "continuous_batching",
    "batch_size",
    "sequence_length",
    "num_tokens_to_generate",
    "attn_implementation",
    "compile_kwargs",
    "kernelize",
)
OLD_KEYS = ("sdpa_backend", "compile_mode", "compile_options")
# CompileConfig.to_dict() (transformers 5.x): what compile_kwargs becomes in a written config.
COMPILE_KEYS = ("fullgraph", "dynamic", "backend", "mode", "options")
COMPILE_DEFAULT_MODE = "reduce-overhead"  # CompileConfig's default mode
CB_COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")
DTYPE = "bfloat16"  # benchmark_v2 always measures bfloat16
# run_benchmarks.py's defaults (section 1).
DEFAULT_WARMUP = 3
DEFAULT_ITERATIONS = 10
DEFAULT_LEVEL = 1


@dataclass(frozen=True)
class V2Combo:
    """What one benchmark_v2 config asks of the matrix, shapes and iterations aside."""

    attn_implementation: str
    compile: str | None = None
    fullgraph: bool = True  # benchmark_v2 compiles with fullgraph=True unless compile_kwargs say otherwise
    dynamic: bool | None = None
    kernelize: bool = False
    continuous_batching: bool = False

    def as_combination(self) -> dict[str, Any]:
        """The entry of BenchConfig.combinations."""
        out: dict[str, Any] = {
            "attn_implementation": self.attn_implementation,
            "compile": self.compile,
            "kernelize": self.kernelize,
            "continuous_batching": self.continuous_batching,
        }
        if self.compile:
            out.update(compile_fullgraph=self.fullgraph, compile_dynamic=self.dynamic)
        return out


@dataclass(frozen=True)
class Shape:
    warmup: int
    iterations: int
    batch_size: int
    sequence_length: int
    num_tokens: int
    gpu_monitoring: bool


# ------------------------------------------------------------------------------- config dicts


def _problem(where: str, key: str, value: Any, allowed: str) -> UserError:
    return UserError(f"{where}: {key} = {json.dumps(value)}: allowed: {allowed}")


def _bool(data: dict[str, Any], key: str, default: bool, where: str) -> bool:
    value = data.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _problem(where, key, value, "true or false")
    return value


def _compile_kwargs(value: Any, where: str) -> tuple[str | None, bool, bool | None]:
    """(mode, fullgraph, dynamic) of a current-generation compile_kwargs (null: no compile)."""
    if value is None:
        return None, False, None
    if not isinstance(value, dict):
        raise _problem(where, "compile_kwargs", value, "null or a mapping of CompileConfig arguments")
    unknown = sorted(set(value) - set(COMPILE_KEYS))
    if unknown:
        raise _problem(where, f"compile_kwargs.{unknown[0]}", value[unknown[0]], ", ".join(COMPILE_KEYS))
    mode = value.get("mode", COMPILE_DEFAULT_MODE)
    if mode not in COMPILE_MODES:
        raise _problem(where, "compile_kwargs.mode", mode, ", ".join(COMPILE_MODES))
    if value.get("backend", "inductor") != "inductor":
        raise _problem(
            where, "compile_kwargs.backend", value["backend"], "inductor (the backend tfbench measures)"
        )
    if value.get("options") not in (None, {}):
        raise _problem(
            where, "compile_kwargs.options", value["options"], "null (inductor options are not an axis)"
        )
    fullgraph = value.get("fullgraph", True)
    dynamic = value.get("dynamic")
    if not isinstance(fullgraph, bool):
        raise _problem(where, "compile_kwargs.fullgraph", fullgraph, "true or false")
    if dynamic is not None and not isinstance(dynamic, bool):
        raise _problem(where, "compile_kwargs.dynamic", dynamic, "true, false or null")
    return mode, fullgraph, dynamic


def _old_compile(data: dict[str, Any], where: str) -> tuple[str | None, bool, bool | None]:
    """(mode, fullgraph, dynamic) of an older config's compile_mode and compile_options."""
    mode = data.get("compile_mode")
    if mode is None:
        return None, False, None
    if mode not in COMPILE_MODES:
        raise _problem(where, "compile_mode", mode, "null or one of " + ", ".join(COMPILE_MODES))
    options = data.get("compile_options") or {}
    if not isinstance(options, dict) or set(options) - {"fullgraph", "dynamic"}:
        raise _problem(where, "compile_options", options, "a mapping with fullgraph and dynamic at most")
    return _compile_kwargs({**options, "mode": mode}, where)


def parse_config(data: Any, where: str) -> tuple[V2Combo, bool, list[str]]:
    """One benchmark_v2 config dict (either generation) -> (combo, whether it carries tp_plan,
    notes). Shapes, iterations and monitoring come from the flags (section 1.2), so they are
    not read here. A value tfbench cannot measure as written exits 2 naming it."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: a benchmark_v2 config is a JSON object, not {type(data).__name__}")
    notes: list[str] = []
    attn = data.get("attn_implementation", "eager")
    old = any(k in data for k in OLD_KEYS)
    if old and attn == "paged|sdpa":  # the older level 2 spelled sdpa with continuous batching this way
        attn = "sdpa"
    if attn not in ATTN_IMPLEMENTATIONS:
        raise _problem(where, "attn_implementation", attn, ", ".join(ATTN_IMPLEMENTATIONS))
    if old:
        mode, fullgraph, dynamic = _old_compile(data, where)
        if data.get("sdpa_backend") is not None:
            notes.append(
                f"{where}: sdpa_backend {data['sdpa_backend']!r} is not an axis of tfbench: sdpa picks its backend"
            )
        notes.append(
            f"{where}: an older config (compile_mode, sdpa_backend); today's benchmark_v2 would drop those "
            "keys and run it uncompiled, tfbench measures what it says"
        )
    else:
        mode, fullgraph, dynamic = _compile_kwargs(data.get("compile_kwargs"), where)
    tp_plan = data.get("tp_plan")
    if tp_plan is not None:
        raise _problem(
            where, "tp_plan", tp_plan, "null (tensor-parallel cells are not measured by tfbench yet)"
        )
    combo = V2Combo(
        attn_implementation=attn,
        compile=mode,
        fullgraph=fullgraph if mode else True,
        dynamic=dynamic,
        kernelize=_bool(data, "kernelize", False, where),
        continuous_batching=_bool(data, "continuous_batching", False, where),
    )
    return combo, "tp_plan" in data, notes


def read_config_file(path: Path) -> list[tuple[str, Any]]:
    """(where, dict) of every config in a benchmark_v2 --config-file (section 1.1): .json holds one
    dict; .jsonl one per line that starts with '{' (other lines are skipped, as benchmark_v2 does)."""
    if path.suffix not in (".json", ".jsonl"):
        raise UserError(f"--config-file {path}: allowed: a .json file (one config) or .jsonl (one per line)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(
            f"--config-file {path}: cannot be read: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    try:
        if path.suffix == ".json":
            return [(f"{path}", json.loads(text))]
        return [
            (f"{path} line {n}", json.loads(line))
            for n, line in enumerate(text.splitlines(), 1)
            if line.startswith("{")
        ]
    except json.JSONDecodeError as exc:
        raise UserError(f"--config-file {path}: not valid JSON: {exc}") from None


def level_combos(level: int, kernels_available: bool) -> list[V2Combo]:
    """get_config_by_level (section 4), current generation: compile_kwargs {} is mode
    reduce-overhead with fullgraph; levels 3 and up replace the list."""
    ro = COMPILE_DEFAULT_MODE
    if level >= 3:
        modes: list[str | None] = [None, "default"] if level < 4 else [None, *COMPILE_MODES]
        kernelize = sorted({False, kernels_available})
        return [
            V2Combo(attn, mode, True, None, kern, cb)
            for attn in ("flash_attention_2", "eager", "sdpa", "flex_attention")
            for mode in modes
            for kern in kernelize
            for cb in (False, True)
        ]
    combos = [V2Combo("flex_attention", ro)] if level >= 0 else []
    if level >= 1:
        combos += [
            V2Combo("flash_attention_2"),
            V2Combo("eager", ro),
            V2Combo("flash_attention_2", continuous_batching=True),
        ]
    if level >= 2:
        combos += [
            V2Combo("sdpa", ro),
            V2Combo("flex_attention", ro, kernelize=True),
            V2Combo("flash_attention_2", kernelize=True),
            V2Combo("sdpa", continuous_batching=True),
        ]
    return combos


# ------------------------------------------------------------------------------- written configs


def infer_name(combo: V2Combo, shape: Shape, tp: bool = False) -> str:
    """BenchmarkConfig.infer_name(compact=True) (section 2)."""
    parts = [
        f"w{shape.warmup}_i{shape.iterations}",
        "monitored" if shape.gpu_monitoring else "unmonitored",
        f"b{shape.batch_size}_s{shape.sequence_length}_n{shape.num_tokens}",
        combo.attn_implementation,
        f"compiled_{combo.compile}" if combo.compile else "uncompiled",
        "kernelized" if combo.kernelize else "unkernelized",
        "cb" if combo.continuous_batching else "generate",
    ]
    if tp:
        parts.append("no_tp")
    return "-".join(parts)


def config_dict(combo: V2Combo, shape: Shape, tp: bool = False) -> dict[str, Any]:
    """BenchmarkConfig.to_dict() of a combo at a shape, in benchmark_v2's key order; with `tp`,
    the generation that has tp_plan (always null here)."""
    compile_kwargs = (
        {
            "fullgraph": combo.fullgraph,
            "dynamic": combo.dynamic,
            "backend": "inductor",
            "mode": combo.compile,
            "options": None,
        }
        if combo.compile
        else None
    )
    out: dict[str, Any] = {
        "name": infer_name(combo, shape, tp),
        "warmup_iterations": shape.warmup,
        "measurement_iterations": shape.iterations,
        "gpu_monitoring": shape.gpu_monitoring,
        "continuous_batching": combo.continuous_batching,
        "batch_size": shape.batch_size,
        "sequence_length": shape.sequence_length,
        "num_tokens_to_generate": shape.num_tokens,
        "attn_implementation": combo.attn_implementation,
        "compile_kwargs": compile_kwargs,
        "kernelize": combo.kernelize,
    }
    if tp:
        out["tp_plan"] = None
    return out


def config_hash(config: dict[str, Any]) -> str:
    """BenchmarkConfig.hash: sha256 of json.dumps(to_dict()) with the default separators."""
    return hashlib.sha256(json.dumps(config).encode()).hexdigest()


def combo_of(cell: Any) -> V2Combo:
    """The benchmark_v2 combo of a tfbench cell (anything with the Cell's field names)."""
    return V2Combo(
        attn_implementation=cell.attn_implementation,
        compile=cell.compile,
        fullgraph=cell.compile_fullgraph if cell.compile else True,
        dynamic=cell.compile_dynamic if cell.compile else None,
        kernelize=cell.kernelize,
        continuous_batching=cell.continuous_batching,
    )


# ------------------------------------------------------------------------------- the rewrites


def rewrites(combo: V2Combo, flash_attn: bool, kernels: bool, device: str) -> list[str]:
    """What benchmark_v2 would run instead of this combo (section 3), one line each; tfbench
    runs the combo as asked or skips it with its reason."""
    out = []
    fa2 = combo.attn_implementation == "flash_attention_2"
    if fa2 and not flash_attn:
        out.append("flash_attention_2 -> sdpa (flash-attn is not installed)")
    if fa2 and combo.compile and not combo.continuous_batching:
        out.append("compile turned off (flash_attention_2 with generate)")
    if combo.attn_implementation == "flex_attention" and combo.continuous_batching:
        out.append("continuous batching turned off (flex_attention)")
    if combo.continuous_batching and combo.compile and combo.compile not in CB_COMPILE_MODES:
        out.append(f"compile mode {combo.compile} -> default (continuous batching)")
    if combo.kernelize and not kernels:
        out.append("runs unkernelized but is recorded as kernelized (kernels is not installed)")
    if combo.compile and device == "cpu":
        out.append(
            "not compiled at all on the CPU (generate compiles only on accelerators), recorded as compiled"
        )
    return out


# ------------------------------------------------------------------------------- the whole command


@dataclass(frozen=True)
class V2Matrix:
    """What a benchmark_v2 command line asks for: combos in file order, the shapes of the cross
    product (section 1.2), and whether the configs carry tp_plan."""

    combos: list[V2Combo]
    shapes: list[Shape]
    tp: bool
    notes: list[str]

    def entries(self) -> list[tuple[Shape, V2Combo]]:
        """benchmark_v2's run order: the flags' product outside, the configs inside; duplicates
        (the same config dict) once."""
        seen: set[str] = set()
        out = []
        for shape in self.shapes:
            for combo in self.combos:
                key = config_hash(config_dict(combo, shape, self.tp))
                if key not in seen:
                    seen.add(key)
                    out.append((shape, combo))
        return out


def matrix(
    config_file: Path | None,
    level: int,
    warmup: int,
    iterations: int,
    batch_sizes: list[int],
    sequence_lengths: list[int],
    new_tokens: list[int],
    gpu_monitoring: bool,
    kernels_available: bool,
) -> V2Matrix:
    """The configs of a benchmark_v2 command line: a --config-file or a --level, crossed with -w -i
    -b -s -n (the flags always win over the file: section 1.2)."""
    for flag, values in (("--batch-size", batch_sizes), ("--sequence-length", sequence_lengths)):
        bad = [v for v in values if v < 1]
        if bad:
            raise UserError(f"{flag} {bad[0]}: allowed: integers >= 1")
    bad = [v for v in new_tokens if v < 2]
    if bad:
        raise UserError(
            f"--num-tokens-to-generate {bad[0]}: allowed: integers > 1 (benchmark_v2 needs 2 or more)"
        )
    if warmup < 0:
        raise UserError(f"--warmup {warmup}: allowed: an integer >= 0")
    if iterations < 1:
        raise UserError(f"--iterations {iterations}: allowed: an integer >= 1")
    notes: list[str] = []
    tp = False
    if config_file is not None:
        combos = []
        for where, data in read_config_file(config_file):
            combo, has_tp, said = parse_config(data, where)
            combos.append(combo)
            tp = tp or has_tp
            notes += said
        if not combos:
            raise UserError(
                f"--config-file {config_file}: no config in it (a .jsonl line must start with '{{')"
            )
    else:
        combos = level_combos(level, kernels_available)
        if not combos:
            raise UserError(f"--level {level}: no configs at a level below 0; allowed: 0 to 4")
    shapes = [
        Shape(warmup, iterations, b, s, n, gpu_monitoring)
        for b, s, n in itertools.product(batch_sizes, sequence_lengths, new_tokens)
    ]
    return V2Matrix(combos=combos, shapes=shapes, tp=tp, notes=notes)


def bench_config(m: V2Matrix, model_id: str) -> dict[str, Any]:
    """The tfbench config of a benchmark_v2 matrix, as file fields (validated by the caller)."""
    unique: list[dict[str, Any]] = []
    for combo in m.combos:
        entry = combo.as_combination()
        if entry not in unique:
            unique.append(entry)
    shape = m.shapes[0]
    return {
        "model": model_id,
        "dtype": DTYPE,
        "combinations": unique,
        "batch_size": sorted({s.batch_size for s in m.shapes}),
        "sequence_length": sorted({s.sequence_length for s in m.shapes}),
        "num_tokens_to_generate": sorted({s.num_tokens for s in m.shapes}),
        "warmup_iterations": shape.warmup,
        "measurement_iterations": shape.iterations,
        "gpu_monitoring": shape.gpu_monitoring,
        "run_name": "benchmark_v2",
    }
