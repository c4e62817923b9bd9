"""A micro-batch of numpy arrays -> torch tensors.

Transforms emit whole micro-batches (every field ``[B, ...]``), so collating is
a zero-copy ``torch.from_numpy`` per field (a copy only for a non-contiguous
field). Scalar extras (``sop_label``) are ``[B]``. No ``[S, S]`` mask is ever
built. (Samples one by one: ``ptobj.objectives.sample.stack`` them first.)
"""

from __future__ import annotations

from typing import Mapping

from ptobj.extras import require

require("train", "torch", by=__name__)

import numpy as np
import torch


def collate(batch: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    if not isinstance(batch, Mapping):
        raise TypeError(f"collate takes a batch (dict of [B, ...] arrays), got {type(batch).__name__}; "
                        "stack samples first with ptobj.objectives.sample.stack")
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}
