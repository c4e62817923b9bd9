"""Batch sample dicts into torch tensors.

Same-shape fields are stacked; scalar extras (``sop_label``) become ``[B]``;
variable-length 1-D fields are right-padded: token-like fields with the pad id,
``loss_mask`` with 0, ``kv_start``/``kv_end`` with 0 (an empty interval: padded
rows attend to nothing), flags with False. No ``[S, S]`` mask is ever built.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from objectives.extras import require

require("train", "torch", by=__name__)

import numpy as np
import torch

from objectives.sample import SpecialTokens

_TOKEN_FIELDS = ("tokens", "labels", "random_tokens", "source_tokens", "target_tokens")


def _pad_value(field: str, special: SpecialTokens) -> int:
    return special.pad if field in _TOKEN_FIELDS else 0


def collate(samples: Sequence[Mapping[str, np.ndarray]], special: SpecialTokens | None = None,
            pad_to_multiple: int = 1) -> dict[str, torch.Tensor]:
    if not samples:
        raise ValueError("collate: empty list of samples")
    special = special or SpecialTokens()
    keys = list(samples[0])
    for i, s in enumerate(samples[1:], 1):
        if set(s) != set(keys):
            raise KeyError(f"collate: sample {i} has fields {sorted(s)}, sample 0 has {sorted(keys)}")
    out = {}
    for key in keys:
        arrays = [np.asarray(s[key]) for s in samples]
        shapes = {a.shape for a in arrays}
        if len(shapes) == 1 and (pad_to_multiple == 1 or arrays[0].ndim != 1):
            out[key] = torch.from_numpy(np.stack(arrays))
            continue
        if any(a.ndim != 1 for a in arrays):
            raise ValueError(f"collate: field {key!r} has differing shapes {sorted(shapes)}; only 1-D fields are padded")
        length = max(a.shape[0] for a in arrays)
        length = -(-length // pad_to_multiple) * pad_to_multiple
        batch = np.full((len(arrays), length), _pad_value(key, special), dtype=arrays[0].dtype)
        for row, a in zip(batch, arrays):
            row[: a.shape[0]] = a
        out[key] = torch.from_numpy(batch)
    return out
