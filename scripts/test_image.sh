#!/usr/bin/env bash
# make test-image: build the CPU variant of the Dockerfile and test the image in real containers
# (tests/image/test_image.py).
#
# Needs root, not a running Docker: it installs docker.io and debootstrap if they are missing,
# starts a private dockerd (its own data root, exec root and socket; no bridge, no iptables, no
# ip forwarding) and always stops it, with its containerd, on exit, error or Ctrl-C. The data
# root stays in .cache/docker/, so a second run reuses the base image and the build cache.
#
# The base image is Debian bookworm made here by debootstrap (nothing is pulled from a registry);
# torch is the CPU wheel, taken into .docker-wheels/ by pip (this machine's pip finds it on disk).
# Where the network re-signs TLS, the host's CA bundle reaches pip in the build as a BuildKit
# secret: it is read from its host path and never lands in the context or a layer.
#
# Environment: TFBENCH_IMAGE (tag to build, default tfbench:cpu-test), TFBENCH_DOCKER_CACHE
# (default .cache/docker), DEBIAN_MIRROR, CA_BUNDLE, TORCH_VERSION, VERSION, REVISION, SOURCE.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

PY=${PY:-$REPO/.venv/bin/python}
CACHE=${TFBENCH_DOCKER_CACHE:-$REPO/.cache/docker}
IMAGE=${TFBENCH_IMAGE:-tfbench:cpu-test}
BASE_IMAGE=tfbench-base:bookworm
SUITE=bookworm
INCLUDE=python3,python3-venv,python3-pip,ca-certificates,tini
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
VERSION=${VERSION:-$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' bench/__init__.py)}
REVISION=${REVISION:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
SOURCE=${SOURCE:-$(git remote get-url origin 2>/dev/null || true)}
for ca in "${CA_BUNDLE:-}" "${PIP_CERT:-}" "${SSL_CERT_FILE:-}" "${REQUESTS_CA_BUNDLE:-}" \
    /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt; do
    if [ -n "$ca" ] && [ -f "$ca" ]; then CA_BUNDLE=$ca; break; fi
done

START=$(date +%s)
log() { printf '[test-image %4ss] %s\n' "$(($(date +%s) - START))" "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root: it starts a private Docker daemon"
[ -x "$PY" ] || die "$PY not found: run make install first"

# ---- tools: dockerd, containerd, runc (package docker.io; its docker CLI builds with BuildKit)
# and debootstrap. Package scripts start no service: policy-rc.d says no while they install.
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        policy=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy"
    fi
    rc=0
    { apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; } ||
        rc=$?
    [ -z "$policy" ] || rm -f "$policy"
    [ "$rc" = 0 ] || die "apt-get install ${missing[*]} failed"
fi
# The docker.io CLI (20.10) builds with its built-in BuildKit client; a newer CLI needs buildx.
DOCKER=${DOCKER:-$(command -v /usr/bin/docker || command -v docker)}
for tool in dockerd containerd runc debootstrap "$DOCKER"; do
    command -v "$tool" >/dev/null || die "$tool is missing"
done

# ---- the private daemon
mkdir -p "$CACHE"
exec 9>"$CACHE/lock"
flock -n 9 || die "another make test-image is using $CACHE"
DATA=$CACHE/data
mkdir -p "$DATA"
RUN_DIR=$(mktemp -d /tmp/tfbench-docker.XXXXXX) # exec root, socket, logs: short paths
TMPFS=""
DOCKERD_PID=""

# Every process whose command line names RUN_DIR: dockerd, its containerd, the shims.
run_dir_pids() {
    local p cmd
    for p in /proc/[0-9]*; do
        cmd=$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null) || continue
        case "$cmd" in *"$RUN_DIR"*) echo "${p#/proc/}" ;; esac
    done
}

unmount_under() {
    local dir=$1 mnt
    # deepest first; lazy, so that a busy one cannot keep the rest mounted
    awk -v d="$dir/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r | while read -r mnt; do
        umount -l "$mnt" 2>/dev/null || true
    done
}

cleanup() {
    local rc=$? i ids pids
    trap - EXIT INT TERM
    set +e
    if [ -n "$DOCKERD_PID" ] && kill -0 "$DOCKERD_PID" 2>/dev/null; then
        log "stopping the private dockerd"
        ids=$("$DOCKER" ps -aq 2>/dev/null)
        # shellcheck disable=SC2086
        [ -z "$ids" ] || "$DOCKER" rm -f -v $ids >/dev/null 2>&1
        kill -TERM "$DOCKERD_PID" 2>/dev/null
        for i in $(seq 1 60); do
            kill -0 "$DOCKERD_PID" 2>/dev/null || break
            sleep 0.5
        done
        kill -KILL "$DOCKERD_PID" 2>/dev/null
        wait "$DOCKERD_PID" 2>/dev/null
    fi
    for i in 1 2 3 4 5 6 7 8 9 10; do
        pids=$(run_dir_pids)
        [ -n "$pids" ] || break
        # shellcheck disable=SC2086
        if [ "$i" -lt 6 ]; then kill -TERM $pids 2>/dev/null; else kill -KILL $pids 2>/dev/null; fi
        sleep 0.5
    done
    [ -z "$(run_dir_pids)" ] || log "warning: still running: $(run_dir_pids)"
    unmount_under "$RUN_DIR"
    unmount_under "$DATA"
    [ -z "$TMPFS" ] || umount -l "$DATA"
    if [ "$rc" != 0 ] && [ -s "$RUN_DIR/dockerd.log" ]; then
        log "dockerd log (last lines):"
        tail -n 20 "$RUN_DIR/dockerd.log" >&2
    fi
    rm -rf --one-file-system "$RUN_DIR"
    log "done (exit $rc)"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# overlay2 cannot stack on overlayfs: there the data root goes on a tmpfs (not kept between runs).
if [ "$(stat -f -c %T "$DATA")" = overlayfs ]; then
    log "warning: $DATA is on overlayfs: using a tmpfs, nothing is cached for the next run"
    mount -t tmpfs -o size=16g tmpfs "$DATA"
    TMPFS=1
fi

export DOCKER_HOST=unix://$RUN_DIR/docker.sock
export DOCKER_CONFIG=$RUN_DIR/client # no credential helpers or contexts of this machine
mkdir -p "$DOCKER_CONFIG"
echo '{}' >"$RUN_DIR/daemon.json"
log "starting a private dockerd (data root $DATA)"
setsid dockerd --config-file "$RUN_DIR/daemon.json" --data-root "$DATA" --exec-root "$RUN_DIR/exec" \
    --pidfile "$RUN_DIR/dockerd.pid" --storage-driver=overlay2 --iptables=false --ip6tables=false \
    --ip-forward=false --ip-masq=false --bridge=none --log-level=warn -H "$DOCKER_HOST" \
    </dev/null >"$RUN_DIR/dockerd.log" 2>&1 9>&- &
DOCKERD_PID=$!
for _ in $(seq 1 120); do
    "$DOCKER" version >/dev/null 2>&1 && break
    kill -0 "$DOCKERD_PID" 2>/dev/null || die "dockerd exited"
    sleep 0.5
done
"$DOCKER" version >/dev/null || die "dockerd did not answer within 60 s"

# ---- the base image: Debian with python, made once and kept in the data root
recipe="debootstrap --variant=minbase --include=$INCLUDE $SUITE"
recipe_id=$(printf '%s' "$recipe" | sha256sum | cut -c1-16)
have=$("$DOCKER" image inspect -f '{{ index .Config.Labels "tfbench.base.recipe" }}' "$BASE_IMAGE" 2>/dev/null || true)
if [ "$have" != "$recipe_id" ]; then
    log "making $BASE_IMAGE: $recipe (about a minute)"
    rootfs=$RUN_DIR/rootfs
    if ! debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$rootfs" "$MIRROR" \
        >"$RUN_DIR/debootstrap.log" 2>&1; then
        tail -n 30 "$RUN_DIR/debootstrap.log" >&2
        die "debootstrap failed"
    fi
    unmount_under "$rootfs"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/debootstrap
    tar -C "$rootfs" --numeric-owner -c . | "$DOCKER" import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/bash"]' \
        --change "LABEL tfbench.base.recipe=$recipe_id" - "$BASE_IMAGE" >/dev/null
    rm -rf --one-file-system "$rootfs"
else
    log "$BASE_IMAGE: cached"
fi

# ---- the CPU torch wheel for the build context (.docker-wheels/), for the base image's python
pyver=$("$DOCKER" run --rm --network none "$BASE_IMAGE" python3 -c \
    'import sys; print("%d%d" % sys.version_info[:2])')
wheel_glob=".docker-wheels/torch-${TORCH_VERSION}+cpu-cp${pyver}-cp${pyver}-*.whl"
# shellcheck disable=SC2086
if ! ls $wheel_glob >/dev/null 2>&1; then
    log "taking the torch ${TORCH_VERSION}+cpu wheel (cp${pyver}) into .docker-wheels/"
    mkdir -p .docker-wheels
    rm -f .docker-wheels/*.whl
    "$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
        --implementation cp --python-version "${pyver:0:1}.${pyver:1}" --abi "cp${pyver}" \
        --platform "manylinux_2_28_$(uname -m)" -d .docker-wheels "torch==${TORCH_VERSION}+cpu" ||
        die "no CPU wheel of torch ${TORCH_VERSION} for cp${pyver}: pip needs it on disk (PIP_FIND_LINKS) or an index that has it (PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu)"
fi

# ---- the image: the CPU variant of the Dockerfile
secret=()
[ -z "${CA_BUNDLE:-}" ] || secret=(--secret "id=ca,src=$CA_BUNDLE")
log "building $IMAGE (CPU variant)"
DOCKER_BUILDKIT=1 "$DOCKER" build --network=host --progress=plain "${secret[@]}" \
    --build-arg VARIANT=cpu --build-arg FLASH_ATTN=none --build-arg HUB_KERNELS= \
    --build-arg CPU_BASE_IMAGE="$BASE_IMAGE" \
    --build-arg TORCH_VERSION="$TORCH_VERSION" --build-arg VERSION="$VERSION" \
    --build-arg REVISION="$REVISION" --build-arg SOURCE="$SOURCE" \
    -t "$IMAGE" . >"$CACHE/build.log" 2>&1 || {
    tail -n 60 "$CACHE/build.log" >&2
    die "docker build failed"
}
"$DOCKER" image prune -f >/dev/null # earlier builds of the tag
log "built $IMAGE (log: ${CACHE#"$REPO"/}/build.log): $("$DOCKER" image inspect -f '{{ .Size }}' "$IMAGE" | awk '{ printf "%.0f MB", $1 / 1e6 }')"

# ---- the tests
log "running tests/image/test_image.py"
TFBENCH_IMAGE=$IMAGE TFBENCH_IMAGE_VERSION=$VERSION TFBENCH_IMAGE_REVISION=$REVISION \
    "$PY" -m pytest -q -p no:cacheprovider tests/image/test_image.py
