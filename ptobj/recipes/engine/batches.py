"""Which samples make up each micro-batch: a pure function of the step.

Sample indices are laid out so that step ``t``, micro-batch ``m`` on
data-parallel rank ``r`` always reads the same global indices, whatever
happened before. The step owns the data stream position (``t`` steps consumed
``t * samples_per_step`` samples); a checkpoint records it and a resumed run
reads exactly the samples an uninterrupted one would have.

A rank reads a step's micro-batches in one go (:func:`step_indices`, one
``ObjectiveDataset.read``) and splits them (:func:`split_rows`): rows are keyed
by their own positions, so this gives exactly the micro-batches read one by one,
with the fixed cost of a read paid once per step.
"""

from __future__ import annotations

import numpy as np
import torch


def micro_batch_indices(step: int, micro: int, *, grad_accum: int, dp_rank: int, dp_size: int,
                        micro_batch_size: int) -> np.ndarray:
    """Global sample indices of one micro-batch (disjoint across ranks and micro-batches)."""
    per_step = grad_accum * dp_size * micro_batch_size
    first = step * per_step + (micro * dp_size + dp_rank) * micro_batch_size
    return np.arange(first, first + micro_batch_size, dtype=np.int64)


def step_indices(step: int, *, grad_accum: int, dp_rank: int, dp_size: int, micro_batch_size: int) -> np.ndarray:
    """This rank's sample indices of one step: its micro-batches in order, end to end."""
    return np.concatenate([micro_batch_indices(step, m, grad_accum=grad_accum, dp_rank=dp_rank, dp_size=dp_size,
                                               micro_batch_size=micro_batch_size) for m in range(grad_accum)])


def split_rows(batch: dict, size: int) -> list[dict]:
    """A batch of ``k * size`` rows -> ``k`` batches of ``size`` rows (views, in order)."""
    n = len(next(iter(batch.values())))
    return [{f: v[a:a + size] for f, v in batch.items()} for a in range(0, n, size)]


class StepBatchSampler(torch.utils.data.Sampler):
    """This rank's index list of every step from ``start_step`` on, in training order, for a
    ``DataLoader(sampler=..., batch_size=None)`` whose workers each read whole steps."""

    def __init__(self, start_step: int, total_steps: int, *, grad_accum: int, dp_rank: int, dp_size: int,
                 micro_batch_size: int):
        self.start, self.total = int(start_step), int(total_steps)
        self.kw = dict(grad_accum=grad_accum, dp_rank=dp_rank, dp_size=dp_size, micro_batch_size=micro_batch_size)

    def __iter__(self):
        for step in range(self.start, self.total):
            yield step_indices(step, **self.kw).tolist()

    def __len__(self) -> int:
        return max(0, self.total - self.start)


def samples_per_step(*, grad_accum: int, dp_size: int, micro_batch_size: int) -> int:
    return grad_accum * dp_size * micro_batch_size
