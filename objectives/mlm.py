"""BERT masked-LM baseline: token-level or whole-word, 15% budget, 80/10/10.

Input: a segment ``tokens`` int [n] (and ``word_start`` bool [n] for whole-word
masking). Output, length ``seq_length``: ``[CLS] tokens [SEP] PAD...`` (tokens cut
to ``seq_length - 2``); ``labels`` = the original token at each target (PAD
elsewhere) with ``loss_mask`` 1.0 there; ``position_ids`` 0..; ``segment_ids`` 0;
every row (pads too) sees the non-pad tokens ``[0, n + 2)``.

Choice (:mod:`objectives.masking`): ``mask_rate`` of the segment's tokens are
targets, met in expectation (a fractional count keeps its last item with the
matching probability). Token-level: single tokens (or token n-grams with
``ngram_probs``). Whole-word: whole words, or n-grams of words with
``ngram_probs`` (P of 1, 2, ... words), the budget still counted in tokens.
Each target becomes [MASK] / a random regular id in ``[first_regular,
vocab_size)`` / itself with ``replace_probs``, per token (BERT) or once per
chosen word / n-gram (``per_span=True``).

Pass-through on purpose: reserved ids (< first_regular) already in the input,
except ``unk``, are never targets and are copied unchanged, so a document of
only special tokens gets no targets; an empty segment gives ``[CLS] [SEP]``.

``MLM.batch(samples, rng)`` builds [B, S] arrays for a list of samples at once
and ``MLM.batch_arrays(tokens, word_start, lengths, rng)`` for an already
padded grid: vectorised, deterministic, drawing differently from per-sample
calls. ``MLM(...)(sample, rng)`` is the batch of one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from objectives import masking
from objectives.sample import Sample, SpecialTokens, check_rate, require_fields, check_transform_args
from objectives.task import Task


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


def stack_segments(samples: Sequence[Mapping[str, np.ndarray]], width: int, who: str, *,
                   fields: tuple[str, ...] = (), pad: int = 0) -> tuple[np.ndarray, np.ndarray, dict]:
    """Pad segments into a grid: ``(tokens int32 [B, width], n int64 [B], extras)``;
    segments are cut to ``width``; ``extras[f]`` is a bool [B, width] grid of each
    per-token flag field in ``fields`` (word_start, sentence_start)."""
    B = len(samples)
    tokens = np.full((B, width), pad, np.int32)
    extras = {f: np.zeros((B, width), bool) for f in fields}
    n = np.zeros(B, np.int64)
    for i, s in enumerate(samples):
        require_fields(s, ("tokens",) + fields, who)
        t = np.asarray(s["tokens"])
        if t.ndim != 1 or not (t.size == 0 or np.issubdtype(t.dtype, np.integer)):
            raise ValueError(f"{who}: tokens must be a 1-D integer array, got dtype {t.dtype} shape {t.shape}")
        k = min(t.size, width)
        tokens[i, :k] = t[:k]
        n[i] = k
        for f in fields:
            v = np.asarray(s[f])
            if v.shape != t.shape:
                raise ValueError(f"{who}: {f} must have the shape of tokens {t.shape}, got {v.shape}")
            extras[f][i, :k] = v[:k]
    return tokens, n, extras


def check_grid(tokens: np.ndarray, n: np.ndarray, width: int, vocab_size: int, who: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate a padded grid and its lengths; returns (tokens int64-safe, n cut to width)."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 2:
        raise ValueError(f"{who}: tokens must be [B, L], got shape {tokens.shape}")
    n = np.minimum(np.asarray(n, np.int64).reshape(-1), width)
    if n.shape != (tokens.shape[0],) or np.any(n < 0) or np.any(n > tokens.shape[1]):
        raise ValueError(f"{who}: lengths must be one int in [0, {tokens.shape[1]}] per row, got {n!r}")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):   # pads included: look closer
        real = np.arange(tokens.shape[1])[None, :] < n[:, None]
        lo, hi = int(np.where(real, tokens, 0).min()), int(np.where(real, tokens, 0).max())
        if lo < 0 or hi >= vocab_size:
            raise ValueError(f"{who}: tokens must lie in [0, vocab_size={vocab_size}), got ids in [{lo}, {hi}]")
    return tokens, n


def maskable(tokens: np.ndarray, n: np.ndarray, special: SpecialTokens) -> np.ndarray | None:
    """Eligibility grid for choosing targets, or None when it is just "the first n of
    each row" (then the faster ``lengths=`` path applies). Reserved ids other than
    ``unk`` are never targets."""
    low = tokens < special.first_regular
    if not low.any():
        return None
    real = np.arange(tokens.shape[1])[None, :] < n[:, None]
    reserved = low & (tokens != special.unk) & real
    if not reserved.any():
        return None
    return real & ~reserved


def single_segment_fields(body: np.ndarray, n: np.ndarray, seq_length: int, special: SpecialTokens) -> Sample:
    """``[CLS] body [SEP] PAD`` grids and their fixed fields (no targets yet)."""
    B, L = body.shape
    S = int(seq_length)
    tokens = np.full((B, S), special.pad, np.int32)
    cols = np.arange(L)
    tokens[:, 1:1 + L] = body
    short = np.flatnonzero(n < L)
    if short.size:
        tokens[short, 1:1 + L] = np.where(cols[None, :] < n[short, None], body[short], special.pad)
    tokens[:, 0] = special.cls
    tokens[np.arange(B), n + 1] = special.sep
    return {
        "tokens": tokens,
        "labels": np.full((B, S), special.pad, np.int32),
        "loss_mask": np.zeros((B, S), np.float32),
        "position_ids": np.tile(np.arange(S, dtype=np.int32), (B, 1)),
        "segment_ids": np.zeros((B, S), np.int32),
        "kv_start": np.zeros((B, S), np.int32),
        "kv_end": _rows_const((n + 2).astype(np.int32), S),
    }


def _rows_const(values: np.ndarray, width: int) -> np.ndarray:
    out = np.empty((len(values), width), values.dtype)
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


def one_row(out: Sample) -> Sample:
    return {k: np.ascontiguousarray(v[0]) for k, v in out.items()}


# One-sample path (``t(sample, rng)``): the same checks, draws and output as the batch
# of one, on 1-D arrays with a fixed, small number of numpy calls.


def segment_row(sample: Mapping[str, np.ndarray], width: int, vocab_size: int, who: str, *,
                fields: tuple[str, ...] = ()) -> tuple[np.ndarray, list[np.ndarray]]:
    """One segment cut to ``width``, checked as :func:`stack_segments` + :func:`check_grid`
    check a batch: ``(body int32 [n], [bool [n] per flag field])``."""
    require_fields(sample, ("tokens",) + fields, who)
    t = np.asarray(sample["tokens"])
    if t.ndim != 1 or not (t.size == 0 or np.issubdtype(t.dtype, np.integer)):
        raise ValueError(f"{who}: tokens must be a 1-D integer array, got dtype {t.dtype} shape {t.shape}")
    flags = []
    for f in fields:
        v = np.asarray(sample[f])
        if v.shape != t.shape:
            raise ValueError(f"{who}: {f} must have the shape of tokens {t.shape}, got {v.shape}")
        flags.append(v[:width].astype(bool, copy=False))
    body = t[:width].astype(np.int32, copy=False)
    if body.size:
        lo, hi = int(body.min()), int(body.max())
        if lo < 0 or hi >= vocab_size:
            raise ValueError(f"{who}: tokens must lie in [0, vocab_size={vocab_size}), got ids in [{lo}, {hi}]")
    return body, flags


def maskable_row(body: np.ndarray, special: SpecialTokens) -> np.ndarray | None:
    """:func:`maskable` for one row's real tokens."""
    reserved = body < special.first_regular
    if not reserved.any():
        return None
    reserved &= body != special.unk
    if not reserved.any():
        return None
    return ~reserved


def single_segment_row(body: np.ndarray, seq_length: int, special: SpecialTokens,
                       position_ids: np.ndarray) -> Sample:
    """``[CLS] body [SEP] PAD`` and its fixed fields for one sample (no targets yet);
    ``position_ids`` (0..S-1) is copied."""
    S, n = int(seq_length), body.size
    tokens = np.full(S, special.pad, np.int32)
    tokens[0] = special.cls
    tokens[1:n + 1] = body
    tokens[n + 1] = special.sep
    return {
        "tokens": tokens,
        "labels": np.full(S, special.pad, np.int32),
        "loss_mask": np.zeros(S, np.float32),
        "position_ids": position_ids.copy(),
        "segment_ids": np.zeros(S, np.int32),
        "kv_start": np.zeros(S, np.int32),
        "kv_end": np.full(S, n + 2, np.int32),
    }


def row_targets(rng: np.random.Generator, body: np.ndarray, word_start: np.ndarray | None, width: int,
                law: masking.SpanLaw, mask_rate: float, special: SpecialTokens):
    """Spans (body positions) for one segment as the batch of one chooses them:
    ``word_start`` None = token level. Returns ``(start, end)``."""
    n = body.size
    if width == 0:
        return masking._NO_SPANS, masking._NO_SPANS
    eligible = maskable_row(body, special)
    if word_start is None:
        ws = np.ones(n, bool)
        token_mode = eligible is None
    else:
        ws = word_start
        # the batch's padded grid is all word starts only when the row fills it
        token_mode = eligible is None and (width <= 1 or (n == width and bool(ws[1:].all())))
    n_el = n if eligible is None else int(np.count_nonzero(eligible))
    return masking.row_spans(rng, ws, mask_rate * n_el, law, eligible=eligible,
                             row_len=n if eligible is None else None, token_mode=token_mode)


# ------------------------------------------------------------------------------------------
# The transform
# ------------------------------------------------------------------------------------------


class MLM:
    """BERT masked LM (token-level or whole-word) on one segment."""

    writes = ("tokens", "labels", "loss_mask", "position_ids", "segment_ids", "kv_start", "kv_end")

    def __init__(self, config: MLMConfig, *, special: SpecialTokens, vocab_size: int, tokenizer=None):
        self.vocab_size = check_transform_args("MLM", config, MLMConfig, special, vocab_size)
        self.config = config
        self.special = special
        self.length_probs = _check_probs("ngram_probs", config.ngram_probs)
        self.reads = ("tokens", "word_start") if config.whole_word else ("tokens",)
        self._law = masking.SpanLaw(self.length_probs)
        self._corrupt = masking.Corruption(config.replace_probs, per_span=config.per_span, mask_id=special.mask,
                                           low=special.first_regular, high=self.vocab_size)
        self._positions = np.arange(int(config.seq_length), dtype=np.int32)

    def batch_arrays(self, tokens: np.ndarray, word_start: np.ndarray | None, lengths: np.ndarray,
                     rng: np.random.Generator) -> Sample:
        """[B, S] fields for a padded grid of segments (row b holds ``lengths[b]`` tokens;
        rows longer than ``seq_length - 2`` are cut)."""
        cfg, sp = self.config, self.special
        S = int(cfg.seq_length)
        L = S - 2
        body, n = check_grid(tokens, lengths, L, self.vocab_size, "MLM")
        body = body[:, :L]
        B = body.shape[0]
        if cfg.whole_word:
            if word_start is None:
                raise ValueError("MLM: whole_word=True needs word_start")
            ws = np.asarray(word_start, bool)[:, :L]
            if ws.shape != body.shape:
                raise ValueError(f"MLM: word_start shape {ws.shape} differs from tokens shape {body.shape}")
        else:
            ws = np.ones((B, body.shape[1]), bool)
        out = single_segment_fields(body, n, S, sp)
        if body.shape[1] == 0:
            return out
        eligible = maskable(body, n, sp)
        n_el = n if eligible is None else np.count_nonzero(eligible, axis=1)
        spans = masking.choose_span_set(
            rng, ws, length_probs=self.length_probs, budget_tokens=cfg.mask_rate * n_el,
            lengths=n if eligible is None else None, eligible=eligible)
        pos_b, span = spans.positions()
        pos = body_to_output(pos_b, body.shape[1], S)
        set_targets(out, pos)
        action = masking.draw_actions(rng, span, len(spans), probs=cfg.replace_probs, per_span=cfg.per_span)
        masking.corrupt_positions(rng, out["tokens"].reshape(-1), pos, action, mask_id=sp.mask,
                                  low=sp.first_regular, high=self.vocab_size)
        return out

    def batch(self, samples: Sequence[Mapping[str, np.ndarray]], rng: np.random.Generator) -> Sample:
        """[B, S] fields for a list of segments, vectorised over the batch."""
        fields = ("word_start",) if self.config.whole_word else ()
        body, n, extra = stack_segments(samples, self.config.seq_length - 2, "MLM", fields=fields,
                                        pad=self.special.pad)
        return self.batch_arrays(body, extra.get("word_start"), n, rng)

    def __call__(self, sample: Mapping[str, np.ndarray], rng: np.random.Generator) -> Sample:
        """One sample: the batch of one (same draws, same output), on a 1-D fast path."""
        if not masking.ONE_ROW_FAST_PATH:
            return one_row(self.batch([sample], rng))
        cfg = self.config
        L = int(cfg.seq_length) - 2
        fields = ("word_start",) if cfg.whole_word else ()
        body, flags = segment_row(sample, L, self.vocab_size, "MLM", fields=fields)
        out = single_segment_row(body, cfg.seq_length, self.special, self._positions)
        lo, hi = row_targets(rng, body, flags[0] if flags else None, L, self._law, cfg.mask_rate, self.special)
        pos, span = masking.row_positions(lo, hi)
        pos = pos + 1                                                   # after [CLS]
        tokens = out["tokens"]
        out["labels"][pos] = tokens[pos]
        out["loss_mask"][pos] = 1.0
        self._corrupt(rng, tokens, pos, span, lo.size)
        return out

    def __repr__(self) -> str:
        return f"MLM({self.config!r})"


TASKS = (
    Task("mlm", MLM, MLMConfig, model="encoder", sampler="segment", input_length=lambda c: c.seq_length - 2,
         special=("cls", "sep", "mask", "pad")),
)
