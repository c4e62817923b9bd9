"""SpanBERT (Joshi et al. 2020): geometric whole-word spans and the span boundary objective.

Per sample (a segment ``tokens`` [n] + ``word_start`` [n] of one document):

1. span lengths in *words* ~ Geometric(``geometric_p`` = 0.2) clipped at
   ``max_span`` = 10 by renormalising (mean 3.8 words); spans start at word
   starts and are placed without overlap until ``mask_rate`` = 15% of the tokens
   are masked (in expectation; see :mod:`objectives.masking`);
2. 80/10/10 ([MASK] / random regular id / kept) decided once per span
   (``per_span``), the random case drawing an id per token;
3. a single segment: ``[CLS] tokens [SEP] PAD...`` (tokens cut to
   ``seq_length - 2``), ``segment_ids`` 0, every row sees the non-pad tokens.

SBO extras, int32 per position, for every target ``i`` of the span covering
output positions ``s..e``: ``sbo_left`` = s - 1, ``sbo_right`` = e + 1 (the
positions of the tokens just outside the span, x_{s-1} and x_{e+1}) and
``sbo_offset`` = i - s + 1 (1-based). Elsewhere -1 / -1 / 0. Spans touching the
segment's edges are handled on purpose: the body sits between [CLS] (position
0) and [SEP] (position n + 1), both always present and never masked, so the
boundary then is [CLS] or [SEP], never outside the sequence. Two spans may
touch; the boundary of one is then a (masked) token of the other, whose encoder
output is still used, as in the paper.

Pass-through: reserved ids other than ``unk`` in the input are never targets;
an empty segment gives ``[CLS] [SEP]`` and no targets. ``SpanBERT.batch`` /
``batch_arrays`` build [B, S] arrays at once (vectorised, drawing differently
from per-sample calls); ``SpanBERT(...)(sample, rng)`` is the batch of one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from objectives import masking
from objectives.mlm import (
    body_to_output,
    check_grid,
    maskable,
    one_row,
    row_targets,
    segment_row,
    set_targets,
    single_segment_fields,
    single_segment_row,
    stack_segments,
)
from objectives.sample import Sample, SpecialTokens, check_rate, check_transform_args
from objectives.task import Task


@dataclass(frozen=True)
class SpanBERTConfig:
    seq_length: int = 512
    mask_rate: float = 0.15                  # share of tokens masked
    geometric_p: float = 0.2                 # span length in words ~ Geometric(p) ...
    max_span: int = 10                       # ... clipped at this many words (renormalised)
    replace_probs: tuple = (0.8, 0.1, 0.1)   # [MASK] / random / keep
    per_span: bool = True                    # 80/10/10 decided per span (SpanBERT) or per token

    def __post_init__(self):
        if not isinstance(self.seq_length, (int, np.integer)) or int(self.seq_length) < 3:
            raise ValueError(f"seq_length must be an int >= 3 ([CLS] x [SEP]), got {self.seq_length!r}")
        check_rate("mask_rate", self.mask_rate)
        if not 0.0 < float(self.geometric_p) <= 1.0:
            raise ValueError(f"geometric_p must lie in (0, 1], got {self.geometric_p!r}")
        if not isinstance(self.max_span, (int, np.integer)) or int(self.max_span) < 1:
            raise ValueError(f"max_span must be an int >= 1, got {self.max_span!r}")
        masking.check_action_probs(self.replace_probs, "replace_probs")

    @property
    def length_probs(self) -> np.ndarray:
        return masking.geometric_length_probs(self.geometric_p, self.max_span)


class SpanBERT:
    """Geometric whole-word span masking with SBO targets."""

    reads = ("tokens", "word_start")
    writes = ("tokens", "labels", "loss_mask", "position_ids", "segment_ids", "kv_start", "kv_end",
              "sbo_left", "sbo_right", "sbo_offset")

    def __init__(self, config: SpanBERTConfig, *, special: SpecialTokens, vocab_size: int, tokenizer=None):
        self.vocab_size = check_transform_args("SpanBERT", config, SpanBERTConfig, special, vocab_size)
        self.config = config
        self.special = special
        self.length_probs = config.length_probs
        self._law = masking.SpanLaw(self.length_probs)
        self._corrupt = masking.Corruption(config.replace_probs, per_span=config.per_span, mask_id=special.mask,
                                           low=special.first_regular, high=self.vocab_size)
        self._positions = np.arange(int(config.seq_length), dtype=np.int32)

    def batch_arrays(self, tokens: np.ndarray, word_start: np.ndarray, lengths: np.ndarray,
                     rng: np.random.Generator) -> Sample:
        """[B, S] fields for a padded grid of segments (row b holds ``lengths[b]`` tokens)."""
        cfg, sp = self.config, self.special
        S = int(cfg.seq_length)
        L = S - 2
        body, n = check_grid(tokens, lengths, L, self.vocab_size, "SpanBERT")
        body = body[:, :L]
        ws = np.asarray(word_start, bool)[:, :L]
        if ws.shape != body.shape:
            raise ValueError(f"SpanBERT: word_start shape {ws.shape} differs from tokens shape {body.shape}")
        B = body.shape[0]
        out = single_segment_fields(body, n, S, sp)
        out["sbo_left"] = np.full((B, S), -1, np.int32)
        out["sbo_right"] = np.full((B, S), -1, np.int32)
        out["sbo_offset"] = np.zeros((B, S), np.int32)
        if body.shape[1] == 0:
            return out
        eligible = maskable(body, n, sp)
        n_el = n if eligible is None else np.count_nonzero(eligible, axis=1)
        spans = masking.choose_span_set(
            rng, ws, length_probs=self.length_probs, budget_tokens=cfg.mask_rate * n_el,
            lengths=n if eligible is None else None, eligible=eligible)
        pos_b, span = spans.positions()
        W = body.shape[1]
        pos = body_to_output(pos_b, W, S)
        set_targets(out, pos)
        # SBO: boundaries just outside each span, in output columns
        start_col = body_to_output(spans.start, W, S) % S
        end_col = start_col + spans.lengths - 1
        col = pos % S
        out["sbo_left"].reshape(-1)[pos] = start_col[span] - 1
        out["sbo_right"].reshape(-1)[pos] = end_col[span] + 1
        out["sbo_offset"].reshape(-1)[pos] = col - start_col[span] + 1
        action = masking.draw_actions(rng, span, len(spans), probs=cfg.replace_probs, per_span=cfg.per_span)
        masking.corrupt_positions(rng, out["tokens"].reshape(-1), pos, action, mask_id=sp.mask,
                                  low=sp.first_regular, high=self.vocab_size)
        return out

    def batch(self, samples: Sequence[Mapping[str, np.ndarray]], rng: np.random.Generator) -> Sample:
        """[B, S] fields for a list of segments, vectorised over the batch."""
        body, n, extra = stack_segments(samples, self.config.seq_length - 2, "SpanBERT",
                                        fields=("word_start",), pad=self.special.pad)
        return self.batch_arrays(body, extra["word_start"], n, rng)

    def __call__(self, sample: Mapping[str, np.ndarray], rng: np.random.Generator) -> Sample:
        """One sample: the batch of one (same draws, same output), on a 1-D fast path."""
        if not masking.ONE_ROW_FAST_PATH:
            return one_row(self.batch([sample], rng))
        cfg = self.config
        S = int(cfg.seq_length)
        L = S - 2
        body, (ws,) = segment_row(sample, L, self.vocab_size, "SpanBERT", fields=("word_start",))
        out = single_segment_row(body, S, self.special, self._positions)
        lo, hi = row_targets(rng, body, ws, L, self._law, cfg.mask_rate, self.special)
        pos, span = masking.row_positions(lo, hi)
        pos = pos + 1                                                   # after [CLS]
        tokens = out["tokens"]
        out["labels"][pos] = tokens[pos]
        out["loss_mask"][pos] = 1.0
        # SBO: output columns just outside each span (span lo..hi-1 sits at lo+1..hi)
        left = np.full(S, -1, np.int32)
        right = np.full(S, -1, np.int32)
        offset = np.zeros(S, np.int32)
        lo_t = lo[span]
        left[pos] = lo_t
        right[pos] = hi[span] + 1
        offset[pos] = pos - lo_t
        out["sbo_left"], out["sbo_right"], out["sbo_offset"] = left, right, offset
        self._corrupt(rng, tokens, pos, span, lo.size)
        return out

    def __repr__(self) -> str:
        return f"SpanBERT({self.config!r})"


TASKS = (
    Task("spanbert", SpanBERT, SpanBERTConfig, model="encoder", sampler="segment",
         input_length=lambda c: c.seq_length - 2, losses={"lm": "token", "sbo": "span_boundary"},
         special=("cls", "sep", "mask", "pad")),
)
