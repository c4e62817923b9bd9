"""Which samples make up each micro-batch: a pure function of the step.

Sample indices are laid out so that step ``t``, micro-batch ``m`` on
data-parallel rank ``r`` always reads the same global indices, whatever
happened before. The data stream position saved in a checkpoint is therefore
just the number of samples consumed, and a resumed run reads exactly the
samples an uninterrupted one would have.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import torch


def micro_batch_indices(step: int, micro: int, *, grad_accum: int, dp_rank: int, dp_size: int,
                        micro_batch_size: int) -> np.ndarray:
    """Global sample indices of one micro-batch (disjoint across ranks and micro-batches)."""
    per_step = grad_accum * dp_size * micro_batch_size
    first = step * per_step + (micro * dp_size + dp_rank) * micro_batch_size
    return np.arange(first, first + micro_batch_size, dtype=np.int64)


class StepBatchSampler(torch.utils.data.Sampler):
    """Index lists of every micro-batch from ``start_step`` on, in training order,
    for a ``DataLoader(batch_sampler=...)`` that prefetches in worker processes."""

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


def to_tensors(batch: Mapping[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    """numpy batch -> tensors on ``device`` (int32 ids become int64 where torch indexing wants it)."""
    out = {}
    for k, v in batch.items():
        t = torch.from_numpy(np.ascontiguousarray(v))
        if t.dtype == torch.bool:
            t = t.to(torch.float32) if k == "loss_mask" else t
        out[k] = t.to(device, non_blocking=True)
    return out


def stack_samples(samples: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Fallback collate: stack equal-shaped fields (every transform pads to seq_length)."""
    keys = list(samples[0])
    for i, s in enumerate(samples[1:], 1):
        if set(s) != set(keys):
            raise ValueError(f"sample {i} has fields {sorted(s)}, sample 0 has {sorted(keys)}")
    return {k: np.stack([np.asarray(s[k]) for s in samples]) for k in keys}


def fetch(dataset, indices: np.ndarray, collate: Callable = stack_samples) -> dict[str, np.ndarray]:
    return collate([dataset[int(i)] for i in indices])
