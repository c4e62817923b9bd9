"""Total loss = sum over objectives of weight * loss_sum / (valid targets in the whole step).

The model returns per-objective *sums* per micro-batch. Each objective's sum
is divided by the number of valid targets across every micro-batch of the
step and every data-parallel rank, so the gradient is the one a single big
batch would give, however the batch is split. Those counts must be known
before the first backward, so they are read from the batch here (the same
rule the model heads use; :func:`check_counts` compares the two).
"""

from __future__ import annotations

from typing import Iterable, Mapping

import torch

from ptobj.models.heads import head_present, target_count


def target_counts(batch: Mapping[str, torch.Tensor], heads: Mapping[str, str]) -> dict[str, float]:
    """Per loss (``heads``: loss name -> head kind), how many targets ``batch`` holds."""
    return {name: float(target_count(name, kind, batch)) for name, kind in heads.items()
            if head_present(name, kind, batch)}


def step_counts(micro_batches: Iterable[Mapping[str, torch.Tensor]], heads: Mapping[str, str],
                all_reduce) -> dict[str, float]:
    """Counts summed over the step's micro-batches and (via ``all_reduce(t) -> t``) the DP group."""
    total: dict[str, float] = {}
    for mb in micro_batches:
        for k, v in target_counts(mb, heads).items():
            total[k] = total.get(k, 0.0) + v
    names = sorted(total)
    if not names:
        return total
    flat = all_reduce(torch.tensor([total[n] for n in names], dtype=torch.float64))
    return {n: float(v) for n, v in zip(names, flat.tolist())}


def weighted_loss(outputs: Mapping[str, Mapping[str, torch.Tensor]], counts: Mapping[str, float],
                  weights: Mapping[str, float]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(total loss for backward, per-objective normalised losses, detached)."""
    total = None
    parts = {}
    for name, sums in outputs.items():
        denom = max(counts.get(name, 0.0), 1.0)
        part = sums["loss_sum"].float() / denom
        parts[name] = part.detach()
        term = part * float(weights.get(name, 1.0))
        total = term if total is None else total + term
    if total is None:
        raise RuntimeError("the model returned no objective outputs for this batch")
    return total, parts


def check_counts(outputs: Mapping[str, Mapping[str, torch.Tensor]], batch: Mapping[str, torch.Tensor],
                 heads: Mapping[str, str]) -> None:
    """Raise if the model counted targets differently from :func:`target_counts`."""
    ours = target_counts(batch, heads)
    for name, sums in outputs.items():
        if name not in ours:
            raise RuntimeError(f"model returned loss {name!r} but the batch has no field that counts its targets")
        theirs = float(sums["count"])
        if abs(theirs - ours[name]) > 0.5:
            raise RuntimeError(f"loss {name!r}: model counted {theirs} targets, the recipe {ours[name]}; "
                               "normalisation would be wrong")
