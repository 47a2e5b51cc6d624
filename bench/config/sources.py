"""Where a config comes from: a file (YAML, JSON, JSONL), TFBENCH_* variables and CLI flags, merged
with precedence flag > env > file > default, then validated once into BenchConfig. Every mistake
becomes a ConfigError naming the source, the field, the value and what is allowed.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from bench.config.schema import (
    ALLOWED,
    CONFIG_FILE_NAMES,
    CONFIG_SUFFIXES,
    ENV_PREFIX,
    FAULT_KINDS,
    LIST_FIELDS,
    MAX_NESTING,
    MOUNT_HINT,
    NON_FIELD_ENV,
    TEST_ENV,
    BenchConfig,
    Combination,
    LoadedConfig,
    did_you_mean,
    env_name,
    field_names,
    python_name,
)
from bench.errors import ConfigError, ConfigNotFoundError

# ---------------------------------------------------------------------------------------------
# Reading sources
# ---------------------------------------------------------------------------------------------


def find_config_file(path: str | os.PathLike[str]) -> Path:
    """A config file given directly, or the one config.{yaml,yml,json,jsonl} in a directory."""
    p = Path(path)
    try:  # a name the system cannot look up at all (too long, a NUL) is a mistake, not a crash
        p.stat()
    except (FileNotFoundError, NotADirectoryError):
        pass
    except (OSError, ValueError) as exc:
        shown = str(p) if len(str(p)) <= 200 else str(p)[:200] + "..."
        raise ConfigNotFoundError(
            f"no config found: {shown!r} cannot be looked up ({getattr(exc, 'strerror', None) or exc})"
        ) from None
    if p.is_dir():
        found = [p / n for n in CONFIG_FILE_NAMES if (p / n).is_file()]
        if not found:
            raise ConfigNotFoundError(
                f"no config found in directory {p}: expected one of "
                + ", ".join(CONFIG_FILE_NAMES)
                + f"; {MOUNT_HINT}"
            )
        if len(found) > 1:
            raise ConfigError(
                [f"more than one config file in {p}: " + ", ".join(f.name for f in found) + "; keep one"]
            )
        return found[0]
    if not p.exists():
        raise ConfigNotFoundError(f"no config found: {p} does not exist; {MOUNT_HINT}")
    if p.suffix.lower() not in CONFIG_SUFFIXES:
        raise ConfigError(
            [f"config file {p} has suffix {p.suffix!r}; allowed: " + ", ".join(CONFIG_SUFFIXES)]
        )
    return p


class _ConfigLoader(yaml.SafeLoader):
    """safe_load without aliases: an alias can tie a value to itself (a cycle) or make a few lines
    stand for billions of values; a config needs neither."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in a config", mark)
        return super().compose_node(parent, index)


def _load_yaml(text: str) -> Any:
    # A SafeLoader: plain data only, never Python objects.
    return yaml.load(text, Loader=_ConfigLoader)  # noqa: S506


def _too_deep(value: Any) -> bool:
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_NESTING:
            return True
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return False


def read_config_file(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """Parse a config file into (source label, mapping) pairs: one for YAML/JSON, one per JSONL line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"cannot read {path}: {exc}"]) from None
    suffix = path.suffix.lower()
    docs: list[tuple[str, Any]] = []
    if suffix == ".jsonl":
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            label = f"{path} line {lineno}"
            try:
                docs.append((label, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise ConfigError([f"not valid JSON: {exc.msg} at column {exc.colno}"], label) from None
            except RecursionError:
                raise ConfigError([f"nested more than {MAX_NESTING} levels deep"], label) from None
        if not docs:
            raise ConfigError(["the file holds no config line"], str(path))
    elif suffix == ".json":
        try:
            docs.append((str(path), json.loads(text)))
        except json.JSONDecodeError as exc:
            raise ConfigError(
                [f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"], str(path)
            ) from None
        except RecursionError:
            raise ConfigError([f"nested more than {MAX_NESTING} levels deep"], str(path)) from None
    else:
        try:
            docs.append((str(path), _load_yaml(text)))
        except yaml.YAMLError as exc:
            raise ConfigError([f"not valid YAML: {exc}".replace("\n", " ")], str(path)) from None
        except RecursionError:
            raise ConfigError([f"nested more than {MAX_NESTING} levels deep"], str(path)) from None
    out = []
    for label, doc in docs:
        if doc is None:
            doc = {}
        if not isinstance(doc, dict):
            raise ConfigError([f"the top level must be a mapping of fields, got {type(doc).__name__}"], label)
        if _too_deep(doc):
            raise ConfigError([f"nested more than {MAX_NESTING} levels deep"], label)
        out.append((label, doc))
    return out


def parse_text_value(key: str, text: str) -> Any:
    """Turn an env or flag string into a typed value: YAML scalars, lists as '[a, b]' or 'a,b'."""
    if key in ("model", "revision", "run_name", "output") and text not in ("null", "~"):
        return text
    stripped = text.strip()
    if key in LIST_FIELDS and "," in stripped and not stripped.startswith("["):
        return [_yaml_scalar(part.strip()) for part in stripped.split(",")]
    return _yaml_scalar(stripped)


def _yaml_scalar(text: str) -> Any:
    try:
        value = _load_yaml(text) if text else text
    except (yaml.YAMLError, RecursionError):
        return text
    if _too_deep(value):
        return text
    # "none" reads as "no compile" the way null does; YAML itself only knows null and ~.
    if isinstance(value, str) and value.lower() == "none":
        return None
    return value


def read_env(environ: Mapping[str, str]) -> dict[str, tuple[str, Any]]:
    """Config values from TFBENCH_* variables: {field: (variable name, value)}. Unknown names are errors."""
    known = {env_name(k): k for k in field_names()}
    values: dict[str, tuple[str, Any]] = {}
    problems = []
    for name, text in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name in NON_FIELD_ENV or name in TEST_ENV:
            continue
        if name not in known:
            # Compare what follows the shared prefix, or every name looks alike.
            suffixes = {n[len(ENV_PREFIX) :]: n for n in [*known, *sorted(NON_FIELD_ENV)]}
            close = difflib.get_close_matches(name[len(ENV_PREFIX) :], list(suffixes), n=1)
            hint = f" (did you mean {suffixes[close[0]]!r}?)" if close else ""
            problems.append(f"environment variable {name} is not a tfbench setting{hint}")
            continue
        key = known[name]
        values[key] = (name, parse_text_value(key, text))
    if problems:
        raise ConfigError(problems, "environment")
    return values


def check_fault_spec(spec: str | None) -> None:
    """TFBENCH_FAULT=<cell id prefix or *>[@<process>][#<rank>]:<kind>[,...]; a typo must not
    silently inject nothing."""
    if not spec:
        return
    for item in spec.split(","):
        target, sep, kind = item.strip().partition(":")
        target, hash_, rank = target.partition("#")
        target, at, which = target.partition("@")
        bad_rank = hash_ and not rank.isdigit()
        if not sep or not target or kind not in FAULT_KINDS or (at and not which.isdigit()) or bad_rank:
            raise ConfigError(
                [
                    f"TFBENCH_FAULT = {spec!r}: {item.strip()!r} is not "
                    "<cell id prefix or *>[@<process>][#<rank>]:<kind>; "
                    f"kinds: {', '.join(FAULT_KINDS)}"
                ],
                "environment",
            )


def load_configs(
    config_path: str | os.PathLike[str] | None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
    default_path: Path | None = None,
) -> list[LoadedConfig]:
    """Every config to run, in order: one per file, or one per JSONL line, with env and flags on top.

    `flags` maps file field names to values already parsed from the command line.
    `default_path` is used when no config path is given.
    """
    environ = os.environ if environ is None else environ
    flags = dict(flags or {})
    env_values = read_env(environ)
    check_fault_spec(environ.get("TFBENCH_FAULT"))
    if config_path is not None:
        path = find_config_file(config_path)
        docs = read_config_file(path)
    elif default_path is not None:
        docs = [(f"{default_path} (embedded default)", d) for _, d in read_config_file(default_path)]
    else:
        docs = [("defaults", {})]
    loaded = []
    for label, doc in docs:
        merged: dict[str, Any] = {}
        origins: dict[str, str] = {}
        for key, value in doc.items():
            merged[key] = value
            origins[key] = f"file {label}"
        for key, (var, value) in env_values.items():
            merged[key] = value
            origins[key] = f"env {var}"
        for key, value in flags.items():
            merged[key] = value
            origins[key] = f"flag --{key.replace('_', '-')}"
        loaded.append(validate(merged, origins, label))
    return loaded


def validate(merged: dict[str, Any], origins: dict[str, str], label: str) -> LoadedConfig:
    problems: list[str] = []
    try:
        config = BenchConfig.model_validate(merged)
    except ValidationError as exc:
        # One problem per field: a union or a list yields several errors for one bad value.
        first: dict[str, Mapping[str, Any]] = {}
        for err in exc.errors():
            loc = err.get("loc") or ("?",)
            key = str(loc[0]) if err.get("type") != "extra_forbidden" else f"extra:{loc[0]}"
            if loc[0] == "combinations" and len(loc) > 2:  # one problem per key of each combination
                key = ".".join(str(p) for p in loc[:3])
            first.setdefault(key, err)
        problems = [_describe_error(err, merged, origins) for err in first.values()]
        raise ConfigError(problems, label) from None
    given = {python_name(k) for k in merged}
    for name, value, message in config.check_combinations(given):
        top = name.split(".")[0]
        problems.append(
            _problem(name, value, message, origins.get(top), ALLOWED.get(top) if "." not in name else None)
        )
    if problems:
        raise ConfigError(problems, label)
    return LoadedConfig(config=config, source=label, given=dict(merged), origins=origins)


def _describe_error(err: Mapping[str, Any], merged: dict[str, Any], origins: dict[str, str]) -> str:
    loc = [str(p) for p in err.get("loc", ())]
    top = loc[0] if loc else "?"
    if top == "combinations" and len(loc) > 2:
        name, kind = ".".join(loc[:3]), err.get("type")
        allowed_keys = "allowed keys: " + ", ".join(Combination.model_fields)
        if kind == "extra_forbidden":
            message = f"not a key of a combination; {allowed_keys}"
        elif kind == "missing":
            message = "is required in every combination"
        else:
            message = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        return _problem(
            name, err.get("input") if kind != "missing" else None, message, origins.get(top), None
        )
    if err.get("type") == "extra_forbidden":
        return (
            f"unknown field {top!r}{did_you_mean(top, field_names())} ({origins.get(top, 'config')}); "
            "allowed fields: " + ", ".join(field_names())
        )
    if err.get("type") == "missing":
        return f"field {top!r} is required: {ALLOWED.get(top, '')}"
    value = merged.get(top, err.get("input"))
    # Pydantic appends the union branch or list index to loc; name the top-level field.
    message = str(err.get("msg", "invalid value"))
    message = message.removeprefix("Value error, ")
    return _problem(top, value, message, origins.get(top), ALLOWED.get(top))


def _problem(name: str, value: Any, message: str, origin: str | None, allowed: str | None) -> str:
    text = f"{name} = {_show(value)}: {message}"
    if allowed:
        text += f"; allowed: {allowed}"
    if origin:
        text += f" [from {origin}]"
    return text


def _show(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 120 else text[:117] + "..."
