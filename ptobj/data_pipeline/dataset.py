"""Positions in a sample stream -> transformed micro-batches, for training and evaluation.

Global position ``g`` means ``(epoch, index) = divmod(g, len(sampler))``. A read
takes a whole micro-batch of positions: the sampler reads the raw batch in one
go (the fields the transform reads), and the transform runs on it with every row keyed by its own
``(seed, epoch, index)`` (:class:`ptobj.objectives.streams.RowStreams`). So a
position's sample is the same in any batch, process, read order or DataLoader
worker count, and a run resumed at a position sees exactly the samples it would
have seen.

The dataset holds no position of its own: the trainer's step decides which
positions a micro-batch reads (:mod:`ptobj.recipes.engine.batches`), and a checkpoint records
the position through :meth:`ObjectiveDataset.position_state`, which
:meth:`ObjectiveDataset.position_of` checks against this dataset on resume.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

from ptobj.extras import require

require("train", "torch", by=__name__)

import numpy as np
import torch

from ptobj.objectives.sample import Batch, row
from ptobj.objectives.streams import RowStreams


class ObjectiveDataset(torch.utils.data.Dataset):
    """``dataset.read(positions)`` -> the transformed batch (numpy); ``dataset[positions]``
    the same for a DataLoader (``batch_size=None`` and a sampler of position lists);
    ``dataset[g]`` one sample (the batch of one)."""

    def __init__(self, sampler, transform=None, seed: int = 0):
        self.sampler = sampler
        self.transform = transform
        self.seed = int(seed)
        self.samples_per_epoch = len(sampler)

    def __len__(self) -> int:
        """Samples per epoch; any position ``g >= 0`` can be read (later epochs)."""
        return self.samples_per_epoch

    def locate(self, positions) -> tuple[np.ndarray, np.ndarray]:
        """``(epoch, index)`` int64 arrays of global positions."""
        p = np.asarray(positions, dtype=np.int64).reshape(-1)
        if p.size and p.min() < 0:
            raise IndexError(f"ObjectiveDataset: positions must be >= 0, got {int(p.min())}")
        return np.divmod(p, self.samples_per_epoch)

    def streams(self, positions) -> RowStreams:
        """The transform's row streams for these positions: keys ``(seed, epoch, index)``."""
        epoch, index = self.locate(positions)
        return RowStreams.for_rows(self.seed, epoch, index)

    def read(self, positions: Sequence[int] | np.ndarray) -> Batch:
        """One micro-batch: the raw rows of ``positions`` and the transform on them."""
        epoch, index = self.locate(positions)
        if self.transform is None:
            return self.sampler.read(epoch, index)
        batch = self.sampler.read(epoch, index, fields=getattr(self.transform, "reads", None))
        return self.transform.batch(batch, RowStreams.for_rows(self.seed, epoch, index))

    def __getitem__(self, positions):
        if np.ndim(positions) == 0:
            return row(self.read([int(positions)]), 0)
        return self.read(positions)

    # ---- the stream position in a checkpoint ---------------------------------------------
    def position_state(self, position: int) -> dict[str, int]:
        """What a checkpoint records for stream ``position``: the position and what it means."""
        epoch, consumed = divmod(int(position), self.samples_per_epoch)
        return {"seed": self.seed, "samples_per_epoch": self.samples_per_epoch, "epoch": epoch,
                "consumed_samples": consumed, "position": int(position)}

    def position_of(self, state: dict[str, Any]) -> int:
        """The position a checkpoint recorded, checked against this dataset (same data, same seed)."""
        for key in ("epoch", "consumed_samples"):
            if key not in state:
                raise KeyError(f"ObjectiveDataset.position_of: state lacks {key!r}; it has {sorted(state)}")
        if int(state.get("samples_per_epoch", self.samples_per_epoch)) != self.samples_per_epoch:
            raise ValueError(
                f"ObjectiveDataset: saved samples_per_epoch={state['samples_per_epoch']} but this "
                f"dataset has {self.samples_per_epoch}; the data or sampler changed")
        if int(state.get("seed", self.seed)) != self.seed:
            raise ValueError(f"ObjectiveDataset: saved seed={state['seed']}, this dataset has {self.seed}")
        return int(state["epoch"]) * self.samples_per_epoch + int(state["consumed_samples"])

    def loader(self, batch_size: int, *, start: int = 0, num_workers: int = 0, rank: int = 0,
               world_size: int = 1, num_batches: int | None = None, **kwargs) -> torch.utils.data.DataLoader:
        """A DataLoader of collated micro-batches from stream position ``start`` on (infinite
        unless ``num_batches``); each worker reads whole micro-batches.

        With data parallelism, rank ``r`` of ``w`` reads the ``r``-th ``batch_size`` positions of
        every ``batch_size * w`` (one global batch per step)."""
        from ptobj.data_pipeline.collate import collate

        sampler = StreamBatches(start, batch_size, rank=rank, world_size=world_size, num_batches=num_batches)
        return torch.utils.data.DataLoader(self, sampler=sampler, batch_size=None, num_workers=num_workers,
                                           collate_fn=collate, **kwargs)


class StreamBatches(torch.utils.data.Sampler):
    """Position lists of consecutive micro-batches from ``start``; rank ``r`` of ``w`` takes
    positions ``start + (k * w + r) * batch_size + [0, batch_size)`` for k = 0, 1, ..."""

    def __init__(self, start: int, batch_size: int, *, rank: int = 0, world_size: int = 1,
                 num_batches: int | None = None):
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.start, self.batch_size, self.rank, self.world_size = int(start), int(batch_size), rank, world_size
        self.num_batches = num_batches

    def __iter__(self) -> Iterator[list[int]]:
        k = 0
        while self.num_batches is None or k < self.num_batches:
            first = self.start + (k * self.world_size + self.rank) * self.batch_size
            yield list(range(first, first + self.batch_size))
            k += 1

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("StreamBatches is infinite; pass num_batches for a length")
        return self.num_batches
