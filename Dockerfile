# tfbench image. One file, three variants (BuildKit required: RUN --mount):
#
#   cu126 (default)  make image    or  DOCKER_BUILDKIT=1 docker build -t tfbench .
#                    torch 2.13.0+cu126 on CUDA 12.6.3: Maxwell to Hopper (sm50-sm90)
#   cu130            make image VARIANT=cu130   (--build-arg VARIANT=cu130)
#                    torch 2.13.0+cu130 on CUDA 13.0.2: Turing to Blackwell (sm75-sm120), driver >= 580
#   cpu (tests)      make test-image, which builds it with --build-arg VARIANT=cpu
#                    --build-arg FLASH_ATTN=none --build-arg HUB_KERNELS= --build-arg
#                    CPU_BASE_IMAGE=tfbench-base:bookworm and torch from the CPU wheel it puts in
#                    .docker-wheels/.
#
# flash-attn, FLASH_ATTN=wheel|build|none (see README, Docker):
#   wheel (default)  a prebuilt wheel for exactly this torch/CUDA/python, pinned by URL and sha256.
#                    flash-attn's own releases stop at torch 2.10, so the wheels are the community
#                    builds of mjun0812/flash-attention-prebuild-wheels (flash-attn 2.8.3).
#   build            compiles flash-attn 2.8.3.post2 from its PyPI sdist (pinned by sha256) with
#                    nvcc: hours, and about 10 GB of memory per MAX_JOBS.
#   none             no flash-attn: tfbench skips flash_attention_2 cells with the reason.
#
# Attention kernels from the Hub (attn_implementation: ORG/NAME@REVISION, see README, Docker): the
# CUDA variants install the kernels package, which transformers loads them with, and fetch the
# kernels of HUB_KERNELS at build time into KERNELS_CACHE=/opt/kernels (outside the /cache volume,
# which would hide it), where transformers finds them with HF_HUB_OFFLINE=1. The CPU variant: none.
#
# Stages: base-<VARIANT> -> python -> torch -> flash-attn-<FLASH_ATTN> -> venv -> runtime (the last,
# default target). BuildKit builds only the stages the target needs: wheel and none never pull
# the devel image or run nvcc.
#
# Pins. Base images by digest (the tag stays in the reference, and in the comment above it);
# scripts/pin_images.sh checks them and the wheels' sha256 on a machine with network, and
# rewrites the ARG lines below (--update). Everything else comes from constraints.txt, the
# file the dev install uses (kernels too; its own dependencies are resolved by pip at build time:
# the package index this project is developed with lacks the kernels release transformers asks for).
#
# Certificates: where a network re-signs TLS, pass its CA bundle as a build secret
# (--secret id=ca,src=/etc/ssl/certs/ca-certificates.crt). pip (PIP_CERT), flash-attn's setup.py
# (SSL_CERT_FILE) and apt (Acquire::https::CAInfo, for NVIDIA's https apt source) use it only
# while a RUN runs; it never lands in a layer. Without the secret they use their own bundles.

ARG VARIANT=cu126
ARG FLASH_ATTN=wheel

# ---- pins: base images
# nvidia/cuda:12.6.3-runtime-ubuntu24.04
ARG CU126_RUNTIME_IMAGE=nvidia/cuda:12.6.3-runtime-ubuntu24.04@sha256:92906d87596d638d35015c6353053121bd299d25943b875763321653884ba924
# nvidia/cuda:12.6.3-devel-ubuntu24.04
ARG CU126_DEVEL_IMAGE=nvidia/cuda:12.6.3-devel-ubuntu24.04@sha256:392c0df7b577ecae17a17f6ba7f2009c217bb4422f8431c053ae9af61a8c148a
# nvidia/cuda:13.0.2-runtime-ubuntu24.04
ARG CU130_RUNTIME_IMAGE=nvidia/cuda:13.0.2-runtime-ubuntu24.04@sha256:6a0e31b59e70890446f2c17356d6efc0d54260090a8c63d6ca7c2ad049db95d2
# nvidia/cuda:13.0.2-devel-ubuntu24.04
ARG CU130_DEVEL_IMAGE=nvidia/cuda:13.0.2-devel-ubuntu24.04@sha256:0eee3094c71518ad31d011a594ae6ed6de72959ee07e318cb31cffe71690e90c
# The CPU variant's base: python3, python3-venv and tini (make test-image builds it with debootstrap).
ARG CPU_BASE_IMAGE=tfbench-base:bookworm

# ---- pins: torch, the same release for every variant, from download.pytorch.org/whl/<VARIANT>
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl
ARG PYPI_INDEX_URL=https://pypi.org/simple

# ---- pins: flash-attn. FLASH_ATTN=wheel: one wheel per variant (cp312: Ubuntu 24.04's python).
# A sha256 of "unpinned" makes the build stop and say how to fill it (scripts/pin_images.sh --update).
ARG FLASH_ATTN_WHEEL_CU126=https://github.com/mjun0812/flash-attention-prebuild-wheels/releases/download/v0.9.47/flash_attn-2.8.3+cu126torch2.13-cp312-cp312-linux_x86_64.whl
ARG FLASH_ATTN_WHEEL_SHA256_CU126=unpinned
ARG FLASH_ATTN_WHEEL_CU130=https://github.com/mjun0812/flash-attention-prebuild-wheels/releases/download/v0.9.47/flash_attn-2.8.3+cu130torch2.13-cp312-cp312-linux_x86_64.whl
ARG FLASH_ATTN_WHEEL_SHA256_CU130=unpinned
# FLASH_ATTN=build: the PyPI sdist, and the GPU architectures it is compiled for per variant
# (CUDA 12.6's nvcc stops at sm90; CUDA 13 has dropped everything before sm75).
ARG FLASH_ATTN_VERSION=2.8.3.post2
ARG FLASH_ATTN_SDIST_SHA256=d0f9f0b08a986cdeadbffcf5ec8b3a8f514366c68ad1853d3ab061bc83cc340b
ARG TORCH_CUDA_ARCH_LIST_CU126="8.0;9.0"
ARG TORCH_CUDA_ARCH_LIST_CU130="8.0;9.0;10.0;12.0"

# ---- pins: Hub kernels fetched at build time, ORG/NAME@REVISION separated by spaces. Each needs its
# revision: a commit, or a version branch v<N> (what transformers loads for ORG/NAME without one,
# FLASH_ATTN_KERNEL_VERSIONS in its modeling_flash_attention_utils.py: v4 of flash-attn2 for torch
# >= 2.10; fetched as the branch, it also serves that plain name offline). "": none.
ARG HUB_KERNELS="kernels-community/flash-attn2@v4"

# ---- the base images of each variant: runtime (python, torch, the image) and devel (nvcc)
FROM ${CU126_RUNTIME_IMAGE} AS base-cu126
ARG CU126_RUNTIME_IMAGE
LABEL org.opencontainers.image.base.name="${CU126_RUNTIME_IMAGE}"
FROM ${CU130_RUNTIME_IMAGE} AS base-cu130
ARG CU130_RUNTIME_IMAGE
LABEL org.opencontainers.image.base.name="${CU130_RUNTIME_IMAGE}"
FROM ${CPU_BASE_IMAGE} AS base-cpu
ARG CPU_BASE_IMAGE
LABEL org.opencontainers.image.base.name="${CPU_BASE_IMAGE}"
FROM ${CU126_DEVEL_IMAGE} AS devel-cu126
FROM ${CU130_DEVEL_IMAGE} AS devel-cu130
FROM ${CPU_BASE_IMAGE} AS devel-cpu

# ---- python: the interpreter, what the runtime needs, and an empty venv at /opt/venv
# A stage of this file, picked by VARIANT (not an image to tag).
# hadolint ignore=DL3006
FROM base-${VARIANT} AS python
ARG VARIANT
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# The CUDA images have no python; the CPU variant's base brings python3, python3-venv and tini.
# python3-dev and gcc: Triton (torch.compile on a GPU) compiles its launcher at run time.
# tini is PID 1: it forwards SIGTERM to tfbench and reaps the orphans of killed cells.
# git: reads the commit of a mounted transformers checkout (`tfbench ab`, TFBENCH_TRANSFORMERS_SOURCE).
# apt reads the CA secret as its sandbox user _apt, hence mode 0444 (a CA bundle is public).
# Distribution packages follow the pinned base image's archive, hence no version pins.
# hadolint ignore=DL3008
RUN --mount=type=secret,id=ca,mode=0444 \
    if [ "$VARIANT" != cpu ]; then \
        apt_ca=(); if [ -f /run/secrets/ca ]; then apt_ca=(-o Acquire::https::CAInfo=/run/secrets/ca); fi \
        && apt-get "${apt_ca[@]}" update \
        && DEBIAN_FRONTEND=noninteractive apt-get "${apt_ca[@]}" install -y --no-install-recommends \
            python3 python3-venv python3-dev gcc libc6-dev tini git \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv /opt/venv

# ---- the torch wheel for the CPU variant comes from the build context (make test-image fills it)
FROM scratch AS wheels-cu126
FROM scratch AS wheels-cu130
FROM scratch AS wheels-cpu
COPY .docker-wheels/ /
# hadolint ignore=DL3006
FROM wheels-${VARIANT} AS wheels

# ---- torch: torch==<v>+<VARIANT> from the PyTorch index, its dependencies from there or PyPI;
# (CPU) the wheel in .docker-wheels/ and its dependencies from PyPI
FROM python AS torch
ARG VARIANT
ARG TORCH_VERSION
ARG TORCH_INDEX_URL
ARG PYPI_INDEX_URL
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN --mount=type=secret,id=ca \
    --mount=type=bind,from=wheels,target=/wheels \
    if [ -f /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && if [ "$VARIANT" = cpu ]; then \
        pip install --no-deps --no-index --find-links /wheels "torch==${TORCH_VERSION}" \
        && pip install "torch==${TORCH_VERSION}"; \
    else \
        pip install --index-url "${TORCH_INDEX_URL}/${VARIANT}" --extra-index-url "${PYPI_INDEX_URL}" \
            "torch==${TORCH_VERSION}+${VARIANT}"; \
    fi \
    && python -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'

# ---- flash-attn, FLASH_ATTN=wheel: the pinned wheel of this variant, checked against its sha256
FROM python AS flash-attn-fetch
ARG VARIANT
ARG FLASH_ATTN_WHEEL_CU126
ARG FLASH_ATTN_WHEEL_SHA256_CU126
ARG FLASH_ATTN_WHEEL_CU130
ARG FLASH_ATTN_WHEEL_SHA256_CU130
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN --mount=type=secret,id=ca \
    if [ -f /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && url_arg="FLASH_ATTN_WHEEL_${VARIANT^^}" && sha_arg="FLASH_ATTN_WHEEL_SHA256_${VARIANT^^}" \
    && url="${!url_arg:-}" && sha="${!sha_arg:-}" \
    && if [ -z "$url" ]; then \
        echo "error: FLASH_ATTN=wheel: VARIANT=$VARIANT has no flash-attn wheel; build it with FLASH_ATTN=none" >&2; \
        exit 1; \
    fi \
    && if ! [[ "$sha" =~ ^[0-9a-f]{64}$ ]]; then \
        echo "error: FLASH_ATTN=wheel: the sha256 of $url is not pinned ($sha_arg=$sha)." \
            "Run scripts/pin_images.sh --update on a machine with network and commit the Dockerfile," \
            "or pass --build-arg $sha_arg=<sha256>, or build with FLASH_ATTN=build or FLASH_ATTN=none." >&2; \
        exit 1; \
    fi \
    && echo "flash-attn @ $url --hash=sha256:$sha" > /tmp/flash-attn.txt \
    && pip download --no-deps --require-hashes --dest /dist -r /tmp/flash-attn.txt

# ---- flash-attn, FLASH_ATTN=build: compiled here with nvcc, against the torch of the torch stage.
# FLASH_ATTENTION_FORCE_BUILD=TRUE: setup.py does not first try to fetch a prebuilt wheel (there is
# none for torch 2.13; with FALSE it tries, through SSL_CERT_FILE, and compiles when that fails).
# Its build tools are pinned here, not read from constraints.txt, so that editing that file
# does not recompile flash-attn (psutil, packaging: the same versions as there).
# hadolint ignore=DL3006
FROM devel-${VARIANT} AS flash-attn-compile
ARG VARIANT
ARG FLASH_ATTN_VERSION
ARG FLASH_ATTN_SDIST_SHA256
ARG TORCH_CUDA_ARCH_LIST_CU126
ARG TORCH_CUDA_ARCH_LIST_CU130
# Overrides the variant's list, e.g. "9.0" for H100 only (fewer architectures, shorter build).
ARG TORCH_CUDA_ARCH_LIST=""
ARG MAX_JOBS=2
ARG NVCC_THREADS=2
ARG FLASH_ATTENTION_FORCE_BUILD=TRUE
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN --mount=type=secret,id=ca,mode=0444 \
    if [ "$VARIANT" = cpu ]; then \
        echo "error: FLASH_ATTN=build: the CPU variant has no flash-attn; build it with FLASH_ATTN=none" >&2; \
        exit 1; \
    fi \
    && apt_ca=() && if [ -f /run/secrets/ca ]; then apt_ca=(-o Acquire::https::CAInfo=/run/secrets/ca); fi \
    && apt-get "${apt_ca[@]}" update \
    && DEBIAN_FRONTEND=noninteractive apt-get "${apt_ca[@]}" install -y --no-install-recommends \
        python3 python3-dev build-essential \
    && rm -rf /var/lib/apt/lists/*
COPY --from=torch /opt/venv /opt/venv
RUN --mount=type=secret,id=ca \
    if [ -f /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca SSL_CERT_FILE=/run/secrets/ca; fi \
    && arch_arg="TORCH_CUDA_ARCH_LIST_${VARIANT^^}" \
    && archs="${TORCH_CUDA_ARCH_LIST:-${!arch_arg}}" \
    && echo "flash-attn ${FLASH_ATTN_VERSION}: sm ${archs}, MAX_JOBS=${MAX_JOBS}, NVCC_THREADS=${NVCC_THREADS}" \
    && pip install ninja==1.13.2 packaging==26.4 wheel==0.48.0 setuptools==84.2.1 psutil==7.2.2 \
    && echo "flash-attn==${FLASH_ATTN_VERSION} --hash=sha256:${FLASH_ATTN_SDIST_SHA256}" > /tmp/flash-attn.txt \
    && TORCH_CUDA_ARCH_LIST="$archs" FLASH_ATTN_CUDA_ARCHS="$(echo "$archs" | tr -d .)" \
        pip wheel --no-deps --no-build-isolation --require-hashes --wheel-dir /dist -r /tmp/flash-attn.txt

FROM scratch AS flash-attn-wheel
COPY --from=flash-attn-fetch /dist/ /
FROM scratch AS flash-attn-build
COPY --from=flash-attn-compile /dist/ /
FROM scratch AS flash-attn-none
# hadolint ignore=DL3006
FROM flash-attn-${FLASH_ATTN} AS flash-attn

# ---- venv: torch + flash-attn (unless none) + torchao + tfbench, everything at the exact versions
# of constraints.txt. The dependencies (read from pyproject.toml) get their own layer, so that a
# code change reinstalls only tfbench itself. torchao quantizes weights on any device (the
# quantization axis, README); bitsandbytes, CUDA only, comes with kernels below.
FROM torch AS venv
ARG VARIANT
ARG FLASH_ATTN
ARG HUB_KERNELS
COPY pyproject.toml constraints.txt /src/
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN --mount=type=secret,id=ca \
    --mount=type=bind,from=flash-attn,target=/fa \
    if [ -f /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && python -c 'import tomllib; print(*tomllib.load(open("/src/pyproject.toml", "rb"))["project"]["dependencies"], sep="\n")' \
        > /src/requirements.txt \
    && shopt -s nullglob && fa=(/fa/flash_attn-*.whl) \
    && if [ "$FLASH_ATTN" = none ]; then [ ${#fa[@]} = 0 ]; else [ ${#fa[@]} = 1 ]; fi \
    && pip install -c /src/constraints.txt -r /src/requirements.txt torchao "${fa[@]}"
# Hub kernels: kernels and bitsandbytes (the CUDA variants) and each kernel of HUB_KERNELS, the build of it for this
# torch and CUDA, as kernels' install_kernel picks it (no GPU needed: it reads torch.version.cuda),
# into the cache that get_kernel reads offline (KERNELS_CACHE). huggingface_hub's HTTP client
# (httpcore2) takes the CA secret as SSL_CERT_FILE. A revision is required: an unpinned kernel
# would change under a run.
RUN --mount=type=secret,id=ca \
    if [ -f /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca SSL_CERT_FILE=/run/secrets/ca; fi \
    && mkdir -p /opt/kernels \
    && read -r -a kernels <<< "$HUB_KERNELS" \
    && if [ "$VARIANT" = cpu ]; then \
        if [ ${#kernels[@]} -gt 0 ]; then \
            echo "error: HUB_KERNELS: the CPU variant has no hub kernels (they need a GPU); build it with HUB_KERNELS=" >&2; \
            exit 1; \
        fi; \
    else \
        pip install -c /src/constraints.txt kernels bitsandbytes \
        && KERNELS_CACHE=/opt/kernels python -c 'import re, sys; \
from kernels import install_kernel; \
form = r"([A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*)@([A-Za-z0-9][A-Za-z0-9._-]*)"; \
bad = [k for k in sys.argv[1:] if not re.fullmatch(form, k)]; \
bad and sys.exit("HUB_KERNELS: %s: each needs the form ORG/NAME@REVISION (a commit, or a version branch v<N>)" % " ".join(bad)); \
[print("hub kernel", k, "->", install_kernel(*re.fullmatch(form, k).groups())) for k in sys.argv[1:]]' "${kernels[@]}"; \
    fi
COPY README.md /src/
COPY bench /src/bench
# flash_attn is not imported here: its extension needs the GPU driver's libcuda.
RUN --mount=type=secret,id=ca \
    if [ -f /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && pip install --no-deps /src \
    && pip check \
    && python -c "import bench, torch; print('tfbench', bench.__version__, 'torch', torch.__version__)" \
    && python -c 'import importlib.metadata as m, os, sys; \
from transformers.utils.import_utils import KERNELS_MAX_VERSION as high, KERNELS_MIN_VERSION as low, is_kernels_available; \
cpu = os.environ["VARIANT"] == "cpu"; \
have = [d.version for d in m.distributions() if d.metadata["Name"] == "kernels"]; \
print("kernels", have[0] if have else "not installed", "(transformers asks for >= %s, < %s)" % (low, high)); \
sys.exit(0 if cpu or is_kernels_available() else "kernels %s: transformers loads hub kernels only with >= %s, < %s" % (have[0] if have else "not installed", low, high))' \
    && python -c 'import os, sys; \
from transformers.utils.import_utils import is_bitsandbytes_available, is_torchao_available; \
cpu = os.environ["VARIANT"] == "cpu"; \
print("quantization: torchao", is_torchao_available(), "bitsandbytes", is_bitsandbytes_available()); \
sys.exit(0 if is_torchao_available() and (cpu or is_bitsandbytes_available()) else "transformers cannot quantize with the torchao or bitsandbytes installed")' \
    && python -c 'import importlib.metadata as m, os, sys; \
have = [d.version for d in m.distributions() if d.metadata["Name"].lower().replace("_", "-") == "flash-attn"]; \
none = os.environ["FLASH_ATTN"] == "none"; \
print("flash-attn", have[0] if have else "not installed"); \
sys.exit(0 if bool(have) != none else "FLASH_ATTN=%s, but flash-attn: %s" % (os.environ["FLASH_ATTN"], have or "not installed"))'

# ---- runtime: python, the venv, the entrypoint; runs as uid 1000
FROM python AS runtime
ARG VARIANT
ARG FLASH_ATTN
ARG HUB_KERNELS
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Ubuntu's images have a user with uid 1000 (ubuntu): it makes way for tfbench.
RUN if user=$(getent passwd 1000 | cut -d: -f1) && [ -n "$user" ]; then userdel --remove "$user"; fi \
    && if group=$(getent group 1000 | cut -d: -f1) && [ -n "$group" ]; then groupdel "$group"; fi \
    && groupadd --gid 1000 tfbench \
    && useradd --uid 1000 --gid 1000 --create-home --shell /bin/bash tfbench \
    && mkdir -p /app /cfg /results /cache/huggingface \
    && chown tfbench:tfbench /cfg /results /cache /cache/huggingface
COPY --from=venv /opt/venv /opt/venv
# Owned by tfbench: online (no HF_HUB_OFFLINE) kernels may fetch a newer commit of a branch there.
COPY --from=venv --chown=1000:1000 /opt/kernels /opt/kernels
COPY entrypoint.py /app/entrypoint.py
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TFBENCH_CONFIG=/cfg \
    TFBENCH_OUTPUT=/results \
    HF_HOME=/cache/huggingface \
    KERNELS_CACHE=/opt/kernels
# Last, so that a new revision only relabels the image.
ARG VERSION=dev
ARG REVISION=unknown
ARG SOURCE=""
LABEL org.opencontainers.image.title="tfbench" \
      org.opencontainers.image.description="Batch benchmark appliance for Hugging Face transformers inference (${VARIANT}, flash-attn: ${FLASH_ATTN})" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.github.tfbench.variant="${VARIANT}" \
      io.github.tfbench.flash-attn="${FLASH_ATTN}" \
      io.github.tfbench.hub-kernels="${HUB_KERNELS}"
USER 1000:1000
WORKDIR /home/tfbench
VOLUME ["/results", "/cache"]
ENTRYPOINT ["/usr/bin/tini", "--", "python", "/app/entrypoint.py"]
