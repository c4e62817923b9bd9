"""Causal LM baseline: a packed context ``tokens[S+1]`` -> next-token fields.

Documents in the context are joined by EOT. With ``document_masking`` (the
default) every document is its own segment: a document's EOT belongs to that
document, attention stays inside the document (``kv_start``/``kv_end`` as
``ptobj.objectives.intervals.causal`` gives them) and ``position_ids`` restart at 0 per
document. Without it the context is one plain causal sequence.

Padding (``pad`` or ``fim_pad``) never counts in the loss: a position whose
input or label is a pad has ``loss_mask`` 0, and a run of pads forms a segment
of its own so no real token attends to it. No randomness: ``CausalLM.batch``
ignores its streams.

``pack_fields`` is shared with FIM, which emits the same fields after
rewriting the context.
"""

from __future__ import annotations

from dataclasses import dataclass
import numpy as np

from ptobj.objectives.sample import CONTRACT_FIELDS, Batch, ConfiguredTransform, Sample, SpecialTokens
from ptobj.objectives.task import Task
from ptobj.objectives.streams import RowStreams


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


def pack_fields(
    context: np.ndarray,
    special: SpecialTokens,
    *,
    document_masking: bool = True,
    reset_position_ids: bool | None = None,
    eod_mask_loss: bool = False,
) -> Sample:
    """Packed contexts int [B, S+1] -> the [B, S] contract fields (labels = next token)."""
    ctx = np.asarray(context)
    tokens = ctx[:, :-1].astype(np.int32)
    labels = ctx[:, 1:].astype(np.int32)
    B, n = tokens.shape
    is_pad = (tokens == special.pad) | (tokens == special.fim_pad)
    loss = ~((labels == special.pad) | (labels == special.fim_pad) | is_pad)
    if eod_mask_loss:
        loss &= tokens != special.eot
    reset = document_masking if reset_position_ids is None else reset_position_ids
    idx = np.empty((B, n), np.int32)
    idx[:] = np.arange(n, dtype=np.int32)
    if document_masking or reset:
        # a document starts after each EOT, and a run of pads starts one of its own
        starts = np.zeros((B, n), dtype=bool)
        starts[:, 1:] = tokens[:, :-1] == special.eot
        starts[:, 1:] |= is_pad[:, 1:] & ~is_pad[:, :-1]
        doc = np.cumsum(starts, axis=1, dtype=np.int32)
        doc_start = np.maximum.accumulate(np.where(starts, idx, 0), axis=1)   # first position of its document
    if document_masking:
        segment_ids, kv_start = doc, doc_start
    else:
        segment_ids, kv_start = np.zeros((B, n), np.int32), np.zeros((B, n), np.int32)
    return {
        "tokens": tokens,
        "labels": labels,
        "loss_mask": loss.astype(np.float32),
        "position_ids": idx - doc_start if reset else idx,
        "segment_ids": segment_ids,
        "kv_start": kv_start,
        "kv_end": idx + 1,
    }


def check_contexts(batch, length: int, vocab_size: int, who: str) -> np.ndarray:
    """A batch's packed contexts: a [B, length] integer grid of ids in [0, vocab_size)."""
    arr = np.asarray(batch["tokens"])
    if arr.ndim != 2 or arr.dtype.kind not in "iu":
        raise ValueError(f"{who}: field 'tokens' must be a [B, S+1] integer grid, got shape {arr.shape} dtype {arr.dtype}")
    n = batch.get("length")
    if arr.shape[1] != length or (n is not None and np.any(np.asarray(n) != length)):
        got = sorted(set(np.asarray(n).tolist())) if n is not None else arr.shape[1]
        raise ValueError(f"{who}: field 'tokens' must hold seq_length + 1 = {length} ids (a packed context), got {got}")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= vocab_size):
        raise ValueError(f"{who}: field 'tokens' has ids outside [0, {vocab_size}): min {int(arr.min())}, max {int(arr.max())}")
    return arr


class CausalLM(ConfiguredTransform):
    """Next-token prediction on a packed context, document-masked by default."""

    config_type = CausalLMConfig
    reads = ("tokens",)
    writes = CONTRACT_FIELDS

    def apply(self, batch: Batch, streams: RowStreams) -> Batch:
        c = self.config
        ctx = check_contexts(batch, c.seq_length + 1, self.vocab_size, "CausalLM")
        return pack_fields(ctx, self.special, document_masking=c.document_masking,
                           reset_position_ids=c.reset_position_ids, eod_mask_loss=c.eod_mask_loss)


TASKS = (
    Task("causal_lm", CausalLM, CausalLMConfig, model="decoder", sampler="packed",
         input_length=lambda c: c.seq_length + 1, evals=lambda c: {"ltr": ("causal_lm", c)},
         special=("eot", "pad")),
)
