"""SpanBERT (Joshi et al. 2020): geometric whole-word spans and the span boundary objective.

Per sample (a segment ``tokens`` [n] + ``word_start`` [n] of one document):

1. span lengths in *words* ~ Geometric(``geometric_p`` = 0.2) clipped at
   ``max_span`` = 10 by renormalising (mean 3.8 words); spans start at word
   starts and are placed without overlap until ``mask_rate`` = 15% of the tokens
   are masked (in expectation; see :mod:`ptobj.objectives.masking`);
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
an empty segment gives ``[CLS] [SEP]`` and no targets. ``SpanBERT.batch(batch,
streams)`` builds [B, S] arrays for a batch of segments, row b drawing from its
own stream; ``SpanBERT(...)(sample, seed, epoch=, index=)`` is the batch of one.
"""

from __future__ import annotations

from dataclasses import dataclass
import numpy as np

from ptobj.objectives import masking
from ptobj.objectives.mlm import body_to_output, flag_grid, maskable, segment_grid, set_targets, single_segment_fields
from ptobj.objectives.sample import Batch, ConfiguredTransform, SpecialTokens, check_rate
from ptobj.objectives.task import Task
from ptobj.objectives.streams import RowStreams


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


class SpanBERT(ConfiguredTransform):
    """Geometric whole-word span masking with SBO targets."""

    config_type = SpanBERTConfig
    reads = ("tokens", "word_start")
    writes = ("tokens", "labels", "loss_mask", "position_ids", "segment_ids", "kv_start", "kv_end",
              "sbo_left", "sbo_right", "sbo_offset")

    def __init__(self, config: SpanBERTConfig, *, special: SpecialTokens, vocab_size: int, tokenizer=None):
        super().__init__(config, special=special, vocab_size=vocab_size)
        self.length_probs = config.length_probs
        self._law = masking.SpanLaw(self.length_probs)
        self._corrupt = masking.Corruption.of(config, special, self.vocab_size)

    def apply(self, batch: Batch, streams: RowStreams) -> Batch:
        cfg, sp = self.config, self.special
        S = int(cfg.seq_length)
        body, n = segment_grid(batch, S - 2, self.vocab_size, "SpanBERT")
        ws = flag_grid(batch, "word_start", body, "SpanBERT")
        B, W = body.shape
        out = single_segment_fields(body, n, S, sp)
        out["sbo_left"] = np.full((B, S), -1, np.int32)
        out["sbo_right"] = np.full((B, S), -1, np.int32)
        out["sbo_offset"] = np.zeros((B, S), np.int32)
        if W == 0:
            return out
        eligible = maskable(body, n, sp)
        n_el = n if eligible is None else np.count_nonzero(eligible, axis=1)
        spans = masking.choose_spans(streams, ws, length_probs=self._law, budget_tokens=cfg.mask_rate * n_el,
                                     lengths=n if eligible is None else None, eligible=eligible)
        pos_b, span = spans.positions()
        pos = body_to_output(pos_b, W, S)
        set_targets(out, pos)
        # SBO: boundaries just outside each span, in output columns (span i covers s_i .. e_i)
        start = body_to_output(spans.start, W, S)
        ln = spans.lengths
        s_col = start % S
        out["sbo_left"].reshape(-1)[pos] = np.repeat(s_col - 1, ln)
        out["sbo_right"].reshape(-1)[pos] = np.repeat(s_col + ln, ln)
        out["sbo_offset"].reshape(-1)[pos] = np.arange(1, pos.size + 1) - np.repeat(np.cumsum(ln) - ln, ln)
        self._corrupt(streams, out["tokens"], pos, span, start)
        return out


TASKS = (
    Task("spanbert", SpanBERT, SpanBERTConfig, model="encoder", sampler="segment",
         input_length=lambda c: c.seq_length - 2, losses={"lm": "token", "sbo": "span_boundary"},
         special=("cls", "sep", "mask", "pad")),
)
