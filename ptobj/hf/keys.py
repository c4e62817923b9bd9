"""Which random stream each row of a collated batch draws from.

Our transforms draw every number from a stream keyed by ``(seed, epoch, index)``
(:mod:`ptobj.objectives.streams`), so a sample's output is a pure function of its key. A
collator keys its rows one of two ways:

* by an explicit ``index`` feature (any integer column; e.g. ``dataset.map(lambda x, i:
  {"index": i}, with_indices=True)``, or :func:`ptobj.hf.preprocess.add_index`): row key
  ``(seed, epoch, index)``. A sample's output then depends on nothing but the sample, its
  index and the epoch: not the batch, the read order, the DataLoader workers, a resume, or
  evaluation runs in between. This is the keying to use.
* without one, by a counter of the samples this collator has seen in the current epoch:
  row key ``(seed, epoch, counter)``, which is the sample's position in the Trainer's
  sample order as long as every batch of the epoch goes through this collator in order
  (same seed and data order, same batches). It is refused in DataLoader worker processes
  (each holds its own copy of the counter), and an evaluation through the same collator,
  or a resume that skips batches, moves it.

``epoch`` is 0 until :meth:`SampleKeys.set_epoch` (which also restarts the counter);
:class:`EpochCallback` calls it from the Trainer's ``on_epoch_begin`` with the epoch being
started, so each epoch masks the same samples anew.
"""

from __future__ import annotations

import math

from ptobj.extras import require

require("hf", "torch", "transformers", by=__name__)

import numpy as np
import torch
from transformers import TrainerCallback

from ptobj.objectives.streams import RowStreams


class SampleKeys:
    """Row keys for batches of features (see the module doc)."""

    def __init__(self, seed: int, index_field: str | None = "index"):
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**63:
            raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")
        self.seed, self.index_field = int(seed), index_field
        self.epoch, self.seen = 0, 0

    def set_epoch(self, epoch: int) -> None:
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
        self.epoch, self.seen = int(epoch), 0

    def indices(self, features) -> np.ndarray:
        """Each feature's index: its ``index_field``, or the next counter values."""
        f = self.index_field
        has = [f is not None and f in x for x in features]
        if all(has) and features:
            idx = np.array([int(np.asarray(x[f])) for x in features], np.int64)
            if idx.size and idx.min() < 0:
                raise ValueError(f"feature {f!r} must hold indices >= 0, got {int(idx.min())}")
            return idx
        if any(has):
            raise ValueError(f"feature {f!r}: {sum(has)} of {len(features)} features have it; key every sample "
                             "by its index, or none")
        if torch.utils.data.get_worker_info() is not None:
            raise RuntimeError(f"a collator without an {f!r} feature keys samples by a counter, which each DataLoader "
                               f"worker would copy; add the column (dataset.map(lambda x, i: {{{f!r}: i}}, "
                               "with_indices=True)) or set dataloader_num_workers=0")
        idx = np.arange(self.seen, self.seen + len(features), dtype=np.int64)
        self.seen += len(features)
        return idx

    def streams(self, features) -> RowStreams:
        return RowStreams.for_rows(self.seed, self.epoch, self.indices(features))


class EpochCallback(TrainerCallback):
    """Tells a collator (anything with ``set_epoch``) the epoch the Trainer starts:
    ``Trainer(..., callbacks=[EpochCallback(collator)])``."""

    def __init__(self, collator):
        if not hasattr(collator, "set_epoch"):
            raise TypeError(f"EpochCallback needs a collator with set_epoch(epoch), got {type(collator).__name__}")
        self.collator = collator

    def on_epoch_begin(self, args, state, control, **kwargs):
        # state.epoch: epochs done so far (a fraction after a resume mid-epoch)
        self.collator.set_epoch(int(math.floor((state.epoch or 0.0) + 1e-6)))
