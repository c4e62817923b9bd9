"""Our row-interval attention (query i sees keys j with ``kv_start[i] <= j < kv_end[i]``) as the
masks Hugging Face models take.

* A 2-D ``attention_mask`` [B, S] (1 = a key every query may see) says the same as the
  intervals only where every query of a row sees one span ``[0, n)`` (bidirectional
  encoders: MLM, SpanBERT, MacBERT, SOP/NSP) or ``[0, i + 1)`` with the model's own
  causal mask (a decoder without document masking); :func:`padding_mask` checks that.
* Anything else (UniLM's modes, documents packed into one decoder row, the prefix LM of
  T5/MASS in one stack) is a 4-D mask [B, 1, S, S], which transformers passes to the
  attention as it is (``masking_utils``: "an already prepared 4D mask ... is returned
  as-is"): additive (0 seen, the dtype's minimum hidden; eager and SDPA attention) in the
  model's float dtype, or boolean (True seen; SDPA and flex). Flash attention takes no
  4-D mask.

A row that sees nothing (padding past the end of a seq2seq row) is given itself, so no
softmax runs over an empty set (a NaN that would reach the gradients through 0 * NaN).
"""

from __future__ import annotations

from ptobj.extras import require

require("hf", "torch", by=__name__)

import numpy as np
import torch


def interval_mask(kv_start: np.ndarray, kv_end: np.ndarray, dtype=torch.float32) -> torch.Tensor:
    """[B, S] intervals -> [B, 1, S, S]: boolean (``dtype=torch.bool``, True = seen) or additive."""
    ks = torch.as_tensor(np.asarray(kv_start, np.int64))
    ke = torch.as_tensor(np.asarray(kv_end, np.int64))
    S = ks.shape[1]
    i = torch.arange(S)
    empty = ke <= ks
    ks = torch.where(empty, i, ks)
    ke = torch.where(empty, i + 1, ke)
    j = i.view(1, 1, S)
    seen = (j >= ks.unsqueeze(-1)) & (j < ke.unsqueeze(-1))
    seen = seen.unsqueeze(1)
    if dtype == torch.bool:
        return seen
    if not dtype.is_floating_point:
        raise ValueError(f"mask_dtype must be torch.bool or a float dtype, got {dtype}")
    out = torch.zeros(seen.shape, dtype=dtype)
    return out.masked_fill_(~seen, torch.finfo(dtype).min)


def padding_mask(kv_start: np.ndarray, kv_end: np.ndarray, *, causal: bool) -> np.ndarray | None:
    """The 2-D mask [B, S] (int64, 1 = key seen) that says what the intervals say, or None when
    none does: bidirectional rows need ``kv_start == 0`` and one ``kv_end`` per row (the mask
    is ``j < kv_end``); ``causal`` rows (the model adds its causal mask) need ``kv_start == 0`` and
    ``kv_end == i + 1`` (the mask is all ones)."""
    ks, ke = np.asarray(kv_start), np.asarray(kv_end)
    if ks.any():
        return None
    S = ke.shape[1]
    if causal:
        return np.ones(ke.shape, np.int64) if np.array_equal(ke, np.broadcast_to(np.arange(1, S + 1), ke.shape)) \
            else None
    if not (ke == ke[:, :1]).all():
        return None
    return (np.arange(S)[None, :] < ke[:, :1]).astype(np.int64)
