"""Config loading and validation: file formats, precedence, env parsing and every kind of mistake.

Offline and fast: no torch, no model. Errors are checked both at the API (ConfigError) and
through `tfbench plan --json` (exit 2, a message on stderr, nothing on stdout, no traceback).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from bench.cli import main
from bench.config.schema import ATTN_IMPLEMENTATIONS, BenchConfig, HubKernel, hub_kernel
from bench.config.sources import load_configs, parse_text_value, read_env, validate
from bench.errors import ConfigError, ConfigNotFoundError

MODEL = "synthetic:llama-tiny"
BASE = f"model: {MODEL}\ndevice: cpu\n"


@pytest.fixture(autouse=True)
def _no_tfbench_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """cli.main reads os.environ: a TFBENCH_* variable of the developer's shell must not leak in."""
    for name in list(os.environ):
        if name.startswith("TFBENCH_"):
            monkeypatch.delenv(name)


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def load_one(path: Path, environ: dict[str, str] | None = None, flags: dict[str, Any] | None = None):
    (loaded,) = load_configs(path, environ={} if environ is None else environ, flags=flags)
    return loaded


def plan_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(["plan", *argv, "--json"])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_exit_2(rc: int, out: str, err: str, *fragments: str) -> None:
    assert rc == 2
    assert out == ""
    assert "Traceback" not in err
    assert err.startswith(("tfbench: error: invalid config", "tfbench: error: no config found"))
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in:\n{err}"


# ---------------------------------------------------------------------------------------------
# File formats and finding the file
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["bench.yaml", "bench.yml"])
def test_loads_yaml_and_yml(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, name, BASE + "batch_size: [1, 2]\nattn_implementation: eager\n")
    loaded = load_one(path)
    assert loaded.source == str(path)
    assert loaded.config.model == MODEL
    assert loaded.config.batch_size == [1, 2]
    assert loaded.config.attn_implementation == ["eager"]
    assert loaded.origins["batch_size"] == f"file {path}"


def test_loads_json(tmp_path: Path) -> None:
    path = write(tmp_path, "bench.json", json.dumps({"model": MODEL, "sequence_length": [16, 32], "seed": 7}))
    loaded = load_one(path)
    assert loaded.source == str(path)
    assert loaded.config.sequence_length == [16, 32]
    assert loaded.config.seed == 7


def test_loads_jsonl_one_config_per_line_in_order(tmp_path: Path) -> None:
    lines = [
        "# three runs of the same model",
        json.dumps({"model": MODEL, "batch_size": 1}),
        "",
        json.dumps({"model": MODEL, "batch_size": 2}),
        "   ",
        "  # an indented comment",
        json.dumps({"model": MODEL, "batch_size": 3}),
    ]
    path = write(tmp_path, "runs.jsonl", "\n".join(lines) + "\n")
    loaded = load_configs(path, environ={})
    assert [lc.config.batch_size for lc in loaded] == [[1], [2], [3]]
    # Labels count physical lines, comments and blank lines included.
    assert [lc.source for lc in loaded] == [f"{path} line 2", f"{path} line 4", f"{path} line 7"]


def test_env_applies_to_every_jsonl_line(tmp_path: Path) -> None:
    lines = [json.dumps({"model": MODEL, "batch_size": b, "seed": b}) for b in (1, 2)]
    path = write(tmp_path, "runs.jsonl", "\n".join(lines))
    loaded = load_configs(path, environ={"TFBENCH_SEED": "9"})
    assert [lc.config.seed for lc in loaded] == [9, 9]
    assert [lc.config.batch_size for lc in loaded] == [[1], [2]]


def test_loads_directory_with_config_yaml(tmp_path: Path) -> None:
    write(tmp_path, "config.yaml", BASE + "batch_size: 8\n")
    write(tmp_path, "notes.txt", "not a config")
    loaded = load_one(tmp_path)
    assert loaded.source == str(tmp_path / "config.yaml")
    assert loaded.config.batch_size == [8]


def test_directory_with_two_config_files_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, "config.yaml", BASE)
    write(tmp_path, "config.json", json.dumps({"model": MODEL}))
    with pytest.raises(ConfigError) as exc:
        load_configs(tmp_path, environ={})
    message = str(exc.value)
    assert "more than one config file" in message
    assert "config.yaml" in message and "config.json" in message


def test_directory_without_config_file_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, "other.yaml", BASE)
    with pytest.raises(ConfigNotFoundError) as exc:
        load_configs(tmp_path, environ={})
    message = str(exc.value)
    assert f"no config found in directory {tmp_path}" in message
    assert "config.yaml, config.yml, config.json, config.jsonl" in message


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigNotFoundError, match="does not exist") as exc:
        load_configs(missing, environ={})
    assert str(missing) in str(exc.value)


def test_wrong_suffix_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "bench.toml", 'model = "x"\n')
    with pytest.raises(ConfigError) as exc:
        load_configs(path, environ={})
    message = str(exc.value)
    assert "suffix '.toml'" in message
    assert ".yaml, .yml, .json, .jsonl" in message


@pytest.mark.parametrize(
    ("name", "text", "fragment"),
    [
        ("missing.yaml", None, "does not exist"),
        ("bench.txt", BASE, "suffix '.txt'"),
    ],
)
def test_file_problems_exit_2_through_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, text: str | None, fragment: str
) -> None:
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    rc, out, err = plan_json(capsys, "--config", str(path))
    assert_exit_2(rc, out, err, fragment, str(path))


def test_cli_plan_json_for_a_valid_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "bench.yaml", BASE + "batch_size: [1, 2]\n")
    rc, out, err = plan_json(capsys, "--config", str(path))
    assert rc == 0, err
    payload = json.loads(out)
    assert payload["source"] == str(path)
    assert payload["config"]["batch_size"] == [1, 2]
    assert [c["batch_size"] for c in payload["cells"]] == [1, 2]


def test_cli_jsonl_prints_one_plan_per_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = [json.dumps({"model": MODEL, "device": "cpu", "batch_size": b}) for b in (1, 2)]
    path = write(tmp_path, "runs.jsonl", "\n".join(lines))
    rc, out, err = plan_json(capsys, "--config", str(path))
    assert rc == 0, err
    payload = json.loads(out)
    assert isinstance(payload, list)
    assert [p["source"] for p in payload] == [f"{path} line 1", f"{path} line 2"]


def test_cli_config_from_tfbench_config_env(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "bench.yaml", BASE + "batch_size: 5\n")
    monkeypatch.setenv("TFBENCH_CONFIG", str(path))
    rc, out, err = plan_json(capsys)
    assert rc == 0, err
    assert json.loads(out)["config"]["batch_size"] == [5]


# ---------------------------------------------------------------------------------------------
# Precedence: flag > env > file > default
# ---------------------------------------------------------------------------------------------


def test_precedence_flag_env_file_default(tmp_path: Path) -> None:
    with_key = write(tmp_path, "with.yaml", BASE + "batch_size: 2\n")
    without_key = write(tmp_path, "without.yaml", BASE)
    env = {"TFBENCH_BATCH_SIZE": "3"}
    flags = {"batch_size": 4}

    loaded = load_one(with_key, env, flags)
    assert loaded.config.batch_size == [4]
    assert loaded.origins["batch_size"] == "flag --batch-size"

    loaded = load_one(with_key, env)
    assert loaded.config.batch_size == [3]
    assert loaded.origins["batch_size"] == "env TFBENCH_BATCH_SIZE"

    loaded = load_one(with_key)
    assert loaded.config.batch_size == [2]
    assert loaded.origins["batch_size"] == f"file {with_key}"

    loaded = load_one(without_key)
    assert loaded.config.batch_size == [1]
    assert "batch_size" not in loaded.origins


def test_precedence_applies_per_field(tmp_path: Path) -> None:
    path = write(tmp_path, "bench.yaml", BASE + "batch_size: 2\nseed: 11\nrun_name: from-file\n")
    loaded = load_one(path, {"TFBENCH_SEED": "12"}, {"run_name": "from-flag"})
    assert loaded.config.batch_size == [2]
    assert loaded.config.seed == 12
    assert loaded.config.run_name == "from-flag"


def test_precedence_through_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with_key = write(tmp_path, "with.yaml", BASE + "batch_size: 2\n")
    without_key = write(tmp_path, "without.yaml", BASE)

    def batch_size(path: Path, *flags: str) -> list[int]:
        rc, out, err = plan_json(capsys, "--config", str(path), *flags)
        assert rc == 0, err
        return json.loads(out)["config"]["batch_size"]

    monkeypatch.setenv("TFBENCH_BATCH_SIZE", "3")
    assert batch_size(with_key, "--batch-size", "4") == [4]
    assert batch_size(with_key) == [3]
    monkeypatch.delenv("TFBENCH_BATCH_SIZE")
    assert batch_size(with_key) == [2]
    assert batch_size(without_key) == [1]


def test_defaults_when_nothing_else_is_given() -> None:
    (loaded,) = load_configs(None, environ={"TFBENCH_MODEL": MODEL})
    config = loaded.config
    assert loaded.source == "defaults"
    assert config.batch_size == [1]
    assert config.sequence_length == [128]
    assert config.attn_implementation == ["sdpa"]
    assert config.compile == [None]
    assert config.coverage is None
    assert config.warmup_iterations == 5
    assert config.measurement_iterations == 20


# ---------------------------------------------------------------------------------------------
# Parsing env and flag text
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "text", "expected"),
    [
        ("batch_size", "1,2,4", [1, 2, 4]),
        ("batch_size", "[1, 2]", [1, 2]),
        ("batch_size", " 3 ", 3),
        ("trust_remote_code", "true", True),
        ("gpu_monitoring", "false", False),
        ("compile", "none", None),
        ("compile", "null", None),
        ("compile", "default,max-autotune", ["default", "max-autotune"]),
        ("compile", "default, none", ["default", None]),
        ("kernelize", "true,false", [True, False]),
        ("attn_implementation", "eager, sdpa", ["eager", "sdpa"]),
        # Free-text fields stay text even when YAML would read a number or a bool.
        ("run_name", "123", "123"),
        ("revision", "true", "true"),
        ("model", MODEL, MODEL),
        # Not a list field: a comma stays part of the value.
        ("seed", "1,2", "1,2"),
    ],
)
def test_parse_text_value(key: str, text: str, expected: Any) -> None:
    assert parse_text_value(key, text) == expected


def test_read_env_parses_values_and_ignores_other_variables() -> None:
    environ = {
        "TFBENCH_BATCH_SIZE": "1,2,4",
        "TFBENCH_TRUST_REMOTE_CODE": "true",
        "TFBENCH_CONFIG": "some/dir",  # not a field, but known
        "TFBENCH_RUN_ID": "r1",
        "TFBENCH_COMMIT": "abc",
        "PATH": "/usr/bin",
        "tfbench_batch_size": "9",  # prefix is case-sensitive
    }
    assert read_env(environ) == {
        "batch_size": ("TFBENCH_BATCH_SIZE", [1, 2, 4]),
        "trust_remote_code": ("TFBENCH_TRUST_REMOTE_CODE", True),
    }


@pytest.mark.parametrize("text", ["none", "null"])
def test_env_compile_none_means_uncompiled(text: str) -> None:
    (loaded,) = load_configs(None, environ={"TFBENCH_MODEL": MODEL, "TFBENCH_COMPILE": text})
    assert loaded.config.compile == [None]


def test_env_compile_list() -> None:
    environ = {"TFBENCH_MODEL": MODEL, "TFBENCH_COMPILE": "default,max-autotune"}
    (loaded,) = load_configs(None, environ=environ)
    assert loaded.config.compile == ["default", "max-autotune"]


def test_env_bool_and_lists_reach_the_config() -> None:
    environ = {
        "TFBENCH_MODEL": MODEL,
        "TFBENCH_BATCH_SIZE": "[1, 2]",
        "TFBENCH_SEQUENCE_LENGTH": "16,32",
        "TFBENCH_TRUST_REMOTE_CODE": "true",
        "TFBENCH_KERNELIZE": "false,true",
    }
    (loaded,) = load_configs(None, environ=environ)
    config = loaded.config
    assert config.batch_size == [1, 2]
    assert config.sequence_length == [16, 32]
    assert config.trust_remote_code is True
    assert config.kernelize == [False, True]


def test_cli_flags_are_parsed_like_env(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "bench.yaml", BASE)
    rc, out, err = plan_json(
        capsys, "--config", str(path), "--batch-size", "1,2", "--compile", "none", "--trust-remote-code"
    )
    assert rc == 0, err
    config = json.loads(out)["config"]
    assert config["batch_size"] == [1, 2]
    assert config["compile"] == [None]
    assert config["trust_remote_code"] is True


def test_unknown_cli_flag_is_an_argparse_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["plan", "--batchsize", "2"])
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "--batchsize" in err


# ---------------------------------------------------------------------------------------------
# Bad values: each names the field, the value, what is allowed and where it came from
# ---------------------------------------------------------------------------------------------

POSITIVE = "a positive integer or a list of distinct positive integers"

# (id, YAML lines added to BASE, fragments the message must contain; {path} is the file)
BAD_FILE_VALUES = [
    (
        "unknown-key",
        "batchsize: 2\n",
        [
            "unknown field 'batchsize'",
            "(did you mean 'batch_size'?)",
            "(file {path})",
            "allowed fields: model,",
        ],
    ),
    (
        "string-for-int",
        'batch_size: "4"\n',
        ["batch_size = '4'", "valid integer", POSITIVE, "[from file {path}]"],
    ),
    (
        "bool-for-int",
        "batch_size: true\n",
        ["batch_size = true", "valid integer", POSITIVE, "[from file {path}]"],
    ),
    ("float-for-int", "batch_size: 2.0\n", ["batch_size = 2.0", "valid integer", POSITIVE]),
    ("batch-size-0", "batch_size: 0\n", ["batch_size = 0", "greater than or equal to 1", POSITIVE, "{path}"]),
    (
        "measurement-0",
        "measurement_iterations: 0\n",
        ["measurement_iterations = 0", "allowed: an integer >= 1", "[from file {path}]"],
    ),
    (
        "warmup-negative",
        "warmup_iterations: -1\n",
        ["warmup_iterations = -1", "allowed: an integer >= 0", "[from file {path}]"],
    ),
    ("coverage-5", "coverage: 5\n", ["coverage = 5", "an integer from 0 to 4", "[from file {path}]"]),
    (
        "timeout-0",
        "cell_timeout_s: 0\n",
        ["cell_timeout_s = 0", "a number of seconds > 0", "[from file {path}]"],
    ),
    (
        "timeout-nan",
        "cell_timeout_s: .nan\n",
        ["cell_timeout_s = NaN", "finite number", "a number of seconds > 0", "[from file {path}]"],
    ),
    ("timeout-inf", "cell_timeout_s: .inf\n", ["cell_timeout_s = Infinity", "finite number"]),
    (
        "unknown-attn",
        "attn_implementation: flash\n",
        [
            "attn_implementation = 'flash'",
            "eager, sdpa, flex_attention, flash_attention_2",
            "[from file {path}]",
        ],
    ),
    (
        "unknown-attn-in-list",
        "attn_implementation: [sdpa, flash_attention_3]\n",
        ['attn_implementation = ["sdpa", "flash_attention_3"]', "one or a list of eager, sdpa"],
    ),
    (
        "hub-kernel-empty-revision",
        "attn_implementation: kernels-community/flash-attn2@\n",
        [
            "attn_implementation = 'kernels-community/flash-attn2@'",
            "not a hub kernel name of the form ORG/NAME[@REVISION][:FUNCTION]",
            "allowed: one or a list of eager, sdpa, flex_attention, flash_attention_2, or a hub kernel",
            "[from file {path}]",
        ],
    ),
    (
        "hub-kernel-bare-name",  # transformers' kernel names always carry their org
        "attn_implementation: vllm-flash-attn3\n",
        ["attn_implementation = 'vllm-flash-attn3'", "nor a hub kernel ORG/NAME[@REVISION][:FUNCTION]"],
    ),
    (
        "unknown-compile-mode",
        "compile: fast\n",
        [
            "compile = 'fast'",
            "null (no compile) or one of default, reduce-overhead, max-autotune, max-autotune-no-cudagraphs",
            "[from file {path}]",
        ],
    ),
    # In a file, "none" is a string, not null (only env and flags read it as null).
    ("compile-none-string-in-file", "compile: none\n", ["compile = 'none'", "null (no compile)"]),
    (
        "duplicate-batch",
        "batch_size: [1, 2, 1]\n",
        ["batch_size = [1, 2, 1]", "1 is listed twice", POSITIVE, "[from file {path}]"],
    ),
    (
        "duplicate-attn",
        "attn_implementation: [sdpa, eager, sdpa]\n",
        ["'sdpa' is listed twice", "[from file {path}]"],
    ),
    ("duplicate-compile-null", "compile: [null, default, null]\n", ["None is listed twice"]),
    ("empty-list", "sequence_length: []\n", ["sequence_length = []", "the list is empty", POSITIVE]),
    (
        "unknown-preset",
        "model: synthetic:llama-huge\n",
        [
            "model = 'synthetic:llama-huge'",
            "unknown synthetic preset 'llama-huge'",
            "llama-tiny, llama-small",
        ],
    ),
    (
        "model-config-unknown-key",
        "model_config: {hiden_size: 32}\n",
        [
            "model_config.hiden_size = 32",
            "not a setting of preset llama-tiny",
            "(did you mean 'hidden_size'?)",
            "allowed: hidden_size, intermediate_size",
            "[from file {path}]",
        ],
    ),
    (
        "model-config-with-hub-model",
        "model: meta-llama/Llama-3.2-1B\nmodel_config: {num_hidden_layers: 1}\n",
        ['model_config = {"num_hidden_layers": 1}', "only applies to synthetic:<preset> models"],
    ),
    (
        "coverage-with-axis",
        "coverage: 1\nattn_implementation: sdpa\n",
        ['attn_implementation = ["sdpa"]', "cannot be combined with coverage=1", "[from file {path}]"],
    ),
    (
        "fullgraph-without-compile",
        "compile_fullgraph: true\n",
        ["compile_fullgraph = true", "has no effect without a compile mode", "[from file {path}]"],
    ),
    (
        "dynamic-without-compile",
        "compile: [null]\ncompile_dynamic: false\n",
        ["compile_dynamic = false", "has no effect without a compile mode"],
    ),
    (
        "run-name-traversal",
        "run_name: ../x\n",
        ["run_name = '../x'", "not a valid run name", "1-64 characters", "[from file {path}]"],
    ),
    ("run-name-space", "run_name: a b\n", ["run_name = 'a b'", "not a valid run name", "1-64 characters"]),
    (
        "trust-remote-code-string",
        "trust_remote_code: 'yes'\n",
        ["trust_remote_code = 'yes'", "true or false"],
    ),
    ("bad-revision", "revision: ../main\n", ["revision = '../main'", "not a valid revision"]),
    (
        "unknown-quantization",
        "quantization: [none, int4]\n",
        [
            'quantization = ["none", "int4"]',
            "allowed: one or a list of none, torchao-int8-weight-only, torchao-int8-weight-int8-activation, "
            "bnb-8bit, bnb-4bit",
            "[from file {path}]",
        ],
    ),
    ("quantization-twice", "quantization: [bnb-4bit, bnb-4bit]\n", ["'bnb-4bit' is listed twice"]),
]


@pytest.mark.parametrize(
    ("lines", "fragments"), [c[1:] for c in BAD_FILE_VALUES], ids=[c[0] for c in BAD_FILE_VALUES]
)
def test_bad_value_raises_config_error(tmp_path: Path, lines: str, fragments: list[str]) -> None:
    path = write(tmp_path, "bench.yaml", BASE + lines)
    with pytest.raises(ConfigError) as exc:
        load_configs(path, environ={})
    assert exc.value.source == str(path)
    message = str(exc.value)
    assert message.startswith(f"invalid config ({path}):")
    for fragment in fragments:
        assert fragment.replace("{path}", str(path)) in message, message


@pytest.mark.parametrize(
    ("lines", "fragments"), [c[1:] for c in BAD_FILE_VALUES], ids=[c[0] for c in BAD_FILE_VALUES]
)
def test_bad_value_exits_2_through_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], lines: str, fragments: list[str]
) -> None:
    path = write(tmp_path, "bench.yaml", BASE + lines)
    rc, out, err = plan_json(capsys, "--config", str(path))
    assert_exit_2(rc, out, err, *(f.replace("{path}", str(path)) for f in fragments))


def test_model_path_that_does_not_exist(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "models" / "llama"
    path = write(tmp_path, "bench.yaml", f"model: {missing}\ndevice: cpu\n")
    rc, out, err = plan_json(capsys, "--config", str(path))
    assert_exit_2(rc, out, err, f"model = '{missing}'", "no such model directory", "a hub id (org/name)")


def test_model_path_that_exists_is_accepted(tmp_path: Path) -> None:
    model_dir = tmp_path / "models" / "llama"
    model_dir.mkdir(parents=True)
    path = write(tmp_path, "bench.yaml", f"model: {model_dir}\ndevice: cpu\n")
    assert load_one(path).config.model == str(model_dir)


@pytest.mark.parametrize("model", ["./missing-model", "~/no-such-model-dir-tfbench", "a/b/c"])
def test_path_like_models_must_exist(model: str) -> None:
    with pytest.raises(ConfigError, match="no such model directory"):
        validate({"model": model}, {}, "test")


# ---------------------------------------------------------------------------------------------
# Attention kernels from the Hub


@pytest.mark.parametrize(
    ("value", "kernel"),
    [
        ("kernels-community/flash-attn2", HubKernel("kernels-community/flash-attn2", None, None)),
        ("kernels-community/flash-attn2@v4", HubKernel("kernels-community/flash-attn2", "v4", None)),
        (
            "kernels-community/vllm-flash-attn3@v1",
            HubKernel("kernels-community/vllm-flash-attn3", "v1", None),
        ),
        (
            "kernels-community/flash-attn3@" + "0123456789abcdef" * 2 + "01234567",
            HubKernel("kernels-community/flash-attn3", "0123456789abcdef" * 2 + "01234567", None),
        ),
        ("org/kernel@v1.2.3:custom_kernel", HubKernel("org/kernel", "v1.2.3", "custom_kernel")),
        ("org/kernel:custom_kernel", HubKernel("org/kernel", None, "custom_kernel")),
    ],
)
def test_hub_kernels_are_attention_implementations(value: str, kernel: HubKernel) -> None:
    """transformers' forms (ORG/NAME[@REVISION][:FUNCTION]), alone or beside the built-ins."""
    assert hub_kernel(value) == kernel
    config = validate({"model": MODEL, "attn_implementation": ["sdpa", value]}, {}, "test").config
    assert config.attn_implementation == ["sdpa", value]
    listed = validate({"model": MODEL, "combinations": [{"attn_implementation": value}]}, {}, "test").config
    assert listed.combinations[0].attn_implementation == value


@pytest.mark.parametrize(
    "value",
    [
        "kernels-community/flash-attn2@",  # an empty revision
        "kernels-community/flash-attn2@refs/pr/1",  # transformers splits on / and :
        "kernels-community/flash-attn2:",
        "kernels-community/flash-attn2@v4:fn:more",
        "a/b/c",
        "org/../kernel",
        "org /kernel",
        "org/kernel@v4\n",
        "/kernel",
        "o/" + "k" * 95,  # longer than a Hub repo id
        "flash_attention_3",
        "vllm-flash-attn3",
    ],
)
def test_malformed_hub_kernels_are_refused_naming_the_form(value: str) -> None:
    assert hub_kernel(value) is None
    with pytest.raises(ConfigError) as exc:
        validate({"model": MODEL, "attn_implementation": value}, {"attn_implementation": "file x"}, "test")
    (problem,) = exc.value.problems
    assert problem.startswith("attn_implementation = ")
    assert "ORG/NAME[@REVISION][:FUNCTION]" in problem and "eager, sdpa" in problem
    assert "[from file x]" in problem


def test_a_malformed_hub_kernel_in_a_combination_names_the_form() -> None:
    with pytest.raises(ConfigError) as exc:
        validate({"model": MODEL, "combinations": [{"attn_implementation": "a/b/c"}]}, {}, "test")
    (problem,) = exc.value.problems
    assert problem.startswith("combinations.0.attn_implementation = 'a/b/c'")
    assert "not a hub kernel name of the form ORG/NAME[@REVISION][:FUNCTION]" in problem


def test_hub_kernels_from_env_and_flags_keep_their_separators() -> None:
    value = "kernels-community/flash-attn2@v4:fn"
    assert parse_text_value("attn_implementation", f"sdpa,{value}") == ["sdpa", value]
    (loaded,) = load_configs(
        None, environ={"TFBENCH_MODEL": MODEL, "TFBENCH_ATTN_IMPLEMENTATION": f"eager, {value}"}
    )
    assert loaded.config.attn_implementation == ["eager", value]


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, "bench.yaml", BASE + "batch_size: 0\ncoverage: 9\nrun_name: a b\n")
    with pytest.raises(ConfigError) as exc:
        load_configs(path, environ={})
    problems = exc.value.problems
    assert len(problems) == 3
    assert [p.split(" = ")[0] for p in problems] == ["batch_size", "coverage", "run_name"]


def test_missing_model_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "bench.yaml", "device: cpu\n")
    with pytest.raises(ConfigError, match="field 'model' is required"):
        load_configs(path, environ={})


def test_unknown_env_variable(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    path = write(tmp_path, "bench.yaml", BASE)
    monkeypatch.setenv("TFBENCH_FOO", "1")
    rc, out, err = plan_json(capsys, "--config", str(path))
    assert_exit_2(rc, out, err, "(environment)", "environment variable TFBENCH_FOO is not a tfbench setting")


def test_unknown_env_variable_suggests_the_close_name() -> None:
    with pytest.raises(ConfigError) as exc:
        read_env({"TFBENCH_BATCHSIZE": "2"})
    assert exc.value.source == "environment"
    assert exc.value.problems == [
        "environment variable TFBENCH_BATCHSIZE is not a tfbench setting (did you mean 'TFBENCH_BATCH_SIZE'?)"
    ]


def test_invalid_env_value(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    path = write(tmp_path, "bench.yaml", BASE)
    monkeypatch.setenv("TFBENCH_BATCH_SIZE", "abc")
    rc, out, err = plan_json(capsys, "--config", str(path))
    assert_exit_2(
        rc, out, err, "batch_size = 'abc'", "valid integer", POSITIVE, "[from env TFBENCH_BATCH_SIZE]"
    )


def test_invalid_env_list_item() -> None:
    with pytest.raises(ConfigError) as exc:
        load_configs(None, environ={"TFBENCH_MODEL": MODEL, "TFBENCH_ATTN_IMPLEMENTATION": "sdpa,flash"})
    message = str(exc.value)
    assert 'attn_implementation = ["sdpa", "flash"]' in message
    assert "[from env TFBENCH_ATTN_IMPLEMENTATION]" in message


def test_invalid_flag_value(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "bench.yaml", BASE)
    rc, out, err = plan_json(capsys, "--config", str(path), "--warmup-iterations", "-3")
    assert_exit_2(
        rc, out, err, "warmup_iterations = -3", "an integer >= 0", "[from flag --warmup-iterations]"
    )


def test_coverage_conflict_names_the_env_source() -> None:
    environ = {"TFBENCH_MODEL": MODEL, "TFBENCH_COVERAGE": "2", "TFBENCH_COMPILE": "default"}
    with pytest.raises(ConfigError) as exc:
        load_configs(None, environ=environ)
    (problem,) = exc.value.problems
    assert problem.startswith('compile = ["default"]: cannot be combined with coverage=2')
    assert problem.endswith("[from env TFBENCH_COMPILE]")


# ---------------------------------------------------------------------------------------------
# Files that do not parse
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text", "fragments"),
    [
        ("bad.yaml", BASE + "batch_size: [1, 2\n", ["not valid YAML"]),
        ("bad.json", '{"model": "synthetic:llama-tiny",}', ["not valid JSON", "line 1"]),
        ("empty.json", "", ["not valid JSON"]),
        (
            "list.yaml",
            "- model: synthetic:llama-tiny\n",
            ["the top level must be a mapping of fields, got list"],
        ),
        ("scalar.json", "42", ["the top level must be a mapping of fields, got int"]),
    ],
)
def test_unparseable_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, text: str, fragments: list[str]
) -> None:
    path = write(tmp_path, name, text)
    with pytest.raises(ConfigError) as exc:
        load_configs(path, environ={})
    assert exc.value.source == str(path)
    rc, out, err = plan_json(capsys, "--config", str(path))
    assert_exit_2(rc, out, err, f"({path})", *fragments)


def test_jsonl_line_that_is_not_an_object_names_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [json.dumps({"model": MODEL, "device": "cpu"}), "", json.dumps([{"model": MODEL}])]
    path = write(tmp_path, "runs.jsonl", "\n".join(lines))
    rc, out, err = plan_json(capsys, "--config", str(path))
    assert_exit_2(rc, out, err, f"({path} line 3)", "the top level must be a mapping of fields, got list")


def test_jsonl_line_with_bad_json_names_the_line(tmp_path: Path) -> None:
    lines = [json.dumps({"model": MODEL}), "{'model': 'single quotes'}"]
    path = write(tmp_path, "runs.jsonl", "\n".join(lines))
    with pytest.raises(ConfigError) as exc:
        load_configs(path, environ={})
    assert exc.value.source == f"{path} line 2"
    assert "not valid JSON" in str(exc.value)


def test_jsonl_bad_value_names_the_line(tmp_path: Path) -> None:
    lines = [json.dumps({"model": MODEL}), json.dumps({"model": MODEL, "batch_size": 0})]
    path = write(tmp_path, "runs.jsonl", "\n".join(lines))
    with pytest.raises(ConfigError) as exc:
        load_configs(path, environ={})
    assert exc.value.source == f"{path} line 2"
    assert f"[from file {path} line 2]" in str(exc.value)


def test_jsonl_without_config_lines_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "runs.jsonl", "# nothing here\n\n")
    with pytest.raises(ConfigError, match="no config line"):
        load_configs(path, environ={})


def test_yaml_is_loaded_safely(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "hacked"
    path = write(
        tmp_path,
        "evil.yaml",
        BASE + f'run_name: !!python/object/apply:os.system ["touch {marker}"]\n',
    )
    rc, out, err = plan_json(capsys, "--config", str(path))
    assert_exit_2(rc, out, err, "not valid YAML", "python/object/apply:os.system")
    assert not marker.exists()


def test_yaml_python_tag_at_top_level_is_rejected(tmp_path: Path) -> None:
    marker = tmp_path / "hacked"
    path = write(tmp_path, "evil.yaml", f'!!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_configs(path, environ={})
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# Safe defaults
# ---------------------------------------------------------------------------------------------


def test_trust_remote_code_defaults_to_false(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert BenchConfig.model_fields["trust_remote_code"].default is False
    path = write(tmp_path, "bench.yaml", BASE)
    assert load_one(path).config.trust_remote_code is False
    rc, out, err = plan_json(capsys, "--config", str(path))
    assert rc == 0, err
    assert json.loads(out)["config"]["trust_remote_code"] is False


def test_embedded_default_config_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = plan_json(capsys)
    assert rc == 0, err
    payload = json.loads(out)
    assert payload["config"]["trust_remote_code"] is False
    assert payload["config"]["device"] == "cpu"
    assert {c["attn_implementation"] for c in payload["cells"]} <= set(ATTN_IMPLEMENTATIONS)
    assert len(payload["cells"]) == 4  # [eager, sdpa] x batch [1, 4]


# ---------------------------------------------------------------------------------------------
# Values that once slipped through validation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ['"300"', "true"])
def test_cell_timeout_rejects_non_numbers(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, "bench.yaml", BASE + f"cell_timeout_s: {value}\n")
    with pytest.raises(ConfigError, match="cell_timeout_s"):
        load_configs(path, environ={})


def test_non_numeric_max_positions_override_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "bench.yaml", BASE + "model_config: {max_position_embeddings: abc}\n")
    rc, out, err = plan_json(capsys, "--config", str(path))
    assert_exit_2(rc, out, err, "max_position_embeddings")


def test_unknown_env_variable_without_a_close_name_gets_no_suggestion() -> None:
    with pytest.raises(ConfigError) as exc:
        read_env({"TFBENCH_FOO": "1"})
    assert exc.value.problems == ["environment variable TFBENCH_FOO is not a tfbench setting"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("[1]", "must be an integer"),
        ("2.5", "must be an integer"),
        ("-4", "must be >= 0"),
        ("true", "must be an integer"),
    ],
)
def test_model_config_values_keep_the_preset_types(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], override: str, message: str
) -> None:
    path = write(tmp_path, "bench.yaml", BASE + f"model_config: {{num_hidden_layers: {override}}}\n")
    rc, out, err = plan_json(capsys, "--config", str(path))
    assert_exit_2(rc, out, err, "model_config.num_hidden_layers", message)


def test_fault_spec_typo_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    path = write(tmp_path, "bench.yaml", BASE)
    monkeypatch.setenv("TFBENCH_FAULT", "*:explode")
    rc, out, err = plan_json(capsys, "--config", str(path))
    assert_exit_2(rc, out, err, "TFBENCH_FAULT", "kinds: raise, oom")


# ---------------------------------------------------------------------------------------------
# cell_memory_limit_gb
# ---------------------------------------------------------------------------------------------


def test_cell_memory_limit_defaults_to_none_and_reads_every_source(tmp_path: Path) -> None:
    assert BenchConfig.model_fields["cell_memory_limit_gb"].default is None
    path = write(tmp_path, "bench.yaml", BASE + "cell_memory_limit_gb: 12\n")
    assert load_one(write(tmp_path, "plain.yaml", BASE)).config.cell_memory_limit_gb is None
    assert load_one(path).config.cell_memory_limit_gb == 12
    loaded = load_one(path, environ={"TFBENCH_CELL_MEMORY_LIMIT_GB": "1.5"})
    assert loaded.config.cell_memory_limit_gb == 1.5
    assert loaded.origins["cell_memory_limit_gb"] == "env TFBENCH_CELL_MEMORY_LIMIT_GB"
    assert (
        load_one(path, environ={"TFBENCH_CELL_MEMORY_LIMIT_GB": "null"}).config.cell_memory_limit_gb is None
    )
    flag = load_one(path, flags={"cell_memory_limit_gb": parse_text_value("cell_memory_limit_gb", "0.5")})
    assert flag.config.cell_memory_limit_gb == 0.5


@pytest.mark.parametrize("value", ["0", "-1", "true", "lots", ".inf"])
def test_cell_memory_limit_rejects_what_is_not_a_positive_number(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    path = write(tmp_path, "bench.yaml", BASE + f"cell_memory_limit_gb: {value}\n")
    rc, out, err = plan_json(capsys, "--config", str(path))
    assert_exit_2(rc, out, err, "cell_memory_limit_gb = ", "a number of GiB > 0", f"[from file {path}]")


def test_cell_memory_limit_from_the_environment_exits_2_when_wrong(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "bench.yaml", BASE)
    monkeypatch.setenv("TFBENCH_CELL_MEMORY_LIMIT_GB", "0")
    rc, out, err = plan_json(capsys, "--config", str(path))
    assert_exit_2(rc, out, err, "cell_memory_limit_gb = 0", "[from env TFBENCH_CELL_MEMORY_LIMIT_GB]")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("none", ["none"]),
        ("torchao-int8-weight-only", ["torchao-int8-weight-only"]),
        ("none,bnb-4bit,bnb-8bit", ["none", "bnb-4bit", "bnb-8bit"]),
        ("[torchao-int8-weight-only, none]", ["torchao-int8-weight-only", "none"]),
    ],
)
def test_env_quantization(text: str, expected: list[str]) -> None:
    # "none" reads as null from the environment (as compile's does); here it is the unquantized model.
    (loaded,) = load_configs(None, environ={"TFBENCH_MODEL": MODEL, "TFBENCH_QUANTIZATION": text})
    assert loaded.config.quantization == expected


def test_quantization_defaults_to_none_and_crosses_listed_combinations() -> None:
    (loaded,) = load_configs(None, environ={"TFBENCH_MODEL": MODEL})
    assert loaded.config.quantization == ["none"]
    config = validate(
        {
            "model": MODEL,
            "combinations": [{"attn_implementation": "sdpa"}],
            "quantization": ["none", "bnb-4bit"],
        },
        {},
        "test",
    ).config
    assert config.quantization == ["none", "bnb-4bit"]


def test_invalid_env_quantization() -> None:
    with pytest.raises(ConfigError) as exc:
        load_configs(None, environ={"TFBENCH_MODEL": MODEL, "TFBENCH_QUANTIZATION": "bnb-3bit"})
    message = str(exc.value)
    assert "quantization = 'bnb-3bit'" in message
    assert "bnb-8bit, bnb-4bit" in message
    assert "[from env TFBENCH_QUANTIZATION]" in message


# ------------------------------------------------------------------------------ tensor parallelism


def test_tp_size_from_env_as_a_list(tmp_path: Path) -> None:
    path = write(tmp_path, "config.yaml", BASE)
    assert load_one(path).config.tp_size == [1]
    loaded = load_one(path, {"TFBENCH_TP_SIZE": "1,2"})
    assert loaded.config.tp_size == [1, 2]
    assert loaded.origins["tp_size"] == "env TFBENCH_TP_SIZE"


@pytest.mark.parametrize("value", ["3", "16", "true", "2.0", "0"])
def test_tp_size_outside_the_allowed_values_names_them(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, "config.yaml", BASE)
    with pytest.raises(ConfigError) as exc:
        load_one(path, {"TFBENCH_TP_SIZE": value})
    message = str(exc.value)
    assert "tp_size" in message and "TFBENCH_TP_SIZE" in message and "1, 2, 4, 8" in message


def test_tp_size_exits_2_from_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "config.yaml", BASE)
    monkeypatch.setenv("TFBENCH_TP_SIZE", "3")
    assert_exit_2(*plan_json(capsys, "--config", str(path)), "tp_size = 3", "1, 2, 4, 8")
