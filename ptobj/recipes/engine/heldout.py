"""Held-out evaluation: per suite and objective, mean loss and accuracy.

Sums (loss, targets, correct) are accumulated over a fixed number of held-out
micro-batches per data-parallel rank and all-reduced over the DP group, so
the numbers are exact means over every evaluated target. Metric names are
``<suite>/<loss>_loss`` and ``<suite>/<loss>_acc``, e.g. ``ltr/lm_loss``
(left-to-right), ``fim/lm_loss`` (100% FIM data), ``heldout/lm_acc`` (cloze
accuracy), ``heldout/sop_acc``, ``heldout/rm_acc`` (a reward model's held-out pairs
ordered right).

``ptobj evaluate RUN_DIR`` runs it on a saved run (:mod:`ptobj.recipes.evaluation.evaluate`).
"""

from __future__ import annotations

import math
from typing import Mapping

import torch

from ptobj.recipes.engine.batches import split_rows, step_indices
from ptobj.recipes.engine.distributed import DistInfo


@torch.no_grad()
def evaluate(model: torch.nn.Module, evals: Mapping[str, object], *, info: DistInfo, batches: int,
             micro_batch_size: int, to_device, autocast=None) -> dict[str, float]:
    from ptobj.data_pipeline.collate import collate

    was_training = model.training
    model.eval()
    metrics: dict[str, float] = {}
    try:
        for suite, dataset in evals.items():
            sums: dict[str, torch.Tensor] = {}
            # the suite's held-out micro-batches, read in one go (as a step of `batches` micro-batches)
            idx = step_indices(0, grad_accum=batches, dp_rank=info.dp_rank, dp_size=info.dp_size,
                               micro_batch_size=micro_batch_size)
            for batch in split_rows(collate(dataset.read(idx)), micro_batch_size):
                batch = to_device(batch)
                ctx = autocast() if autocast is not None else _null()
                with ctx:
                    out = model(batch)
                for name, parts in out.items():
                    # accuracy over its own count where a head has one (a reward model's pairs)
                    vec = torch.stack([parts["loss_sum"].float(), parts["count"].float(), parts["correct"].float(),
                                       parts.get("acc_count", parts["count"]).float()]).double().cpu()
                    sums[name] = sums.get(name, torch.zeros(4, dtype=torch.float64)) + vec
            for name in sorted(sums):
                vec = sums[name].to(info.device)
                info.all_reduce_dp(vec)
                loss_sum, count, correct, acc_count = vec.tolist()
                metrics[f"{suite}/{name}_loss"] = loss_sum / count if count else math.nan
                metrics[f"{suite}/{name}_acc"] = correct / acc_count if acc_count else math.nan
    finally:
        model.train(was_training)
    return metrics


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
