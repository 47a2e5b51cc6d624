#!/usr/bin/env bash
# Builds the transformers releases the compat tests measure (tests/compat/), into DIR:
#   DIR/transformers-5.23.0        the 5.23.0 wheel unpacked: imports with tfbench's own environment
#   DIR/transformers-5.17.0-wheel  the 5.17.0 wheel unpacked: does not (its huggingface_hub is older)
#   DIR/venv-5.17.0                a venv with 5.17.0, its dependencies and the same CPU torch
# Kept between runs: a stamp of this script and the constraints says when to rebuild.
set -euo pipefail
dir=${1:?usage: scripts/compat_envs.sh DIR}
here=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
torch_version=${TORCH_VERSION:-2.13.0}
constraints="$here/tests/compat/constraints-5.17.0.txt"
stamp=$(cat "$0" "$constraints" | sha256sum | cut -c1-16)
mkdir -p "$dir"
if [ -f "$dir/.stamp" ] && [ "$(cat "$dir/.stamp")" = "$stamp" ]; then
    echo "compat environments in $dir are up to date"
    exit 0
fi
rm -rf "${dir:?}"/*
pip=("$python" -m pip --disable-pip-version-check -q)
"${pip[@]}" download --no-deps -d "$dir/wheels" transformers==5.23.0
"${pip[@]}" download --no-deps -d "$dir/wheels" transformers==5.17.0
"$python" -m zipfile -e "$dir"/wheels/transformers-5.23.0-*.whl "$dir/transformers-5.23.0"
"$python" -m zipfile -e "$dir"/wheels/transformers-5.17.0-*.whl "$dir/transformers-5.17.0-wheel"
"$python" -m venv "$dir/venv-5.17.0"
venv_pip=("$dir/venv-5.17.0/bin/python" -m pip --disable-pip-version-check -q)
"${venv_pip[@]}" install -c "$constraints" "torch==$torch_version"
"${venv_pip[@]}" install -c "$constraints" "$dir"/wheels/transformers-5.17.0-*.whl \
    pydantic PyYAML numpy psutil nvidia-ml-py
echo "$stamp" > "$dir/.stamp"
echo "compat environments built in $dir"
