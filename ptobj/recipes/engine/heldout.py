"""Held-out evaluation: per suite and objective, mean loss and accuracy.

Sums (loss, targets, correct) are accumulated over a fixed number of held-out
micro-batches per data-parallel rank and all-reduced over the DP group, so
the numbers are exact means over every evaluated target. Metric names are
``<suite>/<loss>_loss`` (with ``_loss_se``, its standard error over the evaluated
micro-batches) and ``<suite>/<loss>_acc``, e.g. ``ltr/lm_loss``
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
                    # accuracy over its own count where a head has one (a reward model's pairs); the
                    # micro-batch's own loss sum and count, squared, for the standard error over batches
                    loss, count = parts["loss_sum"].double().cpu(), parts["count"].double().cpu()
                    vec = torch.stack([loss, count, parts["correct"].double().cpu(),
                                       parts.get("acc_count", parts["count"]).double().cpu(),
                                       loss * loss, loss * count, count * count, torch.ones((), dtype=torch.float64)])
                    sums[name] = sums.get(name, torch.zeros(8, dtype=torch.float64)) + vec
            for name in sorted(sums):
                vec = sums[name].to(info.device)
                info.all_reduce_dp(vec)
                loss_sum, count, correct, acc_count, ll, lc, cc, n = vec.tolist()
                metrics[f"{suite}/{name}_loss"] = loss_sum / count if count else math.nan
                metrics[f"{suite}/{name}_loss_se"] = _ratio_se(loss_sum, count, ll, lc, cc, n)
                metrics[f"{suite}/{name}_acc"] = correct / acc_count if acc_count else math.nan
    finally:
        model.train(was_training)
    return metrics


def _ratio_se(x: float, c: float, xx: float, xc: float, cc: float, n: float) -> float:
    """Standard error over the ``n`` micro-batches of the loss per target ``x / c`` (the ratio
    estimator's, from the sums of x, c, x^2, x c and c^2 over micro-batches)."""
    if n < 2 or not c:
        return math.nan
    r = x / c
    resid = xx - 2 * r * xc + r * r * cc          # sum over batches of (x_i - r c_i)^2
    return math.sqrt(max(resid, 0.0) / (n * (n - 1))) / (c / n)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
