"""Synthetic batches in the sample contract's field names, for the model tests and
``bench/train_step.py`` (a test helper, outside the production packages).

Random tokens, documents of random lengths packed per row, and row intervals
from ``ptobj.objectives.intervals`` (the one implementation of the masks).
"""

from __future__ import annotations

import numpy as np
import torch

from ptobj.objectives import intervals

MASKS = ("causal", "bidirectional", "fim_docs")


def doc_segments(rng: np.random.Generator, seq_length: int, mean_doc: int) -> np.ndarray:
    """Segment ids [S] of documents with lengths ~ 1 + Geometric(1/mean_doc)."""
    lengths = 1 + rng.geometric(1.0 / max(mean_doc, 1), size=seq_length)
    ends = np.minimum(np.cumsum(lengths), seq_length)
    ends = ends[: np.searchsorted(ends, seq_length) + 1]
    return np.repeat(np.arange(len(ends), dtype=np.int32), np.diff(np.concatenate(([0], ends))))


def synthetic_batch(batch_size: int, seq_length: int, vocab_size: int, *, kind: str = "decoder",
                    mask: str = "causal", mean_doc: int | None = None, heads: dict[str, str] | None = None,
                    first_regular: int = 16, seed: int = 0, device="cpu") -> dict[str, torch.Tensor]:
    """``mask``: "causal" (one document per row unless ``mean_doc``), "bidirectional",
    or "fim_docs" (packed documents of ~``mean_doc`` tokens, causal inside each: the
    attention pattern of context-level FIM). ``heads`` (loss name -> head kind, as
    ``ModelConfig.heads``) adds the fields of span-boundary and sequence heads."""
    if mask not in MASKS:
        raise ValueError(f"mask must be one of {MASKS}, got {mask!r}")
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(batch_size):
        seg = (doc_segments(rng, seq_length, mean_doc) if mean_doc or mask == "fim_docs"
               else np.zeros(seq_length, np.int32))
        ks, ke = intervals.bidirectional(seg) if mask == "bidirectional" else intervals.causal(seg)
        starts = np.flatnonzero(np.concatenate(([True], seg[1:] != seg[:-1])))
        pos = np.arange(seq_length) - np.repeat(starts, np.diff(np.concatenate((starts, [seq_length]))))
        rows.append((seg, ks, ke, pos))
    tokens = rng.integers(first_regular, vocab_size, size=(batch_size, seq_length))
    batch = {
        "tokens": tokens,
        "labels": rng.integers(first_regular, vocab_size, size=(batch_size, seq_length)),
        "loss_mask": (np.ones((batch_size, seq_length)) if kind == "decoder"
                      else (rng.random((batch_size, seq_length)) < 0.15)).astype(np.float32),
        "segment_ids": np.minimum(np.stack([r[0] for r in rows]), 5),
        "kv_start": np.stack([r[1] for r in rows]),
        "kv_end": np.stack([r[2] for r in rows]),
        "position_ids": np.stack([r[3] for r in rows]),
    }
    if kind == "encoder":
        batch["loss_mask"][:, 0] = 1.0  # at least one cloze target per row
    for name, head in (heads or {}).items():
        if head == "span_boundary":  # spans of 3 targets at 2..4 with boundaries 1 and 5, per row
            offset = np.zeros((batch_size, seq_length), np.int32)
            offset[:, 2:5] = [1, 2, 3]
            batch[f"{name}_offset"] = offset
            batch[f"{name}_left"] = np.where(offset > 0, 1, -1).astype(np.int32)
            batch[f"{name}_right"] = np.where(offset > 0, 5, -1).astype(np.int32)
            batch["loss_mask"][:, 2:5] = 1.0
        elif head == "sequence":
            batch[f"{name}_label"] = rng.integers(0, 2, size=batch_size)
    out = {}
    for key, value in batch.items():
        dtype = torch.float32 if value.dtype.kind == "f" else (torch.int32 if key.startswith("kv_") else torch.long)
        out[key] = torch.as_tensor(value, dtype=dtype, device=device)
    return out
