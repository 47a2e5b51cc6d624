"""Hostile and careless input: config files, TFBENCH_* variables, CLI flags and the paths and refs
given to compare, report, history, merge and push.

The property everywhere: an invalid input exits 2 with a message that names the field, variable
or flag, never a traceback, and never a partial run: no run directory, no file in the output
directory, no worker started. Most examples drive `bench.cli.main` in-process (milliseconds
each) with tripwires where a run would start (resume.select_run, which claims the run
directory, and Runner.execute); a valid input may trip them, and must only when
config.load_configs accepts the same input. A few subprocess checks through entrypoint.py show
that the real entry behaves the same.

Example counts are module constants (a reliability table cites them); the examples are the same
on every run. HOSTILE_EXAMPLES_SCALE=10 multiplies them and draws fresh ones, for a deeper search
(not a TFBENCH_* name: tfbench refuses unknown ones, and the tests clear them).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import string
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml
from huggingface_hub import constants as hf_constants
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from bench import cli
from bench.cli.inputs import DEFAULT_CONFIG
from bench.config.schema import BenchConfig, field_names
from bench.config.sources import load_configs
from bench.errors import UserError
from bench.hub import push as hub
from bench.plan.shard import Shard
from bench.results.store import RunDir
from bench.run.runner import new_run_id
from bench.run.session import RunRequest, job_run_id
from tests.analysis.test_compare import make_run
from tests.conftest import TINY, run_entrypoint, write_config

SCALE = max(1, int(os.environ.get("HOSTILE_EXAMPLES_SCALE", "1")))
FIELD_JUNK_EXAMPLES = 300 * SCALE
RAW_FILE_EXAMPLES = 100 * SCALE
ENV_JUNK_EXAMPLES = 300 * SCALE
FLAG_JUNK_EXAMPLES = 300 * SCALE
TOOL_JUNK_EXAMPLES = 150 * SCALE
RUN_ID_EXAMPLES = 500 * SCALE
HUB_NAME_EXAMPLES = 500 * SCALE

SETTINGS = {
    "deadline": None,
    # The same examples on every run, so a CI failure reproduces; a deeper search explores anew.
    "derandomize": SCALE == 1,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
}
FIELDS = field_names()
RAN = "ran"


class _Ran(BaseException):
    """Raised where a run would start; a BaseException, so that no handler in bench swallows it."""


def _tripwire(*args: Any, **kwargs: Any) -> Any:
    raise _Ran()


@dataclass
class Outcome:
    code: int | str
    out: str
    err: str


@dataclass
class Workspace:
    root: Path
    inputs: Path  # what the example wrote (configs, run directories)
    out: Path  # the output directory the example names (it does not exist before)
    cwd: Path  # the working directory: relative paths land here

    def created(self) -> list[str]:
        """Everything the command created: in the output directory and the working directory."""
        found = [str(p.relative_to(self.root)) for p in self.cwd.rglob("*")]
        if self.out.exists():
            found.append(str(self.out.relative_to(self.root)))
            found += [str(p.relative_to(self.root)) for p in self.out.rglob("*")]
        return found

    def run_dirs(self) -> list[Path]:
        return [p for p in self.out.iterdir() if p.is_dir()] if self.out.is_dir() else []


@contextlib.contextmanager
def workspace() -> Iterator[Workspace]:
    with tempfile.TemporaryDirectory(prefix="tfbench-hostile-") as d:
        root = Path(d)
        ws = Workspace(root, root / "in", root / "out", root / "cwd")
        ws.inputs.mkdir()
        ws.cwd.mkdir()
        before = os.getcwd()
        os.chdir(ws.cwd)
        try:
            yield ws
        finally:
            os.chdir(before)


def base_environ(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("TFBENCH_") and k != "JOB_COMPLETION_INDEX"
    }
    env.update(HF_HUB_OFFLINE="1")
    env.pop("HF_TOKEN", None)
    env.update(extra or {})
    return env


def invoke(argv: list[str], env: dict[str, str] | None = None) -> Outcome:
    """cli.main in-process with exactly `env` (over a clean base), tripwires where a run starts,
    and the Hub out of reach (huggingface_hub reads HF_HUB_OFFLINE once, at import)."""
    out, err = io.StringIO(), io.StringIO()
    with (
        mock.patch.dict(os.environ, base_environ(env), clear=True),
        mock.patch.object(hf_constants, "HF_HUB_OFFLINE", True),
        mock.patch("bench.run.session.select_run", _tripwire),
        mock.patch("bench.run.runner.Runner.execute", _tripwire),
        mock.patch("bench.run.workers.start_worker_server", _tripwire),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        try:
            code: int | str = cli.main(argv)
        except SystemExit as exc:  # argparse's own exit
            code = exc.code if isinstance(exc.code, int) else 2
        except _Ran:
            code = RAN
    return Outcome(code, out.getvalue(), err.getvalue())


def accepted(
    path: Path | None, environ: dict[str, str] | None = None, flags: dict[str, Any] | None = None
) -> bool:
    """Whether load_configs takes the input; any exception but ConfigError is a bug."""
    try:
        load_configs(path, environ=environ or {}, flags=flags, default_path=DEFAULT_CONFIG)
    except UserError:
        return False
    return True


def assert_clean(outcome: Outcome) -> None:
    assert "Traceback" not in outcome.err + outcome.out, outcome.err
    assert outcome.code in (0, 1, 2, RAN), outcome


def assert_refused(outcome: Outcome, ws: Workspace, *names: str) -> None:
    """Exit 2, one of `names` in the message, nothing created, nothing run."""
    assert outcome.code == 2, outcome
    if outcome.err.startswith("{"):  # TFBENCH_LOG_FORMAT=json: one error event
        (event,) = [json.loads(line) for line in outcome.err.splitlines()]
        assert event["event"] == "error" and event["exit_code"] == 2, event
    else:
        assert outcome.err.startswith(("tfbench: error:", "usage:")), outcome.err
    if names:
        assert any(n in outcome.err for n in names), (names, outcome.err)
    assert ws.created() == [], ws.created()


# ------------------------------------------------------------------------------------------ junk

# Strings that trip parsers and path code: tried in every string field, variable and flag.
ODD_STRINGS = [
    "",
    " ",
    "\x00",
    "\n",
    "a\nb",
    "\t",
    "\u202e",  # right-to-left override
    "ｓｄｐａ",  # fullwidth lookalike of sdpa
    "\u2024\u2024/x",  # one-dot leaders, a lookalike of ../x
    "../x",
    "/etc/passwd",
    "a/../../b",
    "..\\..\\x",
    "~",
    "~root",
    "~nosuchuser/x",  # a home that cannot be resolved
    "x" * 300,  # longer than a file name may be
    "null",
    "none",
    "None",
    "true",
    "yes",
    "0x10",
    "1e400",
    "-0",
    "nan",
    "inf",
    "[1, 2",
    "{a: 1}",
    "1,2,,3",
    "x" * 5000,
    "é" * 300,
    "\U0001f600" * 50,
]
_odd_text = st.sampled_from(ODD_STRINGS)
_text = st.one_of(_odd_text, st.text(st.characters(codec="utf-8"), max_size=60))
_ints = st.one_of(
    st.integers(min_value=-10, max_value=10),
    st.integers(),
    st.sampled_from([2**31, 2**63, -(2**63), 10**30, 10**400]),
)
_floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -0.0, 1e-320, 1e308])
)
_scalars = st.one_of(st.none(), st.booleans(), _ints, _floats, _text)
junk = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)
DELETE = object()

# What reaches os.environ and argv: strings without NUL (the OS cannot pass one).
_env_text = st.one_of(
    _odd_text.filter(lambda s: "\x00" not in s),
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=40),
    st.sampled_from(
        ["0/2", "1/1", "3/2", "-1/2", "a/b", "0/0", "2", "0", "json", "human", "*:raise", "x:nope"]
    ),
)


def _relative(text: str) -> str:
    """An output path inside the working directory (the tests run as root: never "/" or "..")."""
    safe = text.replace("/", "_").replace("\\", "_").replace("..", "__").lstrip("~")
    return "o-" + safe


def _dump(data: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(data)
    if fmt == "jsonl":
        return json.dumps(data) + "\n"
    return yaml.safe_dump(data, allow_unicode=True)


# ------------------------------------------------------------------------------ config fields


@settings(max_examples=FIELD_JUNK_EXAMPLES, **SETTINGS)
@given(
    changes=st.dictionaries(
        st.one_of(st.sampled_from(FIELDS), st.text(string.ascii_lowercase + "_", min_size=1, max_size=12)),
        st.one_of(junk, st.just(DELETE)),
        min_size=1,
        max_size=3,
    ),
    fmt=st.sampled_from(["yaml", "json", "jsonl"]),
    command=st.sampled_from(["run", "plan"]),
)
def test_junk_config_fields_exit_2_naming_the_field(changes: dict[str, Any], fmt: str, command: str) -> None:
    with workspace() as ws:
        data: dict[str, Any] = {**TINY, "output": str(ws.out)}
        for key, value in changes.items():
            if value is DELETE:
                data.pop(key, None)
            else:
                data[key] = _relative(value) if key == "output" and isinstance(value, str) else value
        path = ws.inputs / f"config.{fmt}"
        path.write_text(_dump(data, fmt), encoding="utf-8")
        ok = accepted(path)
        outcome = invoke([command, "--config", str(path)])
        assert_clean(outcome)
        if not ok:
            named = [k for k in changes if k in FIELDS] or ["unknown field"]
            assert_refused(outcome, ws, *named, "unknown field", "is required")
            assert "invalid config" in outcome.err
        elif command == "plan":
            assert outcome.code == 0, outcome
        else:
            # Valid: the run starts (tripwire), or a check of the machine refuses it (cuda, push).
            assert outcome.code == RAN or (outcome.code == 2 and "invalid config" not in outcome.err), outcome
            assert ws.run_dirs() == []


STRING_FIELDS = ["model", "revision", "run_name", "output", "push_to_hub"]


@pytest.mark.parametrize("field", STRING_FIELDS)
def test_every_odd_string_in_every_string_field(field: str) -> None:
    """The cross product the random search may miss: each odd string, through a file, a variable
    and a flag (where the OS can pass it), exits 0/2 as load_configs says, never a traceback."""
    for value in ODD_STRINGS:
        with workspace() as ws:
            value = _relative(value) if field == "output" else value
            path = write_config(ws.inputs, name="config.json", **{"output": str(ws.out), field: value})
            ok = accepted(path)
            sources: list[tuple[list[str], dict[str, str]]] = [(["plan", "--config", str(path)], {})]
            if "\x00" not in value:
                base = write_config(ws.inputs, name="base.json", output=str(ws.out))
                sources.append((["plan", "--config", str(base)], {f"TFBENCH_{field.upper()}": value}))
                sources.append((["plan", "--config", str(base), f"--{field.replace('_', '-')}={value}"], {}))
            sources.append((["run", "--config", str(path)], {}))  # last: a valid run makes the output
            for argv, env in sources:
                outcome = invoke(argv, env)
                assert_clean(outcome)
                if argv[-1].startswith("--") or env:
                    # Parsed from text by its own rules ("null" is null): taken, or refused naming it.
                    assert outcome.code in (0, 2), outcome
                    if outcome.code == 2:
                        assert_refused(outcome, ws, field, *env)
                    continue
                if not ok:
                    assert_refused(outcome, ws, field)
                elif argv[0] == "plan":
                    assert outcome.code == 0, (field, value, outcome)
                else:  # a valid value the machine refuses: an output that cannot be made, no Hub
                    assert outcome.code == RAN or "invalid config" not in outcome.err, (field, value, outcome)
                    assert ws.run_dirs() == []


# ---------------------------------------------------------------------------- raw config files

_yaml_shapes = st.sampled_from(
    [
        "- a\n- b\n",
        "42\n",
        "just a string\n",
        "~\n",
        "---\na: 1\n---\nb: 2\n",
        "model: [unclosed\n",
        "model: {a: b\n",
        "\tmodel: tabs\n",
        "model: synthetic:llama-tiny\nmodel: synthetic:gpt2-tiny\n",  # a duplicate key
        "a: &x [*x]\n",  # a recursive alias
        "batch_size: &x [1, *x]\n",
        "model: !!binary aGVsbG8=\n",
        "model: !!set {a, b}\n",
        "model: 2020-01-01\n",
        "? [a, b]\n: c\n",  # a list as a key
        "model: !custom x\n",
        "%YAML 1.1\n---\nmodel: x\n",
        "\ufeffmodel: synthetic:llama-tiny\n",
        "[" * 1200,  # deeper than Python's recursion limit
        "a:\n" + "".join(" " * i + "b:\n" for i in range(1, 300)),
        "{" * 1200 + "}" * 1200,
        "x: " + "[" * 40 + "]" * 40 + "\n",
        "model: synthetic:llama-tiny\n" + "# comment\n" * 2000,
    ]
)
_json_shapes = st.sampled_from(
    [
        "[]",
        "[1, 2]",
        '"s"',
        "null",
        "1e999",
        "NaN",
        '{"a": ',
        "[" * 100000,
        "[" * 40 + "]" * 40,
        '{"model": "x"}{}',
        "\x00",
    ]
)


@settings(max_examples=RAW_FILE_EXAMPLES, **SETTINGS)
@given(
    content=st.one_of(
        st.binary(max_size=3000),
        st.text(st.characters(codec="utf-8"), max_size=2000).map(str.encode),
        _yaml_shapes.map(str.encode),
        _json_shapes.map(str.encode),
    ),
    suffix=st.sampled_from([".yaml", ".yml", ".json", ".jsonl", ".txt", ""]),
    command=st.sampled_from(["run", "plan"]),
    via_env=st.booleans(),
)
def test_junk_config_files_exit_2(content: bytes, suffix: str, command: str, via_env: bool) -> None:
    with workspace() as ws:
        path = ws.inputs / f"config{suffix}"
        path.write_bytes(content)
        ok = accepted(path, {"TFBENCH_OUTPUT": str(ws.out)})
        env = {"TFBENCH_OUTPUT": str(ws.out)}
        if via_env:
            env["TFBENCH_CONFIG"] = str(path)
            outcome = invoke([command], env)
        else:
            outcome = invoke([command, "--config", str(path)], env)
        assert_clean(outcome)
        if not ok:
            assert_refused(outcome, ws, str(path))
        else:  # an empty mapping and the like: no model, refused; anything else is a real config
            assert outcome.code in (0, RAN, 2)
            assert ws.run_dirs() == []


def test_huge_config_files_are_refused_quickly_and_briefly() -> None:
    """Large files within reason: read, refused with a short message naming the problem."""
    cases = {
        "config.json": json.dumps({**TINY, "run_name": "x" * 5_000_000}),
        "config.yaml": "model: " + "x" * 300_000 + "\n",
        "config.jsonl": (json.dumps(TINY) + "\n") * 2000 + '{"batch_size": 0}\n',  # the last line is bad
    }
    for name, text in cases.items():
        with workspace() as ws:
            path = ws.inputs / name
            path.write_text(text)
            outcome = invoke(["run", "--config", str(path)], {"TFBENCH_OUTPUT": str(ws.out)})
            assert_refused(outcome, ws, "run_name", "model", "line 2001")
            assert len(outcome.err) < 20_000


EVIL_YAML = [
    '!!python/object/apply:os.system ["touch {marker}"]\n',
    'model: !!python/object/apply:os.system ["touch {marker}"]\n',
    'run_name: !!python/object/apply:subprocess.call [["touch", "{marker}"]]\n',
    "model: !!python/name:os.system\n",
    'model: !!python/object/new:os.system ["touch {marker}"]\n',
    "model: !!python/module:os\n",
    "!!python/object/apply:builtins.exec [\"open('{marker}', 'w')\"]\n",
    'model_config: {{x: !!python/object/apply:os.system ["touch {marker}"]}}\n',
]


@pytest.mark.parametrize("template", EVIL_YAML)
@pytest.mark.parametrize("command", ["run", "plan"])
def test_yaml_python_tags_are_refused_and_never_executed(template: str, command: str) -> None:
    with workspace() as ws:
        marker = ws.root / "MARKER"
        path = ws.inputs / "config.yaml"
        path.write_text(template.format(marker=marker))
        outcome = invoke([command, "--config", str(path)], {"TFBENCH_OUTPUT": str(ws.out)})
        assert_refused(outcome, ws, "not valid YAML")
        assert not marker.exists()


# ----------------------------------------------------------------------------------- environment

ENV_FIELDS = [f"TFBENCH_{f.upper()}" for f in FIELDS]
ENV_OTHER = [
    "TFBENCH_SHARD",
    "TFBENCH_SHARD_COUNT",
    "JOB_COMPLETION_INDEX",
    "TFBENCH_LOG_FORMAT",
    "TFBENCH_RUN_ID",
    "TFBENCH_FAULT",
    "TFBENCH_CONFIG",
    "TFBENCH_COMMIT",
    "TFBENCH_BRANCH",
]
_env_names = st.one_of(
    st.sampled_from(ENV_FIELDS + ENV_OTHER),
    st.text(string.ascii_uppercase + string.digits + "_", min_size=1, max_size=10).map(
        lambda s: "TFBENCH_" + s
    ),
)
# Variables that hold free text (recorded, never checked) or point somewhere: never an error.
_FREE = {"TFBENCH_COMMIT", "TFBENCH_BRANCH"}


@settings(max_examples=ENV_JUNK_EXAMPLES, **SETTINGS)
@given(
    env=st.dictionaries(_env_names, _env_text, min_size=1, max_size=3),
    command=st.sampled_from(["run", "plan"]),
    config_dir=st.booleans(),
)
def test_junk_environment_variables_exit_2_naming_the_variable(
    env: dict[str, str], command: str, config_dir: bool
) -> None:
    with workspace() as ws:
        config = write_config(ws.inputs)
        environ = dict(env)
        if "TFBENCH_OUTPUT" in environ:
            environ["TFBENCH_OUTPUT"] = _relative(environ["TFBENCH_OUTPUT"])
        else:
            environ["TFBENCH_OUTPUT"] = str(ws.out)
        if "TFBENCH_CONFIG" not in environ:
            environ["TFBENCH_CONFIG"] = str(ws.inputs if config_dir else config)
        elif config_dir:  # a directory holding junk
            junk_dir = ws.inputs / "junk"
            junk_dir.mkdir()
            (junk_dir / "config.yaml").write_text(environ["TFBENCH_CONFIG"], encoding="utf-8")
            environ["TFBENCH_CONFIG"] = str(junk_dir)
        outcome = invoke([command], environ)
        assert_clean(outcome)
        path = environ["TFBENCH_CONFIG"]
        if outcome.code == 2:  # the variable is named, or the file it points to
            assert_refused(outcome, ws, *(set(env) - _FREE), *([path] if path else []))
        else:
            assert outcome.code in (0, RAN), outcome
            assert ws.run_dirs() == []
            fields = {k: v for k, v in environ.items() if k in ENV_FIELDS}
            assert accepted(Path(path) if path not in ("", "demo") else None, fields)


# ------------------------------------------------------------------------------------------ flags

RUN_FLAGS = ["--run-id", "--shard", "--log-format", "--config"]
PLAN_FLAGS = ["--shards", "--config"]
FIELD_FLAGS = ["--" + f.replace("_", "-") for f in FIELDS]


@settings(max_examples=FLAG_JUNK_EXAMPLES, **SETTINGS)
@given(
    command=st.sampled_from(["run", "plan"]),
    data=st.data(),
)
def test_junk_flags_exit_2_naming_the_flag(command: str, data: st.DataObject) -> None:
    flags = FIELD_FLAGS + (RUN_FLAGS if command == "run" else PLAN_FLAGS)
    pairs = data.draw(
        st.lists(
            st.tuples(st.one_of(st.sampled_from(flags), st.just("--nonsense"), st.just("-x")), _env_text),
            min_size=1,
            max_size=3,
        )
    )
    with workspace() as ws:
        config = write_config(ws.inputs)
        argv = [command]
        for flag, value in pairs:
            if flag in ("--output", "--config"):
                value = _relative(value)
            argv.append(f"{flag}={value}")
        outcome = invoke(argv, {"TFBENCH_CONFIG": str(config), "TFBENCH_OUTPUT": str(ws.out)})
        assert_clean(outcome)
        if outcome.code == 2:
            names = [f for f, _ in pairs] + [f[2:].replace("-", "_") for f, _ in pairs]
            assert_refused(outcome, ws, *names)
        else:
            assert outcome.code in (0, RAN), outcome
            assert ws.run_dirs() == []


def test_a_flag_without_its_value_is_an_argparse_error() -> None:
    with workspace() as ws:
        for argv in (["run", "--batch-size"], ["plan", "--shards", "x"], ["run", "--log-format", "xml"]):
            outcome = invoke(argv, {"TFBENCH_OUTPUT": str(ws.out)})
            assert_refused(outcome, ws, argv[1])


# -------------------------------------------------------------------- compare, report, history, ...


def _tool_paths(ws: Workspace) -> dict[str, str]:
    good = make_run(ws.inputs / "good", seed=1)
    shutil.copytree(good, ws.inputs / "junk-run")
    (ws.inputs / "file.txt").write_text("x")
    (ws.inputs / "empty").mkdir()
    return {
        "good": str(good),
        "junk": str(ws.inputs / "junk-run"),
        "file": str(ws.inputs / "file.txt"),
        "empty": str(ws.inputs / "empty"),
        "inputs": str(ws.inputs),
    }


def _spoil(data: st.DataObject, doc: Any, junk_values: st.SearchStrategy[Any]) -> Any:
    """A hand-edited copy of a JSON document: one to three keys, at any depth, given junk values."""
    if not isinstance(doc, dict) or data.draw(st.integers(0, 9)) == 0:
        return data.draw(junk_values)  # the whole file replaced
    for _ in range(data.draw(st.integers(1, 3))):
        node: Any = doc
        while True:
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            if not keys:
                break
            key = data.draw(st.sampled_from(keys))
            child = node[key]
            if isinstance(child, (dict, list)) and child and data.draw(st.booleans()):
                node = child
                continue
            node[key] = data.draw(junk_values)
            break
    return doc


_path_like = st.one_of(
    _env_text,
    st.sampled_from(["good", "junk", "file", "empty", "inputs"]),
    st.sampled_from(
        [
            "hub:",
            "hub:org/name",
            "hub:org/name@",
            "hub:org/name@abc1234",
            "hub:../../x@y",
            "hub:org/name@../../x",
            "hub:/etc/passwd@x",
            "hub:org/na\nme@x",
            "hub:org/name@x\ny",
            "/",
            "/dev/null",
            "..",
        ]
    ),
    _text.map(lambda t: "hub:" + t),
)
_junk_json = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=10)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


@settings(max_examples=TOOL_JUNK_EXAMPLES, **SETTINGS)
@given(data=st.data(), command=st.sampled_from(["compare", "report", "history", "merge", "push"]))
def test_junk_paths_and_refs_to_the_tools_exit_2(data: st.DataObject, command: str) -> None:
    with workspace() as ws:
        paths = _tool_paths(ws)
        # A hand-edited results directory: junk in run.json and in one cell record.
        junk = Path(paths["junk"])
        for path in (junk / "run.json", data.draw(st.sampled_from(sorted((junk / "cells").glob("*.json"))))):
            path.write_text(json.dumps(_spoil(data, json.loads(path.read_text()), _junk_json)))

        def arg() -> str:
            value = data.draw(st.one_of(st.sampled_from(["good", "junk"]), _path_like))
            return paths.get(value, value)

        env: dict[str, str] = {}
        if command == "compare":
            argv = ["compare", arg(), arg()]
            argv += data.draw(
                st.sampled_from(
                    [
                        [],
                        ["--threshold", "x"],
                        ["--threshold", "tpot=-1"],
                        ["--alpha", "nan"],
                        ["--alpha", "2"],
                        ["--threshold", "nan"],
                        ["--format", "json"],
                    ]
                )
            )
        elif command == "report":
            argv = ["report", arg()]
        elif command == "history":
            if data.draw(st.booleans()):
                argv = ["history", arg()]
            else:
                argv = ["history", "--repo", data.draw(_env_text)]
            argv += ["--metric", data.draw(st.one_of(st.just("tpot"), _env_text))]
            argv += ["--cell", data.draw(st.one_of(st.just("c0"), _env_text))]
            argv += data.draw(
                st.sampled_from([[], ["--threshold", "nan"], ["--threshold", "-1"], ["--hardware", "x"]])
            )
        elif command == "merge":
            argv = ["merge", arg()]
        else:
            argv = ["push", arg(), "--repo", data.draw(st.one_of(st.just("org/name"), _env_text))]
            if data.draw(st.booleans()):
                env["HF_TOKEN"] = "hf_" + "T" * 34
        before = sorted(str(p) for p in ws.root.rglob("*"))
        outcome = invoke(argv, env)
        assert_clean(outcome)
        assert outcome.code in (0, 1, 2), outcome
        if outcome.code == 2:  # after any warnings (files skipped), one error line
            assert any(line.startswith("tfbench: error:") for line in outcome.err.splitlines()), outcome.err
        assert sorted(str(p) for p in ws.root.rglob("*")) == before  # reads only


@pytest.mark.parametrize(
    "argv_tail",
    [
        ["--html", "{file}/sub/report.html"],  # under a regular file
        ["--png", "{file}"],
        ["--html", "{inputs}"],
        ["--html", "bad\x00name.html"],
    ],
)
def test_unwritable_report_paths_exit_2(argv_tail: list[str]) -> None:
    with workspace() as ws:
        paths = _tool_paths(ws)
        tail = [a.format(**paths) for a in argv_tail]
        tools = [["report", paths["good"]], ["compare", paths["good"], paths["good"]]]
        # Rendering takes a second: only the cases with a file in the way go through compare too.
        for argv in tools if "{file}" in argv_tail[1] else tools[:1]:
            outcome = invoke([*argv, *tail])
            assert_clean(outcome)
            assert outcome.code == 2 and argv_tail[0] in outcome.err, outcome


# --------------------------------------------------------------------------- path traversal

TRAVERSALS = [
    "../x",
    "../../etc/x",
    "/tmp/abs",
    "a/../../b",
    "a/b",
    "..",
    ".",
    "a\x00b",
    "a\nb",
    "name\n",
    "a\\..\\b",
    "\u2024\u2024/x",
    "\uff0e\uff0e/x",
    "ａｂｃ",
    "x" * 300,
    "",
    " ",
    "-rf",
]


@pytest.mark.parametrize("name", TRAVERSALS)
def test_run_ids_and_names_cannot_leave_the_output_directory(name: str) -> None:
    cases: list[tuple[list[str], dict[str, str], str]] = [
        (["run", f"--run-name={name}"], {}, "run_name"),
        (["run", f"--revision={name}"], {}, "revision"),
    ]
    if "\x00" not in name:  # the OS passes no NUL in a variable or an argument
        cases += [
            (["run"], {"TFBENCH_RUN_ID": name}, "TFBENCH_RUN_ID"),
            (["run", f"--run-id={name}"], {}, "--run-id"),
            (["run"], {"TFBENCH_RUN_NAME": name}, "TFBENCH_RUN_NAME"),
            (["run", f"--model=org/{name}"], {}, "model"),
            (["run", f"--push-to-hub=org/{name}"], {}, "push_to_hub"),
        ]
    for argv, extra, named in cases:
        with workspace() as ws:
            config = write_config(ws.inputs)
            outcome = invoke(argv, {"TFBENCH_CONFIG": str(config), "TFBENCH_OUTPUT": str(ws.out), **extra})
            assert_clean(outcome)
            assert not (ws.root / "x").exists() and not (ws.root.parent / "x").exists()
            if name == "a/b" and named == "revision":
                continue  # a revision may hold a slash (refs/pr/1): it names a ref, never a path
            if name == "" and named in ("TFBENCH_RUN_ID", "--run-id"):
                assert outcome.code == RAN  # empty is unset: a new run with a generated id
                continue
            assert_refused(outcome, ws, named)


@settings(max_examples=RUN_ID_EXAMPLES, **SETTINGS)
@given(
    name=st.one_of(
        st.text(st.characters(codec="utf-8"), max_size=80),
        st.text("./\\-_aZ09\n\x00", max_size=20),
        st.sampled_from(TRAVERSALS),
    )
)
def test_any_accepted_run_id_resolves_inside_the_output_directory(name: str) -> None:
    output = Path(tempfile.gettempdir()) / "tfbench-out"

    def inside(path: Path) -> bool:
        resolved = path.resolve()
        return resolved != output.resolve() and resolved.is_relative_to(output.resolve())

    request = RunRequest(run_id=name, run_id_source="--run-id")
    for index, total in ((0, 1), (2, 3)):  # one config, or the third line of a JSONL file
        try:
            run_id = job_run_id(request, index, total)
        except UserError:
            continue
        if run_id is None:
            continue
        assert "\n" not in run_id and "\x00" not in run_id
        for shard in (None, Shard(0, 2).name):
            assert inside(RunDir(output, run_id, shard).path)
    try:
        cfg = BenchConfig.model_validate({**TINY, "run_name": name})
    except ValidationError:
        return
    assert inside(output / new_run_id(cfg.run_name, output))


@settings(max_examples=HUB_NAME_EXAMPLES, **SETTINGS)
@given(run_id=st.one_of(st.text(st.characters(codec="utf-8"), max_size=300), st.sampled_from(TRAVERSALS)))
def test_paths_in_the_hub_repo_stay_in_their_folder(run_id: str) -> None:
    name = hub._safe_name(run_id)
    assert name and name not in (".", "..") and len(name) <= 200
    assert "/" not in name and "\\" not in name and "\x00" not in name and "\n" not in name
    for folder in ("summarized", "full", "runs"):
        path = Path("/repo") / folder / name
        assert path.resolve().parent == Path("/repo") / folder


def test_a_run_id_from_the_hub_cannot_lead_a_download_out_of_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """compare hub:ORG/NAME@REF takes the name of the file to fetch from the dataset's run.json:
    a dataset whose run_id climbs out (../../x) is refused, and nothing lands outside the cache."""
    from huggingface_hub.utils import close_session

    from bench.hub.pull import load_hub_run
    from tests.hub_server import FakeHub

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("HF_TOKEN", "hf_" + "T" * 34)
    monkeypatch.setattr(hub, "_sleep", lambda s: None)
    close_session()
    run = make_run(tmp_path / "runs" / "evil", seed=1)
    meta = json.loads((run / "run.json").read_text())
    for run_id in ("../../escape", "a/../../escape", "/tmp/escape", "ok\nname"):
        meta["run_id"] = run_id
        (run / "run.json").write_text(json.dumps(meta))
        cache = tmp_path / "cache" / "inner"
        with FakeHub() as server:
            hub.push_run(run, "org/name", endpoint=server.endpoint, backoff=0)
            for path in server.repos["org/name"].files:
                assert not path.startswith("/") and not {".", ".."} & set(path.split("/")), path
            with pytest.raises(UserError, match="is no run id"):
                load_hub_run("org/name", run_id, endpoint=server.endpoint, cache_dir=cache)
        outside = [p for p in tmp_path.rglob("*escape*") if not p.is_relative_to(cache)]
        assert outside == [], outside
    close_session()


def test_a_local_model_directory_is_read_never_written(tmp_path: Path) -> None:
    """A model may be a mounted directory (read); nothing tfbench writes is ever placed there."""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    before = sorted(p.name for p in model_dir.rglob("*"))
    with workspace() as ws:
        config = write_config(ws.inputs, model=str(model_dir))
        outcome = invoke(["plan", "--config", str(config)])
        assert outcome.code == 0, outcome
        outcome = invoke(["run", "--config", str(config)], {"TFBENCH_OUTPUT": str(ws.out)})
        assert outcome.code == RAN, outcome
    assert sorted(p.name for p in model_dir.rglob("*")) == before


# ------------------------------------------------------------------ the real entry, as a process


def test_entry_refuses_junk_like_the_cli(tmp_path: Path) -> None:
    """The same classes through entrypoint.py: a junk field, a junk file, a python tag, a junk
    variable and a traversing run id all exit 2, name what is wrong, and create nothing."""
    marker = tmp_path / "MARKER"
    cases = [
        ({"batch_size": [1, "x" * 200]}, None, {}, "batch_size"),
        (None, b"\xff\xfe\x00junk", {}, "config.yaml"),
        (None, f'model: !!python/object/apply:os.system ["touch {marker}"]\n'.encode(), {}, "not valid YAML"),
        ({}, None, {"TFBENCH_SHARD": "1/0"}, "TFBENCH_SHARD"),
        ({}, None, {"TFBENCH_RUN_ID": "../escape"}, "TFBENCH_RUN_ID"),
        ({}, None, {"TFBENCH_CONFIG": str(tmp_path / "nope.yaml")}, "TFBENCH_CONFIG"),
        ({"run_name": "hf_" + "A1" * 17}, None, {}, "looks like an access token"),
    ]
    for i, (fields, raw, env, named) in enumerate(cases):
        d = tmp_path / f"case{i}"
        d.mkdir()
        if raw is not None:
            config = d / "config.yaml"
            config.write_bytes(raw)
        else:
            config = write_config(d, **(fields or {}))
        proc = run_entrypoint(config, d / "out", env=env, timeout=120)
        assert proc.returncode == 2, (named, proc.stderr)
        assert named in proc.stderr, (named, proc.stderr)
        assert "Traceback" not in proc.stderr and not (d / "out").exists()
        assert not (tmp_path / "escape").exists()
    assert not marker.exists()
    # The tools: a results file edited by hand, a traversing Hub ref, a name too long.
    good = make_run(tmp_path / "good", seed=1)
    edited = make_run(tmp_path / "edited", seed=2)
    meta = json.loads((edited / "run.json").read_text())
    meta["environment"] = 5
    (edited / "run.json").write_text(json.dumps(meta))
    config = write_config(tmp_path)
    for args, named in (
        (["compare", str(good), str(edited)], "not as tfbench writes them"),
        (["compare", str(good), "hub:../../x@abc1234"], "hub:ORG/NAME@REF = '../../x'"),
        (["report", "x" * 5000], "RUN_DIR"),
        (["history", str(tmp_path), "--metric", "tpot", "--cell", "../../x"], "../../x"),
    ):
        proc = run_entrypoint(config, tmp_path / "out", *args, timeout=120)
        assert proc.returncode == 2 and named in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
