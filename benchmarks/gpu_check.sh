#!/usr/bin/env bash
# GPU evidence (issue 19): benchmarks/gpu_check.sh OUT_DIR [--dry-run] [--skip a,b,c,d,e] [--total-s S]
#
# On the GPU machine (Python 3.12 with torch, transformers, accelerate; no network): installs the wheels that
# benchmarks/gpu_wheels.sh prepared into wheels/ (datasets, trl, vaderSentiment and their missing needs) with
# `pip install --no-deps`, then alignbench itself (`pip install --no-deps -e .`; if that cannot build offline, the
# tree runs from PYTHONPATH), then benchmarks/gpu_check.py, which writes OUT_DIR/gpu_check.json, gpu_check.md,
# summary_exact_gpu.csv; this script adds gpu_check.log. The whole check stays under --total-s (default 465 s,
# counted from here, the install included). --dry-run: every part at toy size on the CPU, nothing installed; without
# --dry-run it refuses (exit 2, nothing installed) unless $PYTHON sees a CUDA device.
set -uo pipefail
started=$(date +%s)
out=${1:?usage: benchmarks/gpu_check.sh OUT_DIR [--dry-run] [--skip PARTS] [--total-s SECONDS]}
shift
cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-python3}
mkdir -p "$out"
dry=0
for a in "$@"; do [ "$a" = "--dry-run" ] && dry=1; done
if [ "$dry" = 0 ] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
  # never install into a CPU machine's environment (that would repoint its editable alignbench at this tree)
  echo "gpu_check.sh: error: $PY sees no CUDA device; nothing installed (use --dry-run for the CPU run)" >&2
  exit 2
fi
if [ "$dry" = 0 ]; then
  if compgen -G "wheels/*.whl" >/dev/null; then
    echo "gpu_check.sh: installing $(ls wheels/*.whl | wc -l) wheels from wheels/"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir wheels/*.whl \
      || echo "gpu_check.sh: wheel install failed; the parts that need them will say so" >&2
  else
    echo "gpu_check.sh: no wheels/ folder (prepare it here with benchmarks/gpu_wheels.sh and carry it)" >&2
  fi
  "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . \
    || echo "gpu_check.sh: editable install failed offline; running alignbench from the tree (PYTHONPATH)" >&2
  echo "gpu_check.sh: install took $(( $(date +%s) - started )) s"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 ALIGNBENCH_QUIET=1 HF_HUB_OFFLINE=1 \
  TOKENIZERS_PARALLELISM=false
"$PY" benchmarks/gpu_check.py "$out" --started "$started" "$@" 2>&1 | tee "$out/gpu_check.log"
exit "${PIPESTATUS[0]}"
