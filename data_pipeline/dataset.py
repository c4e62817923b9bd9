"""A torch ``Dataset`` that applies an objective transform to sampler output,
with a resumable position in the sample stream.

Global position ``g`` means ``(epoch, index) = divmod(g, len(sampler))``; the
transform gets ``rng = np.random.default_rng([seed, epoch, index])``. So
``dataset[g]`` is the same in any process, read order or DataLoader worker
count, and a run resumed from ``state_dict()`` sees exactly the samples it
would have seen.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

from objectives.extras import require

require("train", "torch", by=__name__)

import numpy as np
import torch

from objectives.sample import Transform as BatchTransform

Transform = Callable[[dict, np.random.Generator], dict]


class ObjectiveDataset(torch.utils.data.Dataset):
    def __init__(self, sampler, transform: Transform | None = None, seed: int = 0):
        self.sampler = sampler
        self.transform = transform
        self.seed = int(seed)
        self.samples_per_epoch = len(sampler)
        self.position = 0  # global samples consumed (advanced by the training loop)

    def __len__(self) -> int:
        """Samples per epoch; ``dataset[g]`` accepts any ``g >= 0`` (later epochs)."""
        return self.samples_per_epoch

    def locate(self, position: int) -> tuple[int, int]:
        if position < 0:
            raise IndexError(f"ObjectiveDataset: position must be >= 0, got {position}")
        return divmod(int(position), self.samples_per_epoch)

    def __getitem__(self, position: int) -> dict[str, np.ndarray]:
        epoch, index = self.locate(position)
        sample = self.sampler.sample(epoch, index)
        if isinstance(self.transform, BatchTransform):  # the batch contract: a sample and its key
            sample = self.transform(sample, self.seed, epoch=epoch, index=index)
        elif self.transform is not None:
            sample = self.transform(sample, np.random.default_rng([self.seed, epoch, index]))
        return sample

    # ---- resumable position -----------------------------------------------------------
    def advance(self, n: int) -> None:
        """Mark ``n`` more samples as consumed (call once per global batch)."""
        self.position += int(n)

    def state_dict(self) -> dict[str, int]:
        epoch, consumed = self.locate(self.position)
        return {"seed": self.seed, "samples_per_epoch": self.samples_per_epoch, "epoch": epoch,
                "consumed_samples": consumed, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("epoch", "consumed_samples"):
            if key not in state:
                raise KeyError(f"ObjectiveDataset.load_state_dict: state lacks {key!r}; it has {sorted(state)}")
        if int(state.get("samples_per_epoch", self.samples_per_epoch)) != self.samples_per_epoch:
            raise ValueError(
                f"ObjectiveDataset.load_state_dict: saved samples_per_epoch={state['samples_per_epoch']} but this "
                f"dataset has {self.samples_per_epoch}; the data or sampler changed")
        if int(state.get("seed", self.seed)) != self.seed:
            raise ValueError(f"ObjectiveDataset.load_state_dict: saved seed={state['seed']}, this dataset has {self.seed}")
        self.position = int(state["epoch"]) * self.samples_per_epoch + int(state["consumed_samples"])

    def loader(self, batch_size: int, *, num_workers: int = 0, collate_fn=None, rank: int = 0,
               world_size: int = 1, num_samples: int | None = None, **kwargs) -> torch.utils.data.DataLoader:
        """A DataLoader reading from the current position on (infinite unless ``num_samples``).

        With data parallelism, rank ``r`` of ``w`` reads positions ``position + r, + r + w, ...``,
        so one global batch of ``batch_size * w`` samples is consumed per step.
        """
        if collate_fn is None:
            from data_pipeline.collate import collate as collate_fn
        sampler = StreamPositions(self.position, rank=rank, world_size=world_size, num_samples=num_samples)
        return torch.utils.data.DataLoader(self, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                                           collate_fn=collate_fn, **kwargs)


class StreamPositions(torch.utils.data.Sampler):
    """Global stream positions from ``start``: ``start + rank + k * world_size``."""

    def __init__(self, start: int = 0, *, rank: int = 0, world_size: int = 1, num_samples: int | None = None):
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.start, self.rank, self.world_size, self.num_samples = int(start), rank, world_size, num_samples

    def __iter__(self) -> Iterator[int]:
        k = 0
        while self.num_samples is None or k < self.num_samples:
            yield self.start + self.rank + k * self.world_size
            k += 1

    def __len__(self) -> int:
        if self.num_samples is None:
            raise TypeError("StreamPositions is infinite; pass num_samples for a length")
        return self.num_samples
