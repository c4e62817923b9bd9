#!/usr/bin/env bash
# One entry for the README's two commands; installs what it needs into .venv.
#   bash dev.sh train [key=value ...]   tiny FIM decoder on CPU, embedded corpus
#   bash dev.sh test  [pytest args]     the test suite (CPU)
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VENV:-.venv}
stamp="$VENV/.installed-$(cat pyproject.toml | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "[dev.sh] installing into $VENV (first run only)" >&2
  log="$VENV/install.log"
  pipq() { "$VENV/bin/python" -m pip install -q "$@" >>"$log" 2>&1 || { tail -n 30 "$log" >&2; exit 1; }; }
  python3 -m venv "$VENV"
  : >"$log"
  pipq --upgrade pip
  # The CPU build of torch; on a GPU node, install your CUDA torch first and it is kept.
  "$VENV/bin/python" -c "import torch" 2>/dev/null || pipq "torch==2.13.0"
  # everything: the base install is numpy alone; [train] (with [data]), [test], [sweep] and [rlhf] add the rest
  pipq -e ".[train,test,sweep,rlhf]"
  "$VENV/bin/python" -W ignore -c "import torch, megatron.core, objectives" || { echo "[dev.sh] install failed, see $log" >&2; exit 1; }
  touch "$stamp"
fi
cmd=${1:-}; shift || true
case "$cmd" in
  # megatron-core's import-time notice that Apex / Transformer Engine are absent (we use neither),
  # also in DataLoader worker processes
  train) export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore:Transformer Engine and Apex are not installed}"
         exec "$VENV/bin/python" -m recipes.train recipes/configs/gpt_fim_tiny.yaml "$@" ;;
  test)  exec "$VENV/bin/python" -m pytest -q "$@" ;;
  *) echo "usage: bash dev.sh {train|test} [args]" >&2; exit 2 ;;
esac
