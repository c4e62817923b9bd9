#!/usr/bin/env bash
# Single node, several processes (GPUs, or CPU processes with gloo), through the ptobj command:
#   bash ptobj/recipes/launch/torchrun.sh RECIPE [dotted.key=value ...]
# RECIPE: a bundled recipe's name (ptobj train --list) or a YAML file.
# Environment:
#   NPROC   processes on this node (default: number of visible GPUs, else 2)
#   PTOBJ   the command (default: ptobj on PATH, else .venv/bin/ptobj)
# Examples:
#   NPROC=8 bash ptobj/recipes/launch/torchrun.sh gpt_fim_350m parallel.tensor_parallel=2
#   NPROC=2 bash ptobj/recipes/launch/torchrun.sh gpt_fim_tiny parallel.device=cpu
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: [NPROC=n] bash torchrun.sh RECIPE [dotted.key=value ...]" >&2
  exit 2
fi
PTOBJ=${PTOBJ:-$(command -v ptobj || echo .venv/bin/ptobj)}
[ -x "$PTOBJ" ] || { echo "torchrun.sh: no ptobj command (install the project, or set PTOBJ)" >&2; exit 2; }
PYTHON=$(dirname "$PTOBJ")/python
[ -x "$PYTHON" ] || PYTHON=python3
if [ -z "${NPROC:-}" ]; then
  NPROC=$("$PYTHON" -c "import torch; print(torch.cuda.device_count() or 2)")
fi
exec "$PYTHON" -m torch.distributed.run --standalone --nnodes=1 --nproc-per-node="$NPROC" \
  --no-python "$PTOBJ" train "$@"
