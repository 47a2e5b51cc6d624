"""A broken model costs only its own cells: each fault is named in words, nothing else is lost.

One `tfbench run` of a config directory holding a config.jsonl: one config per broken model,
then healthy configs after them, as a user's list of models would be.
"""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import ROOT, TINY, cells_by_id, run_entrypoint

MISSING_HUB_ID = "nobody-xyz/no-such-model"
CUSTOM_CODE = """
import pathlib
pathlib.Path({marker!r}).write_text("the model's own code ran")
from transformers import LlamaConfig, LlamaForCausalLM


class CustomLlamaConfig(LlamaConfig):
    model_type = "tfbench-custom-llama"


class CustomLlamaForCausalLM(LlamaForCausalLM):
    config_class = CustomLlamaConfig
"""


def _copy(good: Path, dest: Path) -> Path:
    shutil.copytree(good, dest)
    return dest


def _needs_remote_code(good: Path, dest: Path, marker: Path) -> Path:
    """A model directory whose config names a class from a .py file in it, of an unknown model_type."""
    _copy(good, dest)
    config = json.loads((dest / "config.json").read_text())
    config.update(
        model_type="tfbench-custom-llama",
        architectures=["CustomLlamaForCausalLM"],
        auto_map={
            "AutoConfig": "custom_llama.CustomLlamaConfig",
            "AutoModelForCausalLM": "custom_llama.CustomLlamaForCausalLM",
        },
    )
    (dest / "config.json").write_text(json.dumps(config))
    (dest / "custom_llama.py").write_text(CUSTOM_CODE.format(marker=str(marker)))
    return dest


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    """A tiny Llama saved like a hub snapshot, and broken copies of it."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from bench.config.presets import PRESETS
    from bench.worker.models import synthetic_tokenizer

    base = tmp_path_factory.mktemp("models")
    good = base / "good"
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(LlamaConfig(**PRESETS["llama-tiny"].config)).save_pretrained(good)
    synthetic_tokenizer(1024).save_pretrained(good)

    truncated = _copy(good, base / "truncated")
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    bad_json = _copy(good, base / "bad-json")
    (bad_json / "config.json").write_text('{"model_type": "llama", oops')
    no_tokenizer = _copy(good, base / "no-tokenizer")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (no_tokenizer / name).unlink()
    assert sorted(p.name for p in no_tokenizer.iterdir()) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
    ]
    markers = {"untrusted": base / "untrusted-code-ran", "trusted": base / "trusted-code-ran"}
    return {
        "good": good,
        "truncated": truncated,
        "bad-json": bad_json,
        "no-tokenizer": no_tokenizer,
        "untrusted": _needs_remote_code(good, base / "untrusted", markers["untrusted"]),
        "trusted": _needs_remote_code(good, base / "trusted", markers["trusted"]),
        "markers": markers,
    }


# run_name -> model, per config line; two attention implementations: two cells per config.
LINES = ["truncated", "bad-json", "no-tokenizer", "missing-hub-id", "untrusted", "good", "trusted"]


@pytest.fixture(scope="module")
def faulty_models_run(tmp_path_factory, models_dir):
    base = tmp_path_factory.mktemp("model-faults")
    cfg_dir = base / "cfg"
    cfg_dir.mkdir()
    lines = []
    for name in LINES:
        model = MISSING_HUB_ID if name == "missing-hub-id" else str(models_dir[name])
        fields = {**TINY, "model": model, "run_name": name, "attn_implementation": ["eager", "sdpa"]}
        # Two attempts allowed: a model fault must not use the second.
        fields["max_attempts"] = 2
        if name == "trusted":
            fields["trust_remote_code"] = True
        lines.append(json.dumps(fields))
    (cfg_dir / "config.jsonl").write_text("\n".join(lines) + "\n")
    hf_home = base / "hf-home"  # empty: nothing is cached
    hf_home.mkdir()
    output = base / "results"
    proc = run_entrypoint(cfg_dir, output, env={"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"})
    runs = {}
    for name in LINES:
        (run_dir,) = [p for p in output.iterdir() if p.name.endswith(f"-{name}")]
        runs[name] = {"dir": run_dir, "cells": list(cells_by_id(run_dir).values())}
    return {"proc": proc, "runs": runs, "hf_home": hf_home}


def test_exit_code_one_and_every_run_finished(faulty_models_run):
    proc = faulty_models_run["proc"]
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for name, run in faulty_models_run["runs"].items():
        meta = json.loads((run["dir"] / "run.json").read_text())
        assert meta["status"] == "finished", name
        assert len(run["cells"]) == 2, name


def test_healthy_configs_after_the_broken_ones_run(faulty_models_run):
    for name in ("good", "trusted"):
        for rec in faulty_models_run["runs"][name]["cells"]:
            assert rec["status"] == "ok", (name, rec.get("reason"))
            assert rec["attempt"] == 1


@pytest.mark.parametrize(
    ("name", "exc_type", "words"),
    [
        ("truncated", "SafetensorError", ["model.safetensors is truncated:", "of the", "bytes its header"]),
        (
            "bad-json",
            "OSError",
            ["config.json is not valid JSON (Expecting property name", "line 1 column 25"],
        ),
        ("no-tokenizer", "ValueError", ["no tokenizer (none of tokenizer.json", "tokenizes its prompt"]),
        (
            "missing-hub-id",
            "OSError",
            [
                f"model {MISSING_HUB_ID} is not in the local cache (HF_HOME=",
                "HF_HUB_OFFLINE=1 forbids a download",
            ],
        ),
        (
            "untrusted",
            "ValueError",
            [
                "needs trust_remote_code: true",
                "tfbench runs no code shipped with a model unless the config sets it",
            ],
        ),
    ],
)
def test_model_fault_is_named_in_words(faulty_models_run, models_dir, name, exc_type, words):
    for rec in faulty_models_run["runs"][name]["cells"]:
        assert rec["status"] == "failed", rec
        error = rec["error"]
        assert error["kind"] == "model"
        assert error["type"] == exc_type  # the library's exception, as raised
        assert error["retryable"] is False
        assert error["exception_message"] and error["exception_message"] != error["message"]
        assert error["traceback"].startswith("Traceback") and exc_type in error["traceback"]
        where = (
            f"model {MISSING_HUB_ID}" if name == "missing-hub-id" else f"model directory {models_dir[name]}"
        )
        assert rec["reason"].startswith(f"{exc_type}: {where}"), rec["reason"]
        for fragment in words:
            assert fragment in rec["reason"], (fragment, rec["reason"])
    if name == "missing-hub-id":
        assert str(faulty_models_run["hf_home"]) in rec["reason"]


def test_model_fault_is_not_retried(faulty_models_run):
    """The same files fail the same way: the second allowed attempt is not spent on them."""
    for name in ("truncated", "bad-json", "no-tokenizer", "missing-hub-id", "untrusted"):
        for rec in faulty_models_run["runs"][name]["cells"]:
            assert rec["attempt"] == 1 and rec["attempts"] == [], (name, rec["attempt"])


def test_remote_code_never_ran_without_trust(faulty_models_run, models_dir):
    assert not models_dir["markers"]["untrusted"].exists()
    # With trust_remote_code: true the same kind of model loads, and its code did run.
    assert models_dir["markers"]["trusted"].exists()
    (rec, _) = faulty_models_run["runs"]["trusted"]["cells"]
    assert rec["parameters"] > 0


def test_no_half_written_files(faulty_models_run):
    for name, run in faulty_models_run["runs"].items():
        assert not list(run["dir"].rglob("*.tmp")), name
        for path in (run["dir"] / "cells").glob("*.json"):
            json.loads(path.read_text())
        assert len((run["dir"] / "summary.jsonl").read_text().splitlines()) == 2, name


def test_trust_remote_code_is_only_ever_the_config_value():
    """No call in the package passes trust_remote_code=True or any value but the one it was given."""
    for path in sorted((ROOT / "bench").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
                value = ast.unparse(node.value)
                assert value in (
                    "trust_remote_code",
                    "cfg.trust_remote_code",
                    "self.settings.trust_remote_code",
                    "task.trust_remote_code",  # the worker's Task carries the config's value
                ), f"{path.name}:{node.value.lineno}: trust_remote_code={value}"
