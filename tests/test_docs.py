"""The README documents what the code does: every config field, preset and status."""

from __future__ import annotations

import re

from bench.config.presets import PRESETS
from bench.config.schema import field_names
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def test_every_config_field_is_in_the_fields_table():
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", README, flags=re.M))
    assert documented >= set(field_names()), set(field_names()) - documented


def test_every_preset_is_documented():
    for name in PRESETS:
        assert f"`{name}`" in README, name


def test_statuses_and_exit_codes_are_documented():
    for status in ("ok", "skipped", "failed", "oom", "timeout", "interrupted", "lost", "running"):
        assert f"| `{status}` |" in README, status
    for code in ("`0`", "`1`", "`2`", "`3`", "`4`", "`130`", "`143`"):
        assert code in README


def test_default_config_file_matches_the_embedded_default():
    assert (ROOT / "configs" / "cpu-demo.yaml").read_text() == (
        ROOT / "bench" / "default_config.yaml"
    ).read_text()


def test_every_shipped_config_is_valid(capsys):
    from bench.cli import main

    for path in sorted((ROOT / "configs").glob("*.yaml")):
        assert main(["plan", "--config", str(path), "--json"]) == 0, path
        assert '"cells"' in capsys.readouterr().out


def test_every_environment_variable_is_in_the_table():
    from bench.config.schema import NON_FIELD_ENV

    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", README, flags=re.M))
    assert documented >= NON_FIELD_ENV | {"HF_TOKEN", "HF_HOME"}, NON_FIELD_ENV - documented
