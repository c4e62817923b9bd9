"""Causal LM baseline: a packed context ``tokens[S+1]`` -> next-token fields.

Documents in the context are joined by EOT. With ``document_masking`` (the
default) every document is its own segment: a document's EOT belongs to that
document, attention stays inside the document (``kv_start``/``kv_end`` from
``objectives.intervals.causal``) and ``position_ids`` restart at 0 per
document. Without it the context is one plain causal sequence.

Padding (``pad`` or ``fim_pad``) never counts in the loss: a position whose
input or label is a pad has ``loss_mask`` 0, and a run of pads forms a segment
of its own so no real token attends to it.

``pack_fields`` is shared with FIM, which emits the same fields after
rewriting the context.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from objectives import intervals
from objectives.sample import CONTRACT_FIELDS, Sample, SpecialTokens, require_fields
from objectives.task import Task


@dataclass(frozen=True)
class CausalLMConfig:
    seq_length: int
    # one segment per EOT-delimited document (attention never crosses documents)
    document_masking: bool = True
    # restart position_ids per document; None follows document_masking
    reset_position_ids: bool | None = None
    # drop the loss at positions whose input is EOT (Megatron's eod_mask_loss)
    eod_mask_loss: bool = False

    def __post_init__(self):
        if not isinstance(self.seq_length, (int, np.integer)) or isinstance(self.seq_length, bool) or self.seq_length < 1:
            raise ValueError(f"CausalLMConfig.seq_length must be an int >= 1, got {self.seq_length!r}")
        for name in ("document_masking", "eod_mask_loss"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"CausalLMConfig.{name} must be a bool, got {getattr(self, name)!r}")
        if self.reset_position_ids is not None and not isinstance(self.reset_position_ids, bool):
            raise ValueError(f"CausalLMConfig.reset_position_ids must be a bool or None, got {self.reset_position_ids!r}")


def check_context(tokens: np.ndarray, length: int, vocab_size: int, who: str) -> np.ndarray:
    """A packed context must be 1-D integer ids in [0, vocab_size) of the expected length."""
    arr = np.asarray(tokens)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise ValueError(f"{who}: field 'tokens' must be a 1-D integer array, got shape {arr.shape} dtype {arr.dtype}")
    if arr.shape[0] != length:
        raise ValueError(f"{who}: field 'tokens' must hold seq_length + 1 = {length} ids (a packed context), got {arr.shape[0]}")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= vocab_size):
        raise ValueError(f"{who}: field 'tokens' has ids outside [0, {vocab_size}): min {int(arr.min())}, max {int(arr.max())}")
    return arr.astype(np.int32, copy=False)


def pack_fields(
    context: np.ndarray,
    special: SpecialTokens,
    *,
    document_masking: bool = True,
    reset_position_ids: bool | None = None,
    eod_mask_loss: bool = False,
) -> Sample:
    """``context`` int[S+1] -> the S-length contract fields (labels = next token)."""
    ctx = np.asarray(context, dtype=np.int32)
    tokens = ctx[:-1]
    labels = ctx[1:]
    n = tokens.shape[0]
    is_pad = (tokens == special.pad) | (tokens == special.fim_pad)
    loss = ~((labels == special.pad) | (labels == special.fim_pad) | is_pad)
    if eod_mask_loss:
        loss &= tokens != special.eot
    reset = document_masking if reset_position_ids is None else reset_position_ids
    idx = np.arange(n, dtype=np.int32)
    if document_masking or reset:
        # a document starts after each EOT, and a run of pads starts one of its own
        starts = np.zeros(n, dtype=bool)
        starts[1:] = tokens[:-1] == special.eot
        starts[1:] |= is_pad[1:] & ~is_pad[:-1]
        doc = np.cumsum(starts, dtype=np.int32)
        doc_start, _ = intervals.causal(doc)  # first position of each position's document
    if document_masking:
        segment_ids = doc
        kv_start, kv_end = doc_start, idx + 1
    else:
        segment_ids = np.zeros(n, dtype=np.int32)
        kv_start, kv_end = np.zeros(n, dtype=np.int32), idx + 1
    position_ids = (idx - doc_start).astype(np.int32) if reset else idx
    return {
        "tokens": tokens.copy(),
        "labels": labels.copy(),
        "loss_mask": loss.astype(np.float32),
        "position_ids": position_ids,
        "segment_ids": segment_ids.astype(np.int32, copy=False),
        "kv_start": kv_start.astype(np.int32, copy=False),
        "kv_end": kv_end.astype(np.int32, copy=False),
    }


class CausalLM:
    """Next-token prediction on a packed context, document-masked by default."""

    reads = ("tokens",)
    writes = CONTRACT_FIELDS

    def __init__(self, config: CausalLMConfig, *, special: SpecialTokens, vocab_size: int, tokenizer=None):
        if vocab_size <= special.first_regular:
            raise ValueError(f"CausalLM: vocab_size must exceed special.first_regular={special.first_regular}, got {vocab_size}")
        self.config = config
        self.special = special
        self.vocab_size = int(vocab_size)

    def __call__(self, sample: Mapping[str, np.ndarray], rng: np.random.Generator | None = None) -> Sample:
        require_fields(sample, self.reads, "CausalLM")
        c = self.config
        ctx = check_context(sample["tokens"], c.seq_length + 1, self.vocab_size, "CausalLM")
        out = dict(sample)
        out.update(
            pack_fields(
                ctx,
                self.special,
                document_masking=c.document_masking,
                reset_position_ids=c.reset_position_ids,
                eod_mask_loss=c.eod_mask_loss,
            )
        )
        return out


TASKS = (
    Task("causal_lm", CausalLM, CausalLMConfig, model="decoder", sampler="packed",
         input_length=lambda c: c.seq_length + 1, evals=lambda c: {"ltr": ("causal_lm", c)},
         special=("eot", "pad")),
)
