# tfbench image. One file, two variants (BuildKit required: RUN --mount):
#
#   CUDA (default)  make image    or  DOCKER_BUILDKIT=1 docker build -t tfbench .
#   CPU  (tests)    make test-image, which builds it with
#                     --build-arg VARIANT=cpu --build-arg BASE_IMAGE=tfbench-base:bookworm
#                     --build-arg BUILDER_IMAGE=tfbench-base:bookworm
#                   and torch from the CPU wheel it puts in .docker-wheels/.
#
# Stages: python -> torch -> flash-attn-<VARIANT> -> venv -> runtime (the last, default target).
# BuildKit builds only the stages the target needs, so the CPU variant never runs nvcc.
#
# Pins. torch 2.13.0 from the cu126 index, on CUDA 12.6.3 images: PyTorch 2.13's release matrix
# builds CUDA 12.6 (12.6.3) and 13.0 as stable, 13.2 as experimental; 12.6 is its CUDA 12 build.
# flash-attn 2.8.3.post2 is compiled here against that torch and CUDA (setup.py first tries the
# project's prebuilt wheel for this torch/CUDA/python, FLASH_ATTENTION_FORCE_BUILD=TRUE skips that).
# Everything else comes from constraints.txt, the file the dev install uses.
#
# Certificates: where a network re-signs TLS, pass its CA bundle as a build secret
# (--secret id=ca,src=/etc/ssl/certs/ca-certificates.crt): pip uses it only while a RUN runs and
# it never lands in a layer. Without the secret pip uses its own bundle.

ARG VARIANT=cuda
ARG BASE_IMAGE=nvidia/cuda:12.6.3-runtime-ubuntu24.04
ARG BUILDER_IMAGE=nvidia/cuda:12.6.3-devel-ubuntu24.04

# ---- python: the interpreter and an empty venv at /opt/venv (the runtime has the same python)
FROM ${BUILDER_IMAGE} AS python
ARG VARIANT
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
# The CUDA images have no python; the CPU variant's base brings python3, python3-venv and tini.
# Distribution packages follow the pinned base image's archive, hence no version pins.
# hadolint ignore=DL3008
RUN if [ "$VARIANT" = cuda ]; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            python3 python3-venv python3-dev build-essential \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv /opt/venv

# ---- the torch wheel for the CPU variant comes from the build context (make test-image fills it)
FROM scratch AS wheels-cuda
FROM scratch AS wheels-cpu
COPY .docker-wheels/ /
# A stage of this file, picked by VARIANT (not an image to tag).
# hadolint ignore=DL3006
FROM wheels-${VARIANT} AS wheels

# ---- torch: from the PyTorch CUDA index, or (CPU) the wheel in .docker-wheels/ and its deps from PyPI
FROM python AS torch
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG VARIANT
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
RUN --mount=type=secret,id=ca \
    --mount=type=bind,from=wheels,target=/wheels \
    if [ -f /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && if [ "$VARIANT" = cpu ]; then \
        pip install --no-deps --no-index --find-links /wheels "torch==${TORCH_VERSION}" \
        && pip install "torch==${TORCH_VERSION}"; \
    else \
        pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"; \
    fi

# ---- flash-attn: a wheel built (or fetched) for this torch and the listed GPU architectures.
# Its build tools are pinned here, not read from constraints.txt, so that editing that file
# does not recompile flash-attn (psutil: the same version as there).
FROM torch AS flash-attn-build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG FLASH_ATTN_VERSION=2.8.3.post2
ARG TORCH_CUDA_ARCH_LIST="8.0;9.0"
ARG MAX_JOBS=4
ARG NVCC_THREADS=2
ARG FLASH_ATTENTION_FORCE_BUILD=FALSE
RUN --mount=type=secret,id=ca \
    if [ -f /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && pip install ninja==1.13.2 packaging==26.4 wheel==0.48.0 setuptools==84.2.1 psutil==7.2.2 \
    && FLASH_ATTN_CUDA_ARCHS="$(echo "${TORCH_CUDA_ARCH_LIST}" | tr -d .)" \
        pip wheel --no-deps --no-build-isolation --wheel-dir /dist "flash-attn==${FLASH_ATTN_VERSION}"

FROM scratch AS flash-attn-cuda
COPY --from=flash-attn-build /dist/ /
FROM scratch AS flash-attn-cpu
# hadolint ignore=DL3006
FROM flash-attn-${VARIANT} AS flash-attn

# ---- venv: torch + flash-attn (CUDA) + tfbench, everything at the exact versions of constraints.txt.
# The dependencies (read from pyproject.toml) get their own layer, so that a code change
# reinstalls only tfbench itself.
FROM torch AS venv
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY pyproject.toml constraints.txt /src/
RUN --mount=type=secret,id=ca \
    --mount=type=bind,from=flash-attn,target=/fa \
    if [ -f /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && python -c 'import tomllib; print(*tomllib.load(open("/src/pyproject.toml", "rb"))["project"]["dependencies"], sep="\n")' \
        > /src/requirements.txt \
    && shopt -s nullglob && fa=(/fa/flash_attn-*.whl) \
    && pip install -c /src/constraints.txt -r /src/requirements.txt "${fa[@]}"
COPY README.md /src/
COPY bench /src/bench
RUN --mount=type=secret,id=ca \
    if [ -f /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && pip install --no-deps /src \
    && pip check \
    && python -c "import bench, torch; print('tfbench', bench.__version__, 'torch', torch.__version__)"

# ---- runtime: python, the venv, the entrypoint; runs as uid 1000
FROM ${BASE_IMAGE} AS runtime
ARG VARIANT
ARG BASE_IMAGE
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# python3-dev and gcc: Triton (torch.compile on a GPU) compiles its launcher at run time.
# tini is PID 1: it forwards SIGTERM to tfbench and reaps the orphans of killed cells (a
# process that is PID 1 itself would leave them as zombies). The CPU variant's base has it.
# Ubuntu's images have a user with uid 1000 (ubuntu): it makes way for tfbench.
# hadolint ignore=DL3008
RUN if [ "$VARIANT" = cuda ]; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            python3 python3-dev gcc libc6-dev tini \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && if user=$(getent passwd 1000 | cut -d: -f1) && [ -n "$user" ]; then userdel --remove "$user"; fi \
    && if group=$(getent group 1000 | cut -d: -f1) && [ -n "$group" ]; then groupdel "$group"; fi \
    && groupadd --gid 1000 tfbench \
    && useradd --uid 1000 --gid 1000 --create-home --shell /bin/bash tfbench \
    && mkdir -p /app /cfg /results /cache/huggingface \
    && chown tfbench:tfbench /cfg /results /cache /cache/huggingface
COPY --from=venv /opt/venv /opt/venv
COPY entrypoint.py /app/entrypoint.py
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TFBENCH_CONFIG=/cfg \
    TFBENCH_OUTPUT=/results \
    HF_HOME=/cache/huggingface
# Last, so that a new revision only relabels the image.
ARG VERSION=dev
ARG REVISION=unknown
ARG SOURCE=""
LABEL org.opencontainers.image.title="tfbench" \
      org.opencontainers.image.description="Batch benchmark appliance for Hugging Face transformers inference (${VARIANT})" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"
USER 1000:1000
WORKDIR /home/tfbench
VOLUME ["/results", "/cache"]
ENTRYPOINT ["/usr/bin/tini", "--", "python", "/app/entrypoint.py"]
