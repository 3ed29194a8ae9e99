#!/usr/bin/env bash
# Prepare, on a machine with network, the Python 3.12 wheels that the GPU machine lacks (benchmarks/gpu_check.sh
# installs them there with `pip install --no-deps`): datasets, trl and vaderSentiment at the versions of
# constraints.txt, plus the needs of theirs that the GPU image does not hold (dill, multiprocess). Everything else they
# need (pyarrow, fsspec, huggingface-hub, xxhash, pandas, requests, accelerate, transformers, ...) is in the GPU image
# (/work/.library/device/KINDS.md). Usage: benchmarks/gpu_wheels.sh [DIR] (default wheels/, ignored by git); about 2 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-wheels}
PY=${PYTHON:-python3}
pin() { grep -i "^$1==" constraints.txt | head -1; }
mkdir -p "$dir"
pkgs=("$(pin datasets)" "$(pin trl)" "$(pin dill)" "$(pin multiprocess)")
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$dir" "${pkgs[@]}"
vader=$(pin vaderSentiment)
# vaderSentiment: a py2.py3 wheel on PyPI; if only its sdist can be had, build the (pure Python) wheel here
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d "$dir" "$vader" \
  || "$PY" -m pip wheel -q --no-deps -w "$dir" "$vader"
ls -l "$dir"
