#!/usr/bin/env bash
# The Dockerfile's pins that need the network to resolve: the base images' digests, the sha256 of
# the prebuilt flash-attn wheels (FLASH_ATTN=wheel) and of the flash-attn sdist (FLASH_ATTN=build),
# and the revisions of the Hub kernels the CUDA images fetch (HUB_KERNELS).
# Run it where Docker Hub, GitHub, PyPI and the Hugging Face Hub can be reached.
#
#   scripts/pin_images.sh --list     the pins as the Dockerfile has them (no network)
#   scripts/pin_images.sh --check    every pinned digest still resolves, every sha256 matches
#                                    what is downloaded, and every Hub kernel's revision exists
#                                    (with the commit it is now); exit 1 on a mismatch or an
#                                    unfilled pin
#   scripts/pin_images.sh --update   rewrites the ARG lines in place: each image to the digest its
#                                    tag points to now, each sha256 to the downloaded file's;
#                                    then review `git diff Dockerfile` and commit it. A Hub
#                                    kernel's revision is left as written: a version branch (v4)
#                                    moves to a commit only by hand, as the README says why
#
# Needs docker with buildx (docker buildx imagetools inspect), curl, sha256sum and python3.
# CA_BUNDLE: a CA bundle for curl where the network re-signs TLS. DOCKERFILE: another file.
# HF_ENDPOINT: another Hub (default https://huggingface.co).
set -euo pipefail
cd "$(dirname "$0")/.."
DOCKERFILE=${DOCKERFILE:-Dockerfile}
MODE=${1:---check}
case "$MODE" in
--list | --check | --update) ;;
*)
    echo "usage: $0 [--list|--check|--update]" >&2
    exit 2
    ;;
esac

# ARG lines: the base images, the wheels' URL and sha256, the sdist's version and sha256.
IMAGE_RE='^ARG (CU[0-9]+_(RUNTIME|DEVEL)_IMAGE)=(.*)$'
WHEEL_RE='^ARG (FLASH_ATTN_WHEEL_(CU[0-9]+))=(.*)$'

arg() { sed -n "s/^ARG $1=//p" "$DOCKERFILE" | head -n 1; }

set_arg() { # NAME VALUE: rewrites the one `ARG NAME=...` line
    python3 - "$DOCKERFILE" "$1" "$2" <<'EOF'
import re, sys
path, name, value = sys.argv[1:]
text = open(path).read()
new, n = re.subn(rf"^ARG {re.escape(name)}=.*$", lambda m: f"ARG {name}={value}", text, count=1, flags=re.M)
if n != 1:
    sys.exit(f"ARG {name} not found in {path}")
open(path, "w").write(new)
EOF
}

curl_() { curl -fsSL --retry 3 ${CA_BUNDLE:+--cacert "$CA_BUNDLE"} "$@"; }

failures=0
fail() {
    echo "FAIL  $*" >&2
    failures=$((failures + 1))
}

images=()
while IFS= read -r line; do
    [[ $line =~ $IMAGE_RE ]] && images+=("${BASH_REMATCH[1]}")
done <"$DOCKERFILE"
wheels=()
while IFS= read -r line; do
    [[ $line =~ $WHEEL_RE ]] && wheels+=("${BASH_REMATCH[2]}")
done <"$DOCKERFILE"
[ ${#images[@]} -gt 0 ] || {
    echo "no base image ARGs found in $DOCKERFILE" >&2
    exit 1
}

if [ "$MODE" = --list ]; then
    for name in "${images[@]}"; do echo "$name=$(arg "$name")"; done
    for variant in "${wheels[@]}"; do
        echo "FLASH_ATTN_WHEEL_$variant=$(arg "FLASH_ATTN_WHEEL_$variant")"
        echo "FLASH_ATTN_WHEEL_SHA256_$variant=$(arg "FLASH_ATTN_WHEEL_SHA256_$variant")"
    done
    echo "FLASH_ATTN_VERSION=$(arg FLASH_ATTN_VERSION)"
    echo "FLASH_ATTN_SDIST_SHA256=$(arg FLASH_ATTN_SDIST_SHA256)"
    echo "HUB_KERNELS=$(arg HUB_KERNELS | tr -d '"')"
    exit 0
fi

for tool in docker curl sha256sum python3; do
    command -v "$tool" >/dev/null || {
        echo "$tool is missing" >&2
        exit 1
    }
done

# The digest a reference resolves to: for a multi-platform image, its index (what `docker pull`
# of the tag resolves first), so that one pin serves every platform.
digest_of() {
    docker buildx imagetools inspect "$1" --format '{{json .Manifest}}' |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["digest"])'
}

# ---- base images
for name in "${images[@]}"; do
    ref=$(arg "$name")
    tag=${ref%@*}
    pinned=""
    [ "$ref" = "$tag" ] || pinned=${ref#*@}
    now=$(digest_of "$tag") || {
        fail "$name: cannot resolve $tag"
        continue
    }
    if [ "$MODE" = --update ]; then
        [ "$now" = "$pinned" ] || set_arg "$name" "$tag@$now"
        echo "ok    $name=$tag@$now${pinned:+ (was $pinned)}"
    elif [ -z "$pinned" ]; then
        fail "$name: $tag is not pinned by digest (the tag points to $now)"
    elif ! docker buildx imagetools inspect "$tag@$pinned" >/dev/null 2>&1; then
        fail "$name: $tag@$pinned no longer resolves (the tag points to $now): run $0 --update"
    elif [ "$now" != "$pinned" ]; then
        echo "ok    $name: $pinned resolves; note: $tag now points to $now (--update moves to it)"
    else
        echo "ok    $name: $tag@$pinned"
    fi
done

# ---- file pins: NAME of the sha256 ARG, URL to download
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
check_file() {
    local sha_name=$1 url=$2 pinned got
    pinned=$(arg "$sha_name")
    if ! curl_ -o "$tmp/file" "$url"; then
        fail "$sha_name: cannot download $url"
        return
    fi
    got=$(sha256sum "$tmp/file" | cut -d' ' -f1)
    rm -f "$tmp/file"
    if [ "$MODE" = --update ]; then
        [ "$got" = "$pinned" ] || set_arg "$sha_name" "$got"
        echo "ok    $sha_name=$got${pinned:+ (was $pinned)}"
    elif [ "$got" != "$pinned" ]; then
        fail "$sha_name is $pinned, the file has $got ($url): run $0 --update"
    else
        echo "ok    $sha_name: $url"
    fi
}

for variant in "${wheels[@]}"; do
    check_file "FLASH_ATTN_WHEEL_SHA256_$variant" "$(arg "FLASH_ATTN_WHEEL_$variant")"
done

# The sdist's URL, from PyPI's JSON API; its sha256 is recomputed from the download.
version=$(arg FLASH_ATTN_VERSION)
if sdist_url=$(curl_ "https://pypi.org/pypi/flash-attn/$version/json" |
    python3 -c 'import json, sys; print(next(u["url"] for u in json.load(sys.stdin)["urls"] if u["packagetype"] == "sdist"))'); then
    check_file FLASH_ATTN_SDIST_SHA256 "$sdist_url"
else
    fail "FLASH_ATTN_SDIST_SHA256: no sdist of flash-attn $version on PyPI"
fi

# ---- Hub kernels: each ORG/NAME@REVISION must exist on the Hub (the kernels API, as
# huggingface_hub's kernel_info asks it); the commit it resolves to now is printed.
read -r -a hub_kernels <<<"$(arg HUB_KERNELS | tr -d '"')"
for kernel in "${hub_kernels[@]}"; do
    repo=${kernel%@*} rev=${kernel#*@}
    if [ "$repo" = "$kernel" ]; then
        fail "HUB_KERNELS: $kernel has no @REVISION"
    elif commit=$(curl_ "${HF_ENDPOINT:-https://huggingface.co}/api/kernels/$repo/revision/$rev" |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["sha"])'); then
        echo "ok    HUB_KERNELS: $kernel (now commit $commit)"
    else
        fail "HUB_KERNELS: $kernel does not resolve on the Hub"
    fi
done

if [ "$failures" -gt 0 ]; then
    echo "$failures pin(s) to fix" >&2
    exit 1
fi
