#!/usr/bin/env bash
# The one GPU command for the attention kernels (about 8 minutes on one H100/H200):
#   1. the gpu-marked tests (every mask family, S = 1 / 127 / 4097, empty rows, GQA 8:1,
#      D 64 / 128, bf16 / fp16, bshd / sbhd, determinism, every shipped tile, offsets past
#      2^31, Flex forward and backward, megatron recompute replaying the mask);
#   2. attention forward+backward effective TFLOP/s of ours, Flex and SDPA in one process,
#      B4 H16 S4096 D128 and B8 H16 S2048 D64, masks causal / doc_causal / doc_bidir /
#      unilm_s2s / doc_r2l (the shared anchors' masks);
#   3. train-step tokens/s and MFU, 350M and 1.3B: causal with SDPA, document-masked FIM
#      with ours and with Flex;
#   4. megatron's distributed optimizer: its NaN guard and a bf16 resume from its state.
# Writes bench/results/gpu_check_<date>_<gpu>.jsonl (one JSON line per figure) and .md.
#
#   bash bench/gpu_check.sh             # on the GPU machine
#   bash bench/gpu_check.sh --dry-run   # anywhere: build every input, list every test, time nothing
#
# The GPU machine has no package registry: run `bash ../shared/gpu/wheels.sh` here first and
# take .whl/ along; this script installs it into .site/ when megatron-core is missing.
# ANCHORS (default ../shared/bench/results) is read for the anchor figures if it exists.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET

if ! $PY -c "import megatron.core" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  echo "[gpu_check] installing .whl/ into .site/" >&2
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .site .whl/*.whl \
    || { echo "[gpu_check] wheel install failed" >&2; exit 1; }
  export PYTHONPATH="$PWD/.site:$PYTHONPATH"
fi

stamp=$(date -u +%Y-%m-%d)
if [ $DRY = 1 ]; then
  gpu=dry-run
else
  gpu=$($PY -c "import torch; print(torch.cuda.get_device_name().replace(' ', '_'))") || {
    echo "[gpu_check] no CUDA GPU; use --dry-run" >&2; exit 1; }
fi
out=bench/results/gpu_check_${stamp}_${gpu}
logs=$(mktemp -d)
mkdir -p bench/results
: > "$out.jsonl"
t_start=$(date +%s)

stage() {  # NAME LIMIT_S COMMAND...: output shown and kept in $logs/NAME.log, JSON lines tagged into $out.jsonl
  local name=$1 limit=$2; shift 2
  local t0; t0=$(date +%s)
  echo "[gpu_check] $name (at most ${limit}s)" >&2
  timeout "$limit" "$@" 2>&1 | tee "$logs/$name.log" >&2
  local rc=${PIPESTATUS[0]}
  grep '^{' "$logs/$name.log" | sed "s/^{/{\"stage\": \"$name\", /" >> "$out.jsonl"
  echo "{\"stage\": \"$name\", \"rc\": $rc, \"seconds\": $(( $(date +%s) - t0 ))}" >> "$out.jsonl"
}

$PY - >> "$out.jsonl" <<'PYEOF'
import json, platform, torch, triton
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
print(json.dumps({"stage": "env", "torch": torch.__version__, "triton": triton.__version__, "gpu": gpu,
                  "python": platform.python_version()}))
PYEOF

# 1. the gpu-marked kernel tests (on --dry-run: only collected, listing what would run)
tests=(tests/test_kernels_triton.py tests/test_kernels_backends.py tests/test_models_attention.py)
if [ $DRY = 1 ]; then
  stage tests 200 $PY -m pytest -q -m gpu --collect-only -p no:cacheprovider "${tests[@]}"
else
  stage tests 200 $PY -m pytest -q -m gpu -rfE -p no:cacheprovider "${tests[@]}"
fi
grep -E "passed|failed|errors?|collected" "$logs/tests.log" | tail -n 1 | $PY -c \
  'import json, sys; print(json.dumps({"stage": "tests", "summary": sys.stdin.read().strip()}))' >> "$out.jsonl"

# 2. attention: ours vs Flex vs SDPA on the anchors' masks, two of their shapes
dry=(); [ $DRY = 1 ] && dry=(--dry-run)
stage attention 180 $PY bench/attention.py "${dry[@]}" --shapes "4,16,4096,128;8,16,2048,64" \
  --masks causal,doc_causal,doc_bidir,unilm_s2s,doc_r2l --impls ours,flex,sdpa --check ours,flex

# 3. training step: causal with SDPA vs document-masked FIM with ours and with Flex
stage train_step 180 $PY bench/train_step.py "${dry[@]}" --preset 350M --preset 1.3B \
  --row causal:sdpa --row fim_docs:triton --row fim_docs:flex --steps 8 --warmup 3

# 4. megatron's distributed optimizer: a bf16 run resumed from its per-parameter state (last: the
#    figures above never wait on it)
collect=(); [ $DRY = 1 ] && collect=(--collect-only)
stage optimizer 90 $PY -m pytest -q -m gpu -rfE -p no:cacheprovider "${collect[@]}" \
  tests/test_recipes_resume.py tests/test_recipes_train.py -k distributed_optimizer

$PY bench/gpu_table.py "$out.jsonl" --anchors "${ANCHORS:-../shared/bench/results}" > "$out.md"
rm -rf "$logs"
echo "[gpu_check] $(( $(date +%s) - t_start )) s; wrote $out.jsonl and $out.md" >&2
cat "$out.md"
