"""The ``ptobj`` command line: one console script, a subcommand per job.

    ptobj train gpt_fim_tiny schedule.train_steps=50     # a bundled recipe (or a YAML file)
    ptobj prepare --corpus stdlib-code --vocab-size 8000 --out data/code
    ptobj export runs/gpt_fim_tiny hf/gpt_fim_tiny
    ptobj infill runs/gpt_fim_tiny                        # the infilling evaluation
    ptobj evaluate runs/gpt_fim_tiny                      # held-out losses of a saved run
    ptobj zeroshot runs/flan_tiny                         # zero-shot scores on held-out task clusters
    ptobj sweep --configs gpt_fim_tiny causal_lm_tiny --grid optim.lr=[1e-3,3e-3]
    ptobj experiment fim_for_free --size cpu
    ptobj rl ... / ptobj dpo ...                          # post-training on exported models

``ptobj SUBCOMMAND --help`` lists a subcommand's arguments. Each subcommand is the ``main``
of its module, also run as ``python -m <module>``; the module is imported only when its
subcommand runs, so ``ptobj --help`` needs no extra installed.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Sequence

# subcommand -> (module whose main(argv, prog) runs it, one line for --help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("ptobj.recipes.train", "train a recipe (bundled name or YAML) on CPU or GPUs"),
    "prepare": ("ptobj.data_pipeline.prepare", "prepare a corpus: tokenizer + megatron .bin/.idx"),
    "export": ("ptobj.recipes.export", "export a run to a Hugging Face folder (logits checked)"),
    "infill": ("ptobj.recipes.evaluation.infill", "the infilling evaluation of a FIM run or HF model"),
    "evaluate": ("ptobj.recipes.evaluation.evaluate", "held-out losses of a saved run"),
    "zeroshot": ("ptobj.recipes.evaluation.zero_shot", "zero-shot scores on an instruction mixture's held-out clusters"),
    "sweep": ("ptobj.recipes.experiments.sweep", "an ablation grid, locally or as a SLURM array"),
    "experiment": ("ptobj.recipes.experiments.reproduce", "a paper reproduction: sweep, checks, report"),
    "rl": ("ptobj.recipes.posttrain.rl", "online RL (RLOO) with the pretraining mix on an export"),
    "dpo": ("ptobj.recipes.posttrain.dpo", "DPO on an exported policy and preference pairs"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: ptobj SUBCOMMAND [args ...]   (ptobj SUBCOMMAND --help for its arguments)", "",
             "subcommands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else 2
    if args[0] == "--version":
        from ptobj import __version__

        print(f"ptobj {__version__}")
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"ptobj: unknown subcommand {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return int(module.main(rest, prog=f"ptobj {name}") or 0)
    except BrokenPipeError:  # the reader left (`ptobj train --list | head -1`): no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nor one at exit's flush
        return 141  # 128 + SIGPIPE, as the shell's own tools end


if __name__ == "__main__":
    raise SystemExit(main())
