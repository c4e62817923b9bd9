#!/usr/bin/env bash
# Single node, several processes (GPUs, or CPU processes with gloo):
#   bash recipes/launch/torchrun.sh CONFIG.yaml [dotted.key=value ...]
# Environment:
#   NPROC   processes on this node (default: number of visible GPUs, else 2)
#   PYTHON  interpreter (default: .venv/bin/python if present, else python)
# Examples:
#   NPROC=8 bash recipes/launch/torchrun.sh recipes/configs/gpt_fim_350m.yaml parallel.tensor_parallel=2
#   NPROC=2 bash recipes/launch/torchrun.sh recipes/configs/gpt_fim_tiny.yaml parallel.device=cpu
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ $# -lt 1 ]; then
  echo "usage: [NPROC=n] bash recipes/launch/torchrun.sh CONFIG.yaml [dotted.key=value ...]" >&2
  exit 2
fi
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
if [ -z "${NPROC:-}" ]; then
  NPROC=$("$PYTHON" -c "import torch; print(torch.cuda.device_count() or 2)")
fi
exec "$PYTHON" -m torch.distributed.run --standalone --nnodes=1 --nproc-per-node="$NPROC" \
  -m recipes.train "$@"
