"""Tokens never leak: not into results, logs, the worker's log files, stdout/stderr, nor the Hub.

Unit tests of bench.secrets.redact (planted tokens are removed from any text; ordinary text such
as cell ids, commit shas, paths and numbers is left byte for byte), config values shaped like a
token are refused, and end to end: real runs through entrypoint.py with a realistic fake token
in HF_TOKEN and HUGGING_FACE_HUB_TOKEN, planted where it reaches messages (a failing cell whose
error names it, TFBENCH_COMMIT and TFBENCH_BRANCH, a Hub answer quoting it, a results file
edited by hand), then every byte written or sent is searched for the token in every form.
"""

from __future__ import annotations

import base64
import io
import json
import os
import string
import struct
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

from bench.cli import main
from bench.hub import push as hub
from bench.output.logs import HumanLog, JsonLog
from bench.secrets import (
    REDACTED,
    RedactingStream,
    is_secret_name,
    looks_like_token,
    redact,
    redact_bytes,
    redact_file,
    secret_values,
)
from tests.analysis.test_compare import make_run
from tests.conftest import TINY, run_entrypoint
from tests.hub_server import FakeHub, serve

# Example counts (a reliability table cites them); HOSTILE_EXAMPLES_SCALE=10 searches deeper, anew.
SCALE = max(1, int(os.environ.get("HOSTILE_EXAMPLES_SCALE", "1")))
REDACT_PLANTED_EXAMPLES = 1000 * SCALE
REDACT_ENV_EXAMPLES = 500 * SCALE
REDACT_ORDINARY_EXAMPLES = 500 * SCALE
SETTINGS = {"deadline": None, "derandomize": SCALE == 1, "suppress_health_check": [HealthCheck.too_slow]}

# A realistic fake: the shape of a Hugging Face user access token (hf_ and 34 letters).
TOKEN = "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"
REPO = "bench-org/tfbench-results"


def forms(secret: str) -> dict[str, bytes]:
    """The ways a secret can appear in bytes: raw, URL-encoded, JSON-escaped, base64 at each of the
    three alignments (the middle of each, so that neighbouring bytes do not matter), and a long
    prefix (a truncated message)."""
    raw = secret.encode()
    out = {"raw": raw, "url": quote(secret, safe="").encode(), "prefix": raw[:16]}
    out["json"] = json.dumps(secret)[1:-1].encode()
    for pad in range(3):
        encoded = base64.b64encode(b"\0" * pad + raw)
        out[f"base64+{pad}"] = encoded[4:-4]
    return out


def assert_absent(secret: str, blobs: dict[str, bytes]) -> None:
    for where, data in blobs.items():
        for form, needle in forms(secret).items():
            assert needle not in data, f"the token ({form}) is in {where}"


# ------------------------------------------------------------------------------------- redact

_alnum = string.ascii_letters + string.digits
TOKENS = st.one_of(
    st.text(_alnum, min_size=30, max_size=40).map(lambda s: "hf_" + s),
    st.builds(lambda p, s: f"gh{p}_{s}", st.sampled_from("pousr"), st.text(_alnum, min_size=36, max_size=40)),
    st.text(_alnum + "_", min_size=22, max_size=60).map(lambda s: "github_pat_" + s),
    st.builds(
        lambda s, d, a: f"sk-{d}{s}{a}",
        st.text(_alnum + "-_", min_size=18, max_size=50),
        st.sampled_from(string.digits),
        st.sampled_from(string.ascii_letters),
    ),
    st.builds(
        lambda k, s: k + s,
        st.sampled_from(["AKIA", "ASIA"]),
        st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", min_size=16, max_size=16),
    ),
    st.text(_alnum + "-", min_size=10, max_size=40).map(lambda s: "xoxb-" + s),
)
# What sits next to a token in a message, a URL, a header or JSON.
SEPARATORS = st.sampled_from(
    [" ", "\n", "\t", "=", ":", '"', "'", "/", ",", "(", ")", "<", ">", "?", "&", "\\n"]
)
TEXT = st.text(st.characters(codec="utf-8"), max_size=80)


@settings(max_examples=REDACT_PLANTED_EXAMPLES, **SETTINGS)
@given(token=TOKENS, before=TEXT, after=TEXT, left=SEPARATORS, right=SEPARATORS, bearer=st.booleans())
def test_a_token_planted_in_any_text_is_removed(
    token: str, before: str, after: str, left: str, right: str, bearer: bool
) -> None:
    planted = f"{before}{left}{'Bearer ' if bearer else ''}{token}{right}{after}"
    clean = redact(planted, environ={})
    assert token not in clean
    assert REDACTED in clean


@settings(max_examples=REDACT_PLANTED_EXAMPLES, **SETTINGS)
@given(body=st.text(_alnum, min_size=30, max_size=40), before=TEXT, after=TEXT)
def test_a_hub_token_is_removed_even_inside_a_word(body: str, before: str, after: str) -> None:
    token = "hf_" + body
    assert token not in redact(before + token + after, environ={})


@settings(max_examples=REDACT_ENV_EXAMPLES, **SETTINGS)
@given(
    name=st.sampled_from(
        [
            "HF_TOKEN",
            "HUGGING_FACE_HUB_TOKEN",
            "HF_API_TOKEN",
            "MY_API_KEY",
            "DB_PASSWORD",
            "X_SECRET",
            "GCP_CREDENTIALS_JSON",
        ]
    ),
    value=st.text(_alnum + "-_./+=~!@#$%^*", min_size=8, max_size=50).filter(
        lambda v: not v.strip().isdigit() and "REDACTED" not in v and len(v.strip()) >= 8
    ),
    before=TEXT,
    after=TEXT,
)
def test_the_value_of_a_secret_variable_is_removed_wherever_it_is(
    name: str, value: str, before: str, after: str
) -> None:
    environ = {name: value, "PATH": "/usr/bin"}
    for text in (before + value + after, json.dumps({"x": before + value + after}), quote(value, safe="")):
        assert value not in redact(text, environ=environ)


_hex = "0123456789abcdef"
ORDINARY = st.one_of(
    st.text(_hex, min_size=16, max_size=16),  # a cell id
    st.text(_hex, min_size=40, max_size=40),  # a commit sha
    st.text(_hex, min_size=7, max_size=12),  # a short sha
    st.text(_hex.upper(), min_size=40, max_size=40),
    st.integers().map(str),
    st.floats(allow_nan=False).map(repr),
    st.from_regex(
        r"/results/2026[0-9]{4}T[0-9]{6}Z-[a-z][a-z0-9._-]{0,20}/cells/[0-9a-f]{16}\.json", fullmatch=True
    ),
    st.from_regex(r"[a-z][a-z0-9-]{1,20}/[A-Za-z][A-Za-z0-9._-]{1,30}", fullmatch=True),  # a hub id
    st.sampled_from(
        [
            "synthetic:llama-3.2-1b-shape",
            "sdpa+compile-default b8 s2048 n128",
            "flash_attention_2",
            "max-autotune-no-cudagraphs",
            "hf_hub_download",
            "task-sk-learn-comparison-of-benchmarks",
            "Authorization header",
            "the bearer of good news",
            "AKIAB",
            "ghp_short",
            "hf_short_name_with_underscores_in_it_123",
            "NVIDIA H100 80GB HBM3",
        ]
    ),
)


@settings(max_examples=REDACT_ORDINARY_EXAMPLES, **SETTINGS)
@given(
    parts=st.lists(ORDINARY, min_size=1, max_size=6), joiner=st.sampled_from([" ", "\n", ", ", '", "', "/"])
)
def test_ordinary_results_text_is_left_unchanged(parts: list[str], joiner: str) -> None:
    text = joiner.join(parts)
    assert redact(text, environ={}) == text
    record = json.dumps({"cell_id": parts[0], "values": parts, "n": 20, "p50": 0.0123}, indent=1)
    assert redact(record, environ={"HF_TOKEN": TOKEN}) == record


def test_which_variables_hold_secrets() -> None:
    for name in (
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_API_TOKEN",
        "GITHUB_TOKEN",
        "AWS_SECRET_ACCESS_KEY",
    ):
        assert is_secret_name(name)
    for name in ("DB_PASSWORD", "CLIENT_SECRET", "GOOGLE_APPLICATION_CREDENTIALS", "my_api_key"):
        assert is_secret_name(name)
    for name in ("PATH", "HOME", "HF_HOME", "TOKENIZERS_PARALLELISM", "TFBENCH_RUN_ID", "KEYBOARD"):
        assert not is_secret_name(name)
    values = secret_values(
        {
            "HF_TOKEN": "short",
            "API_KEY": "12345678901",
            "MY_SECRET": "  s3cr3t-value\n",
            "HOME": "/home/someone",
        }
    )
    assert "short" not in values and "12345678901" not in values  # too short; digits alone are numbers
    assert "s3cr3t-value" in values and "/home/someone" not in values


def test_escaped_forms_of_a_secret_are_removed_too() -> None:
    secret = 'pä"ss\\word-1234'
    environ = {"SERVICE_PASSWORD": secret}
    for text in (
        json.dumps({"e": secret}),
        json.dumps({"e": secret}, ensure_ascii=False),
        quote(secret, safe=""),
    ):
        assert redact(text, environ=environ).count(REDACTED) == 1, text


def test_bearer_credentials_keep_the_scheme_word() -> None:
    assert redact("Authorization: Bearer abc.DEF-123_xyz", environ={}) == f"Authorization: Bearer {REDACTED}"


def test_looks_like_token() -> None:
    assert looks_like_token(TOKEN) and looks_like_token("x=" + TOKEN)
    assert not looks_like_token("a" * 40) and not looks_like_token("meta-llama/Llama-3.2-1B")


def test_redact_bytes_and_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    data = b"\xff\xfe not utf-8 \x00 " + TOKEN.encode() + b" tail\n"
    clean = redact_bytes(data)
    assert TOKEN.encode() not in clean and clean.startswith(b"\xff\xfe not utf-8 \x00 ")
    log = tmp_path / "cell.log"
    log.write_bytes(data * 3)
    redact_file(log)
    assert TOKEN.encode() not in log.read_bytes() and log.read_bytes().count(REDACTED.encode()) == 3
    redact_file(tmp_path / "missing.log")  # never raises
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cell.log"]  # no temporary left


def test_log_lines_are_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    stream = io.StringIO()
    JsonLog(stream).emit("error", level="error", message=f"boom {TOKEN}", detail={"t": TOKEN})
    console = Console(file=io.StringIO(), width=200)
    HumanLog(console).emit("x", message=f"see {TOKEN}")
    HumanLog(console).emit("x", level="warning", message=f"see {TOKEN}")
    HumanLog(console).emit("x", level="error", message=f"see {TOKEN}")
    text = stream.getvalue() + console.file.getvalue()
    assert TOKEN not in text and text.count(REDACTED) == 5
    json.loads(stream.getvalue())  # still one JSON object


def test_redacting_stream_passes_everything_else_through() -> None:
    target = io.StringIO()
    stream = RedactingStream(target)
    stream.write(f"a {TOKEN} b\n")
    stream.writelines(["c\n"])
    stream.flush()
    assert target.getvalue() == f"a {REDACTED} b\nc\n" and stream.isatty() is False


# ------------------------------------------------------------------------- tokens in a config


@pytest.mark.parametrize(
    ("how", "field"),
    [
        ("file", "run_name"),
        ("file", "model_config"),
        ("env", "revision"),
        ("flag", "output"),
        ("file", "model"),
    ],
)
def test_a_token_in_a_config_is_refused_and_not_echoed(
    how: str, field: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("TFBENCH_"):
            monkeypatch.delenv(name)
    value: Any = {"num_hidden_layers": TOKEN} if field == "model_config" else TOKEN
    data = {**TINY, "output": str(tmp_path / "out")}
    argv = ["plan", "--config", str(tmp_path / "c.json")]
    if how == "file":
        data[field] = value
    elif how == "env":
        monkeypatch.setenv(f"TFBENCH_{field.upper()}", value)
    else:
        argv.append(f"--{field}={value}")
    (tmp_path / "c.json").write_text(json.dumps(data))
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert "looks like an access token; tokens belong in HF_TOKEN, never in a config" in err
    assert field in err and TOKEN not in out + err


# ------------------------------------------------------------------------------- end to end


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _hub_received(server: FakeHub) -> dict[str, bytes]:
    """Every file the fake Hub stored, every commit message, and every request body (headers carry
    the token by design: that is how the Hub is told who pushes)."""
    blobs: dict[str, bytes] = {}
    for repo in server.repos.values():
        for path, data in repo.files.items():
            blobs[f"hub {repo.repo_id}/{path}"] = data
        for i, commit in enumerate(repo.commits):
            blobs[f"hub {repo.repo_id} commit {i}"] = (
                commit["summary"] + "\n" + commit["description"]
            ).encode()
    for i, request in enumerate(server.calls()):
        blobs[f"request {i} {request.method} {request.path}"] = request.path.encode() + b"\n" + request.body
    return blobs


def _bad_model(tmp_path: Path) -> Path:
    """A mounted model whose config names the token: transformers' error quotes it, as would an
    error that echoes a header or a URL with credentials."""
    model = tmp_path / "mounted-model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": TOKEN}))
    # Otherwise complete (a tokenizer, a valid weights file): the load fails on the model type.
    (model / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    vocab = {"type": "WordLevel", "vocab": {"a": 0, "[UNK]": 1}, "unk_token": "[UNK]"}
    parts = ("truncation", "padding", "normalizer", "pre_tokenizer", "post_processor", "decoder")
    tokenizer = {"version": "1.0", "added_tokens": [], **dict.fromkeys(parts), "model": vocab}
    (model / "tokenizer.json").write_text(json.dumps(tokenizer))
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    header += b" " * (-len(header) % 8)
    (model / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(4))
    return model


def _jsonl_config(tmp_path: Path) -> Path:
    config = tmp_path / "config.jsonl"
    lines = [dict(TINY), {**TINY, "model": str(_bad_model(tmp_path))}]
    config.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return config


def _secret_env(**extra: str) -> dict[str, str]:
    return {
        "HF_TOKEN": TOKEN,
        "HUGGING_FACE_HUB_TOKEN": TOKEN,
        "TFBENCH_COMMIT": TOKEN,  # a token pasted in the wrong variable
        "TFBENCH_BRANCH": f"feature/{TOKEN}",
        "MY_INNOCENT_SETTING": "plain-value-7f3a9c",  # no secret: but run.json records no variable
        **extra,
    }


@pytest.mark.parametrize("log_format", ["human", "json"])
def test_no_byte_anywhere_holds_the_token(log_format: str, tmp_path: Path) -> None:
    config = _jsonl_config(tmp_path)
    output = tmp_path / "out"
    with FakeHub(token=TOKEN) as server:
        env = _secret_env(
            TFBENCH_LOG_FORMAT=log_format,
            TFBENCH_PUSH_TO_HUB=REPO,
            HF_ENDPOINT=server.endpoint,
            HF_HUB_OFFLINE="0",
            NO_PROXY="127.0.0.1,localhost",
        )
        server.fail(500, times=1, endpoints="preupload")  # huggingface_hub retries, and logs it
        proc = run_entrypoint(config, output, env=env, timeout=600)
        runs = sorted(p for p in output.iterdir() if p.is_dir())
        # Then a push the Hub refuses with an answer that quotes the token.
        server.fail(400, endpoints="preupload", body={"error": f"token {TOKEN} rejected by the proxy"})
        env.pop("TFBENCH_PUSH_TO_HUB")
        push = run_entrypoint(config, output, "push", str(runs[0]), "--repo", "bench-org/other", env=env)
        received = _hub_received(server)
        authorized = [r for r in server.calls() if r.headers.get("authorization") == f"Bearer {TOKEN}"]
    assert proc.returncode == 1, proc.stderr  # the mounted model's cell failed; both runs pushed
    assert push.returncode == 3 and "rejected by the proxy" in push.stderr, push.stderr
    assert authorized, "the token was never used: the test would prove nothing"
    assert len(server.commits(REPO)) == 2
    failed = json.loads(next((runs[1] / "cells").glob("*.json")).read_text())
    assert failed["status"] == "failed" and "model type" in failed["reason"]
    assert REDACTED in failed["reason"]  # the error did quote it: redaction, not luck
    assert any(REDACTED in text.decode() for text in _tree(runs[1] / "logs").values())
    assert REDACTED in push.stderr
    outputs = {
        "stdout": proc.stdout,
        "stderr": proc.stderr,
        "push stdout": push.stdout,
        "push stderr": push.stderr,
    }
    blobs = {**_tree(output), **received, **{k: v.encode() for k, v in outputs.items()}}
    assert_absent(TOKEN, blobs)
    for run in runs:
        # run.json records no environment variable's value; redaction left every file readable.
        assert b"plain-value-7f3a9c" not in (run / "run.json").read_bytes()
        json.loads((run / "run.json").read_text())
        for line in (run / "summary.jsonl").read_text().splitlines():
            json.loads(line)


def test_a_token_in_an_error_message_of_a_variable_is_not_echoed(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps(TINY))
    proc = run_entrypoint(config, tmp_path / "out", env=_secret_env(TFBENCH_FAULT=TOKEN), timeout=120)
    assert proc.returncode == 2 and "TFBENCH_FAULT" in proc.stderr
    assert_absent(TOKEN, {"stdout": proc.stdout.encode(), "stderr": proc.stderr.encode()})
    assert not (tmp_path / "out").exists()


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch):
    yield from serve(monkeypatch, TOKEN, check_token=True)


def test_a_run_edited_by_hand_is_uploaded_without_the_token(fake_hub: FakeHub, tmp_path: Path) -> None:
    """Results written by something else (an older version, a person) may hold a token: what is
    uploaded is redacted all the same, and the local files are left as they are."""
    run = make_run(tmp_path / "edited-run", seed=1)
    meta = json.loads((run / "run.json").read_text())
    meta["environment"]["hostname"] = f"host-{TOKEN}"
    meta["note"] = f"curl -H 'Authorization: Bearer {TOKEN}'"
    (run / "run.json").write_text(json.dumps(meta))
    cell = next((run / "cells").glob("*.json"))
    record = json.loads(cell.read_text())
    record["reason"] = f"401 for https://user:{TOKEN}@huggingface.co/x"
    cell.write_text(json.dumps(record))
    before = _tree(run)
    hub.push_run(run, REPO, endpoint=fake_hub.endpoint, backoff=0)
    assert _tree(run) == before
    received = _hub_received(fake_hub)
    assert any(k.endswith("/README.md") for k in received)
    assert_absent(TOKEN, received)
    full = next(v for k, v in received.items() if "/full/" in k)
    assert REDACTED.encode() in full


def test_push_errors_name_no_token(
    fake_hub: FakeHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = make_run(tmp_path / "run", seed=1)
    fake_hub.fail(403, body={"error": f"token {TOKEN} has no write access"})
    with pytest.raises(hub.PushError) as info:
        hub.push_run(run, REPO, endpoint=fake_hub.endpoint, backoff=0)
    assert TOKEN not in str(info.value)
    assert_absent(TOKEN, {"stderr": capsys.readouterr().err.encode()})


def test_a_log_left_by_a_killed_runner_is_redacted_on_restart(tmp_path: Path) -> None:
    """The runner redacts a worker's log after the worker exits; killed first, it cannot. The
    restart that settles the cell's left-over `running` record redacts that log instead."""
    import signal
    import time

    from tests.conftest import plan_cells, start_entrypoint, write_config

    config = write_config(tmp_path, batch_size=[1, 2], cell_timeout_s=600, max_attempts=2)
    first = plan_cells(config)[0]["cell_id"]
    output = tmp_path / "out"
    env = {"HF_TOKEN": TOKEN}
    proc = start_entrypoint(config, output, env={**env, "TFBENCH_FAULT": f"{first}:hang"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(output.glob(f"*/work/{first}.1.*")):
        time.sleep(0.1)
    (log,) = output.glob(f"*/logs/{first}.log")
    # What a worker may print (an error quoting a header) while its runner is killed.
    with open(log, "a") as f:
        f.write(f"request failed: Authorization: token {TOKEN}\n")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert TOKEN in log.read_text()
    final = run_entrypoint(config, output, env=env)
    assert final.returncode == 0, final.stderr
    assert TOKEN not in log.read_text() and "[REDACTED]" in log.read_text()
