#!/usr/bin/env bash
# The README's commands. Each installs, on first use, the exact versions of requirements/lock.txt
# (hashes checked, no resolver) into .venv, then the project itself (editable, no dependencies).
#   bash dev.sh train [key=value ...]   the main job: the tiny FIM decoder on CPU, embedded corpus
#   bash dev.sh test  [pytest args]     the test suite (CPU)
#   bash dev.sh upgrade [pytest args]   refresh the lock to the newest versions pyproject.toml allows,
#                                       reinstall from it and run the suite (a deliberate step; commit
#                                       requirements/lock.txt when the suite passes)
# On a GPU node, install your CUDA torch into .venv first: it is kept, with the triton it brought.
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VENV:-.venv}
LOCK=requirements/lock.txt

install() {
  local stamp="$VENV/.installed-$(cat pyproject.toml "$LOCK" | sha1sum | cut -c1-12)"
  [ -f "$stamp" ] && return 0
  echo "[dev.sh] installing the locked environment into $VENV (first run only)" >&2
  python3 -m venv "$VENV"
  local log="$VENV/install.log" req="$VENV/requirements.txt"
  : >"$log"
  pipq() { "$VENV/bin/python" -m pip install -q "$@" >>"$log" 2>&1 || { tail -n 30 "$log" >&2; exit 1; }; }
  if "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    # a torch is already there (a GPU node's CUDA build): keep it and its triton, install the rest
    "$VENV/bin/python" - "$LOCK" >"$req" <<'PY'
import re, sys
keep, out = True, []
for line in open(sys.argv[1]):
    if re.match(r"^[A-Za-z0-9]", line):
        keep = re.match(r"^(torch|triton)==", line) is None
    if keep:
        out.append(line)
sys.stdout.write("".join(out))
PY
    echo "[dev.sh] keeping the installed torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)')" >&2
  else
    cp "$LOCK" "$req"
  fi
  pipq --no-deps --require-hashes -r "$req"
  pipq --no-deps --no-build-isolation -e .
  "$VENV/bin/python" -m pip check >>"$log" 2>&1 || { tail -n 20 "$log" >&2; echo "[dev.sh] pip check failed" >&2; exit 1; }
  "$VENV/bin/python" -W ignore -c "import torch, megatron.core, ptobj.recipes" \
    || { echo "[dev.sh] install failed, see $log" >&2; exit 1; }
  rm -f "$VENV"/.installed-*
  touch "$stamp"
}

upgrade() {
  # the newest versions the ranges allow, for Linux x86_64 / CPython 3.11 (this machine kind and CI),
  # with the CPU torch of requirements/torch-cpu.txt (TORCH_WHEELS: a folder or URL that holds it)
  local wheels=${TORCH_WHEELS:-/opt/wheels}
  [ -e "$wheels" ] || wheels=https://download.pytorch.org/whl/cpu/torch/
  python3 -m pip install -q --user uv >/dev/null 2>&1 || python3 -m pip install -q uv
  python3 -m uv pip compile pyproject.toml --extra train --extra test --extra sweep --extra rlhf --extra wandb --extra hf --extra docs \
    --generate-hashes --upgrade --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
    --find-links "$wheels" -c requirements/torch-cpu.txt --custom-compile-command "bash dev.sh upgrade" \
    -q -o "$LOCK"
  git --no-pager diff --stat -- "$LOCK" || true
  rm -rf "$VENV"
  install
}

cmd=${1:-}; shift || true
case "$cmd" in
  # megatron-core's import-time notice that Apex / Transformer Engine are absent (we use neither),
  # also in DataLoader worker processes
  train)   install
           export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore:Transformer Engine and Apex are not installed}"
           exec "$VENV/bin/ptobj" train gpt_fim_tiny "$@" ;;
  test)    install; exec "$VENV/bin/python" -m pytest -q "$@" ;;
  upgrade) upgrade; exec "$VENV/bin/python" -m pytest -q "$@" ;;
  *) echo "usage: bash dev.sh {train|test|upgrade} [args]" >&2; exit 2 ;;
esac
