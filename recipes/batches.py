"""Which samples make up each micro-batch: a pure function of the step.

Sample indices are laid out so that step ``t``, micro-batch ``m`` on
data-parallel rank ``r`` always reads the same global indices, whatever
happened before. The step owns the data stream position (``t`` steps consumed
``t * samples_per_step`` samples); a checkpoint records it and a resumed run
reads exactly the samples an uninterrupted one would have.
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


class StepBatchSampler(torch.utils.data.Sampler):
    """Index lists of every micro-batch from ``start_step`` on, in training order, for a
    ``DataLoader(sampler=..., batch_size=None)`` whose workers each read whole micro-batches."""

    def __init__(self, start_step: int, total_steps: int, *, grad_accum: int, dp_rank: int, dp_size: int,
                 micro_batch_size: int):
        self.start, self.total = int(start_step), int(total_steps)
        self.kw = dict(grad_accum=grad_accum, dp_rank=dp_rank, dp_size=dp_size, micro_batch_size=micro_batch_size)

    def __iter__(self):
        for step in range(self.start, self.total):
            for m in range(self.kw["grad_accum"]):
                yield micro_batch_indices(step, m, **self.kw).tolist()

    def __len__(self) -> int:
        return max(0, self.total - self.start) * self.kw["grad_accum"]


def samples_per_step(*, grad_accum: int, dp_size: int, micro_batch_size: int) -> int:
    return grad_accum * dp_size * micro_batch_size
