"""BERT masked-LM baseline: token-level or whole-word, 15% budget, 80/10/10.

Input: a segment ``tokens`` int [n] (and ``word_start`` bool [n] for whole-word
masking). Output, length ``seq_length``: ``[CLS] tokens [SEP] PAD...`` (tokens cut
to ``seq_length - 2``); ``labels`` = the original token at each target (PAD
elsewhere) with ``loss_mask`` 1.0 there; ``position_ids`` 0..; ``segment_ids`` 0;
every row (pads too) sees the non-pad tokens ``[0, n + 2)``.

Choice (:mod:`ptobj.objectives.masking`): ``mask_rate`` of the segment's tokens are
targets, met in expectation (fractional budgets too). Token-level: single tokens (or token n-grams with
``ngram_probs``). Whole-word: whole words, or n-grams of words with
``ngram_probs`` (P of 1, 2, ... words), the budget still counted in tokens.
Each target becomes [MASK] / a random regular id in ``[first_regular,
vocab_size)`` / itself with ``replace_probs``, per token (BERT) or once per
chosen word / n-gram (``per_span=True``).

Pass-through on purpose: reserved ids (< first_regular) already in the input,
except ``unk``, are never targets and are copied unchanged, so a document of
only special tokens gets no targets; an empty segment gives ``[CLS] [SEP]``.

``MLM.batch(batch, streams)`` builds [B, S] arrays for a batch of segments
(``tokens`` [B, W], ``length`` [B], ``word_start`` [B, W]), row b drawing from
its own stream; ``MLM(...)(sample, seed, epoch=, index=)`` is the batch of one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ptobj.objectives import masking
from ptobj.objectives.sample import Batch, ConfiguredTransform, Sample, SpecialTokens, before, check_rate, lengths
from ptobj.objectives.task import Task
from ptobj.objectives.streams import RowStreams


@dataclass(frozen=True)
class MLMConfig:
    seq_length: int = 512
    mask_rate: float = 0.15                  # share of tokens that are targets
    whole_word: bool = False                 # choose whole words (True) or tokens
    ngram_probs: tuple = (1.0,)              # P(span of 1, 2, ... words / tokens)
    replace_probs: tuple = (0.8, 0.1, 0.1)   # [MASK] / random / keep
    per_span: bool = False                   # draw 80/10/10 per token (BERT) or per word / n-gram

    def __post_init__(self):
        if not isinstance(self.seq_length, (int, np.integer)) or int(self.seq_length) < 3:
            raise ValueError(f"seq_length must be an int >= 3 ([CLS] x [SEP]), got {self.seq_length!r}")
        check_rate("mask_rate", self.mask_rate)
        _check_probs("ngram_probs", self.ngram_probs)
        masking.check_action_probs(self.replace_probs, "replace_probs")


def _check_probs(name: str, probs) -> np.ndarray:
    try:
        return masking.ngram_length_probs(probs)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None


# ------------------------------------------------------------------------------------------
# Helpers shared by the single-segment encoders (MLM, SpanBERT)
# ------------------------------------------------------------------------------------------


def segment_grid(batch: Batch, width: int, vocab_size: int, who: str) -> tuple[np.ndarray, np.ndarray]:
    """A batch's segments cut to ``width`` columns: ``(tokens int [B, <= width], n int64 [B])``,
    checked (2-D integer ids in ``[0, vocab_size)``)."""
    tokens = np.asarray(batch["tokens"])
    if tokens.ndim != 2 or not (tokens.size == 0 or np.issubdtype(tokens.dtype, np.integer)):
        raise ValueError(f"{who}: tokens must be a [B, W] integer grid, got dtype {tokens.dtype} shape {tokens.shape}")
    n = np.minimum(lengths(batch), width)
    body = tokens[:, :width]
    if body.size and (int(body.min()) < 0 or int(body.max()) >= vocab_size):
        real = np.arange(body.shape[1])[None, :] < n[:, None]
        lo, hi = int(np.where(real, body, 0).min()), int(np.where(real, body, 0).max())
        if lo < 0 or hi >= vocab_size:
            raise ValueError(f"{who}: tokens must lie in [0, vocab_size={vocab_size}), got ids in [{lo}, {hi}]")
    return body, n


def flag_grid(batch: Batch, field: str, body: np.ndarray, who: str) -> np.ndarray:
    """A per-token flag field (``word_start``...) cut to the body's columns, as bool."""
    if field not in batch:
        raise KeyError(f"{who}: batch lacks field {field!r}; it has {sorted(batch)}")
    v = np.asarray(batch[field])
    if v.ndim != 2 or v.shape[0] != body.shape[0] or v.shape[1] < body.shape[1]:
        raise ValueError(f"{who}: {field} must be [B, W] like tokens {np.shape(batch['tokens'])}, got {v.shape}")
    v = v[:, : body.shape[1]]
    return v if v.dtype == bool else v.astype(bool)


def maskable(tokens: np.ndarray, n: np.ndarray, special: SpecialTokens) -> np.ndarray | None:
    """Eligibility grid for choosing targets, or None when it is just "the first n of
    each row" (then the faster ``lengths=`` path applies). Reserved ids other than
    ``unk`` are never targets."""
    low = tokens < special.first_regular
    if not low.any():
        return None
    real = before(n, tokens.shape[1])
    reserved = low & (tokens != special.unk) & real
    if not reserved.any():
        return None
    return real & ~reserved


def single_segment_fields(body: np.ndarray, n: np.ndarray, seq_length: int, special: SpecialTokens) -> Batch:
    """``[CLS] body [SEP] PAD`` grids and their fixed fields (no targets yet)."""
    B, L = body.shape
    S = int(seq_length)
    tokens = np.empty((B, S), np.int32)
    tokens[:, 1:1 + L] = body
    tokens[:, 1 + L:] = special.pad
    if n.min(initial=L) < L:                              # pads after short rows (cols >= n + 1)
        np.copyto(tokens, special.pad, where=~before(n + 1, S))
    tokens[:, 0] = special.cls
    tokens[np.arange(B), n + 1] = special.sep
    return {
        "tokens": tokens,
        "labels": np.full((B, S), special.pad, np.int32),
        "loss_mask": np.zeros((B, S), np.float32),
        "position_ids": rows_of(np.arange(S, dtype=np.int32), B),
        "segment_ids": np.zeros((B, S), np.int32),
        "kv_start": np.zeros((B, S), np.int32),
        "kv_end": columns_of((n + 2).astype(np.int32), S),
    }


def rows_of(values: np.ndarray, rows: int) -> np.ndarray:
    """A [rows, len(values)] array whose every row is ``values``."""
    out = np.empty((rows, values.size), values.dtype)
    out[:] = values
    return out


def columns_of(values: np.ndarray, width: int) -> np.ndarray:
    """A [len(values), width] array whose row b is ``values[b]`` throughout."""
    out = np.empty((values.size, width), values.dtype)
    out[:] = values[:, None]
    return out


def body_to_output(pos: np.ndarray, width: int, seq_length: int) -> np.ndarray:
    """Flat body-grid positions ([B, width]) -> flat output positions ([B, S]) after [CLS]."""
    return pos + (pos // width) * (seq_length - width) + 1


def set_targets(out: Sample, pos: np.ndarray) -> None:
    """Labels = the (uncorrupted) token and loss 1.0 at the flat positions ``pos``."""
    flat_tokens = out["tokens"].reshape(-1)
    out["labels"].reshape(-1)[pos] = flat_tokens[pos]
    out["loss_mask"].reshape(-1)[pos] = 1.0


# ------------------------------------------------------------------------------------------
# The transform
# ------------------------------------------------------------------------------------------


class MLM(ConfiguredTransform):
    """BERT masked LM (token-level or whole-word) on one segment."""

    config_type = MLMConfig
    writes = ("tokens", "labels", "loss_mask", "position_ids", "segment_ids", "kv_start", "kv_end")

    def __init__(self, config: MLMConfig, *, special: SpecialTokens, vocab_size: int, tokenizer=None):
        super().__init__(config, special=special, vocab_size=vocab_size)
        self.length_probs = _check_probs("ngram_probs", config.ngram_probs)
        self.reads = ("tokens", "word_start") if config.whole_word else ("tokens",)
        self._law = masking.SpanLaw(self.length_probs)
        self._corrupt = masking.Corruption.of(config, special, self.vocab_size)

    def apply(self, batch: Batch, streams: RowStreams) -> Batch:
        cfg, sp = self.config, self.special
        S = int(cfg.seq_length)
        body, n = segment_grid(batch, S - 2, self.vocab_size, "MLM")
        out = single_segment_fields(body, n, S, sp)
        B, W = body.shape
        if W == 0:
            return out
        ws = flag_grid(batch, "word_start", body, "MLM") if cfg.whole_word else None
        eligible = maskable(body, n, sp)
        n_el = n if eligible is None else np.count_nonzero(eligible, axis=1)
        spans = masking.choose_spans(streams, ws, length_probs=self._law, budget_tokens=cfg.mask_rate * n_el,
                                     lengths=n if eligible is None else None, eligible=eligible, width=W)
        pos_b, span = spans.positions()
        pos = body_to_output(pos_b, W, S)
        set_targets(out, pos)
        self._corrupt(streams, out["tokens"], pos, span, body_to_output(spans.start, W, S))
        return out


TASKS = (
    Task("mlm", MLM, MLMConfig, model="encoder", sampler="segment", input_length=lambda c: c.seq_length - 2,
         special=("cls", "sep", "mask", "pad")),
)
