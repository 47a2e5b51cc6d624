"""A model from a local directory goes through AutoModelForCausalLM/AutoTokenizer.from_pretrained."""

from __future__ import annotations

import json

import pytest

from tests.conftest import cells_by_id, only_run_dir, run_entrypoint, write_config


@pytest.fixture(scope="module")
def local_model(tmp_path_factory):
    """A tiny Llama with random weights and an offline-trained tokenizer, saved like a hub snapshot."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from bench.config.presets import PRESETS
    from bench.worker.models import synthetic_tokenizer

    path = tmp_path_factory.mktemp("model") / "tiny-llama"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**PRESETS["llama-tiny"].config))
    model.save_pretrained(path)
    synthetic_tokenizer(1024).save_pretrained(path)
    return path


def test_local_directory_model(tmp_path, local_model):
    config = write_config(tmp_path, model=str(local_model), attn_implementation=["eager", "sdpa"])
    proc = run_entrypoint(config, tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    records = list(cells_by_id(only_run_dir(tmp_path / "out")).values())
    assert sorted(r["cell"]["attn_implementation"] for r in records) == ["eager", "sdpa"]
    for rec in records:
        assert rec["status"] == "ok", rec.get("reason")
        assert rec["inputs"]["shape"] == [1, 16]
        assert rec["parameters"] > 0


def test_missing_hub_model_while_offline_fails_the_cell_not_the_run(tmp_path):
    config = write_config(tmp_path, model="tfbench-test/does-not-exist")
    proc = run_entrypoint(config, tmp_path / "out")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    (rec,) = cells_by_id(only_run_dir(tmp_path / "out")).values()
    assert rec["status"] == "failed"
    assert rec["error"]["kind"] == "model"
    assert "is not in the local cache" in rec["reason"]
    assert "HF_HUB_OFFLINE=1 forbids a download" in rec["reason"]
    run = json.loads((only_run_dir(tmp_path / "out") / "run.json").read_text())
    assert run["status"] == "finished"
