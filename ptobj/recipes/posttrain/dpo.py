"""DPO, the offline alternative to ``ptobj.recipes.posttrain.rl``: TRL's DPOTrainer (Rafailov et al. 2023) on an
exported policy and preference pairs,
``ptobj dpo --policy HF_DIR --pairs FILE --out DIR``.

``FILE`` (jsonl / json / csv / parquet) holds ``prompt``, ``chosen`` and ``rejected`` text, or the
reward model's records, ``prompt`` and ``responses`` ranked best first, which give every
(better, worse) pair of a prompt (InstructGPT's K-choose-2 comparisons). A chat policy's rows
become conversations (user prompt, assistant responses). The initial policy is the reference model. Writes
``OUT/log.jsonl`` (loss, rewards/margins, rewards/accuracies, ... per step) and ``OUT/policy``.
Needs the ``[rlhf]`` extra (trl).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import torch

from ptobj.extras import require

require("rlhf", "trl", by=__name__)
require("data", "datasets", by=__name__)

from ptobj.recipes.posttrain.rl import (ArgError, JsonLog, add_checkpoint_args, as_conversations, checkpoint_args,  # noqa: E402
                        load_policy, load_rows, open_out, resume_point, train_and_save)

PAIRS = {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"}
RANKED = {"prompt": "prompt", "responses": "responses"}


def load_pairs(path):
    """(prompt, chosen, rejected) rows; ranked records give each prompt's K-choose-2 pairs."""
    import datasets

    rows = load_rows(path, [PAIRS, RANKED], "--pairs")
    if "responses" not in rows.column_names:
        return rows
    pairs = [{"prompt": r["prompt"], "chosen": r["responses"][i], "rejected": r["responses"][j]}
             for r in rows for i in range(len(r["responses"])) for j in range(i + 1, len(r["responses"]))]
    if not pairs:
        raise ArgError(f"--pairs {path}: no prompt has two responses to compare")
    return datasets.Dataset.from_list(pairs)


def train(policy, pairs, out_dir, *, steps: int = 100, lr: float = 1e-5, batch_size: int = 8, beta: float = 0.1,
          max_length: int = 256, seed: int = 0, logging_steps: int = 1, save_every: int = 50, resume: bool = True,
          save: bool = True, progress: bool = True):
    """Build and run the DPO trainer, resuming the run in ``out_dir`` if there is one
    (:func:`ptobj.recipes.posttrain.rl.resume_point`); returns it (``trainer.state.log_history`` holds the logs)."""
    from transformers import set_seed
    from trl import DPOConfig, DPOTrainer

    for name, value in (("--steps", steps), ("--batch-size", batch_size), ("--max-length", max_length)):
        if value < 1:
            raise ArgError(f"{name} must be >= 1, got {value}")
    if not beta > 0:
        raise ArgError(f"--beta must be > 0, got {beta}")
    settings = dict(policy=policy, pairs=pairs, steps=steps, lr=lr, batch_size=batch_size, beta=beta,
                    max_length=max_length, seed=seed)
    out_dir = Path(out_dir)
    saving = checkpoint_args(out_dir, save_every)
    checkpoint = resume_point(out_dir, settings, resume=resume)
    dataset = load_pairs(pairs)
    set_seed(seed)
    model, tokenizer = load_policy(policy)
    dataset = as_conversations(dataset, tokenizer, {"prompt": "user", "chosen": "assistant", "rejected": "assistant"})
    open_out(out_dir, settings, checkpoint)
    args = DPOConfig(**saving, max_steps=steps, learning_rate=lr, seed=seed, data_seed=seed,
                     per_device_train_batch_size=batch_size, beta=beta, max_length=max_length,
                     logging_steps=logging_steps, report_to=[], disable_tqdm=not progress,
                     use_cpu=not torch.cuda.is_available(), lr_scheduler_type="constant")
    log = JsonLog(out_dir / "log.jsonl")
    trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=[log.callback])
    return train_and_save(trainer, tokenizer, out_dir, save, checkpoint)


def main(argv: Sequence[str] | None = None, prog: str = "ptobj dpo") -> int:
    import argparse

    p = argparse.ArgumentParser(prog=prog, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", required=True, help="exported policy folder (LlamaForCausalLM, e.g. the SFT run's)")
    p.add_argument("--pairs", required=True,
                   help="preferences: prompt, chosen, rejected columns, or prompt and responses ranked best first")
    p.add_argument("--out", required=True, help="output folder: run.json, log.jsonl, checkpoints/ and policy/; "
                   "a folder holding this run (same settings) resumes from its newest checkpoint")
    add_checkpoint_args(p)
    p.add_argument("--steps", type=int, default=100, help="optimizer steps (default 100)")
    p.add_argument("--lr", type=float, default=1e-5, help="learning rate (default 1e-5, constant)")
    p.add_argument("--batch-size", type=int, default=8, help="pairs per step (default 8)")
    p.add_argument("--beta", type=float, default=0.1, help="DPO's beta, the KL strength (default 0.1)")
    p.add_argument("--max-length", type=int, default=256, help="prompt + response tokens at most (default 256)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    try:
        trainer = train(a.policy, a.pairs, a.out, steps=a.steps, lr=a.lr, batch_size=a.batch_size, beta=a.beta,
                        max_length=a.max_length, seed=a.seed, save_every=a.save_every, resume=a.resume)
    except (ArgError, FileNotFoundError) as exc:
        print(f"dpo error: {exc}", file=sys.stderr)
        return 2
    margins = [h["rewards/margins"] for h in trainer.state.log_history if "rewards/margins" in h]
    if margins:
        print(f"[dpo] reward margin: first step {margins[0]:.4g}, last step {margins[-1]:.4g}; "
              f"log: {Path(a.out) / 'log.jsonl'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
