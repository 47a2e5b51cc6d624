"""What the parent finds out about the machine for hub kernels, without importing torch or
transformers: the kernels versions transformers asks for (read from its source), the kernels cache
kernels reads offline, and what that cache holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.run.machine import (
    Accelerators,
    cached_hub_kernels,
    capabilities,
    kernels_requirement,
    offline_kernels_cache,
    quantization_minimums,
    quantization_packages,
)

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER = "89abcdef0123456789abcdef0123456789abcdef"


def test_the_installed_transformers_asks_for_its_kernels_range():
    from transformers.utils import import_utils

    assert kernels_requirement() == (import_utils.KERNELS_MIN_VERSION, import_utils.KERNELS_MAX_VERSION)


def test_a_transformers_that_names_no_range_asks_for_none(tmp_path: Path):
    (tmp_path / "utils").mkdir()
    (tmp_path / "utils" / "import_utils.py").write_text('KERNELS_MIN_VERSION = "0.9.0"\n')
    assert kernels_requirement(str(tmp_path)) is None
    (tmp_path / "utils" / "import_utils.py").write_text(
        'KERNELS_MIN_VERSION = "0.9.0"\nKERNELS_MAX_VERSION = "0.10.0"\n'
    )
    assert kernels_requirement(str(tmp_path)) == ("0.9.0", "0.10.0")
    assert kernels_requirement(str(tmp_path / "missing")) is None


def test_the_quantization_minimums_are_the_installed_transformers_own():
    from transformers.utils import import_utils

    assert quantization_minimums() == {
        "torchao": import_utils.TORCHAO_MIN_VERSION,
        "accelerate": import_utils.ACCELERATE_MIN_VERSION,
        "bitsandbytes": import_utils.BITSANDBYTES_MIN_VERSION,
    }
    assert set(quantization_packages()) == {"torchao", "accelerate", "bitsandbytes"}


def test_a_transformers_that_names_no_minimum_asks_for_none(tmp_path: Path):
    (tmp_path / "utils").mkdir()
    (tmp_path / "utils" / "import_utils.py").write_text('TORCHAO_MIN_VERSION = "0.9.0"\n')
    assert quantization_minimums(str(tmp_path)) == {"torchao": "0.9.0"}
    assert quantization_minimums(str(tmp_path / "missing")) == {}


@pytest.mark.parametrize(
    ("environ", "cache"),
    [
        ({}, None),
        ({"HF_HUB_OFFLINE": "0", "KERNELS_CACHE": "/opt/kernels"}, None),
        ({"HF_HUB_OFFLINE": "1", "KERNELS_CACHE": "/opt/kernels", "HF_HOME": "/h"}, "/opt/kernels"),
        ({"TRANSFORMERS_OFFLINE": "yes", "HF_HOME": "/cache/huggingface"}, "/cache/huggingface/hub"),
        ({"HF_HUB_OFFLINE": "true", "HF_HOME": "/h", "HF_HUB_CACHE": "/c"}, "/c"),
        ({"HF_HUB_OFFLINE": "ON", "HUGGINGFACE_HUB_CACHE": "/legacy"}, "/legacy"),
        ({"HF_HUB_OFFLINE": "1", "XDG_CACHE_HOME": "/x"}, "/x/huggingface/hub"),
    ],
)
def test_offline_the_kernels_cache_is_where_kernels_and_huggingface_hub_look(environ, cache):
    assert offline_kernels_cache(environ) == cache


def _snapshot(cache: Path, repo: str, commit: str, build: bool = True, refs: tuple[str, ...] = ()) -> None:
    folder = cache / ("kernels--" + repo.replace("/", "--"))
    snapshot = folder / "snapshots" / commit
    (snapshot / "build" / "torch-cuda" if build else snapshot).mkdir(parents=True)
    (folder / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (folder / "refs" / ref).write_text(commit)


def test_the_cache_holds_each_commit_with_a_build_and_each_ref_to_one(tmp_path: Path):
    """The layout huggingface_hub's snapshot_download(repo_type="kernel") writes, which kernels'
    install_kernel fills and its offline get_kernel reads."""
    _snapshot(tmp_path, "kernels-community/flash-attn2", COMMIT, refs=("v4",))
    _snapshot(tmp_path, "kernels-community/flash-attn2", OTHER, build=False, refs=("main",))
    (tmp_path / "kernels--kernels-community--flash-attn2" / "refs" / "v3").write_text("f" * 40)  # not here
    _snapshot(tmp_path, "kernels-community/vllm-flash-attn3", OTHER)
    (tmp_path / "models--org--model" / "snapshots" / COMMIT).mkdir(parents=True)  # a model, not a kernel
    assert cached_hub_kernels(str(tmp_path), {}) == {
        f"kernels-community/flash-attn2@{COMMIT}",
        "kernels-community/flash-attn2@v4",
        f"kernels-community/vllm-flash-attn3@{OTHER}",
    }
    assert cached_hub_kernels(str(tmp_path / "missing"), {}) == frozenset()


def test_local_kernels_count_for_every_revision_of_their_repo(tmp_path: Path):
    environ = {"LOCAL_KERNELS": "kernels-community/flash-attn2=/src/fa2:org/k=/src/k"}
    assert cached_hub_kernels(str(tmp_path), environ) == {"kernels-community/flash-attn2", "org/k"}


def test_capabilities_carry_what_hub_kernels_need(tmp_path: Path):
    _snapshot(tmp_path, "kernels-community/flash-attn2", COMMIT, refs=("v4",))
    gpu = Accelerators(True, "")
    offline = capabilities("cuda", gpu, environ={"HF_HUB_OFFLINE": "1", "KERNELS_CACHE": str(tmp_path)})
    assert offline.offline_kernels_cache == str(tmp_path)
    assert "kernels-community/flash-attn2@v4" in offline.cached_hub_kernels
    assert offline.kernels_required == kernels_requirement()
    online = capabilities("cuda", gpu, environ={"KERNELS_CACHE": str(tmp_path)})
    assert (online.offline_kernels_cache, online.cached_hub_kernels) == (None, frozenset())
