"""The CUDA variant of the image cannot be built here (no CUDA base image or wheel can be
fetched); these checks keep its pins consistent with each other and with the dev install,
which `make test-image` builds and runs as the CPU variant of the same file."""

from __future__ import annotations

import re

from .conftest import ROOT

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _arg(name: str) -> str:
    match = re.search(rf"^ARG {name}=(.*)$", DOCKERFILE, flags=re.M)
    assert match, name
    return match.group(1).strip().strip('"')


def test_base_images_are_pinned_and_from_one_cuda_release():
    runtime, builder = _arg("BASE_IMAGE"), _arg("BUILDER_IMAGE")
    pattern = r"^nvidia/cuda:(\d+\.\d+\.\d+)-(runtime|devel)-(ubuntu\d+\.\d+)$"
    r, b = re.match(pattern, runtime), re.match(pattern, builder)
    assert r and b, (runtime, builder)  # an exact tag, never latest
    assert (r.group(2), b.group(2)) == ("runtime", "devel")
    assert (r.group(1), r.group(3)) == (b.group(1), b.group(3))  # same CUDA and OS: same python


def test_torch_index_matches_the_cuda_of_the_base_image():
    cuda = re.match(r"^nvidia/cuda:(\d+)\.(\d+)", _arg("BASE_IMAGE"))
    assert cuda
    assert _arg("TORCH_INDEX_URL").endswith(f"/cu{cuda.group(1)}{cuda.group(2)}")


def test_torch_version_is_the_dev_install_one():
    makefile = (ROOT / "Makefile").read_text()
    dev = re.search(r"^TORCH_VERSION \?= (\S+)$", makefile, flags=re.M)
    assert dev and _arg("TORCH_VERSION") == dev.group(1)


def test_everything_else_comes_from_the_shared_constraints_file():
    assert "-c /src/constraints.txt" in DOCKERFILE
    assert re.match(r"^\d+\.\d+\.\d+(\.post\d+)?$", _arg("FLASH_ATTN_VERSION"))
    constraints = (ROOT / "constraints.txt").read_text()
    assert "einops==" in constraints  # flash-attn's runtime dependency, pinned like the rest


def test_runtime_contract():
    assert re.search(r"^USER 1000:1000$", DOCKERFILE, flags=re.M)  # numeric: runAsNonRoot can check it
    assert 'ENTRYPOINT ["/usr/bin/tini", "--", "python", "/app/entrypoint.py"]' in DOCKERFILE
    for env in ("TFBENCH_CONFIG=/cfg", "TFBENCH_OUTPUT=/results", "HF_HOME=/cache/huggingface"):
        assert env in DOCKERFILE
    assert "org.opencontainers.image.revision" in DOCKERFILE
    # The CA bundle of a TLS-re-signing network reaches pip only as a build secret.
    assert "--mount=type=secret,id=ca" in DOCKERFILE
    assert not re.search(r"^(COPY|ADD) .*(\.crt|\.pem|\bca\b)", DOCKERFILE, flags=re.M)
