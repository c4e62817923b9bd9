"""UniLM (Dong et al. 2019): one cloze objective under four attention patterns.

Per sample one LM is drawn with ``mode_probs`` (default 1/3, 1/6, 1/6, 1/3):

==============  ====================================  =================  ==========================
mode            layout                                segment_ids        a real row i sees keys
==============  ====================================  =================  ==========================
bidirectional   ``[CLS] A [SEP] B [SEP]``             A part 0, B part 1 all real tokens
left_to_right   ``[CLS] x [SEP]``                     2                  ``[0, i+1)``
right_to_left   ``[CLS] x [SEP]``                     3                  ``[i, n_real)``
seq2seq         ``[CLS] S1 [SEP] S2 [SEP]``           source 4, target 5 source: the source part;
                                                                         target: ``[0, i+1)``
==============  ====================================  =================  ==========================

``segment_ids`` double as the LM id (``NUM_SEGMENT_TYPES`` = 6 embeddings;
PAD positions get 0). "A part" is ``[CLS] A [SEP]``, "B part" ``B [SEP]``; the
same for source/target. The masks come from :mod:`objectives.intervals`
(bidirectional, causal, right_to_left, prefix_lm); PAD rows see the real tokens,
as in the other encoders, and carry no loss.

Pairs: the segment (``tokens`` [n], optional ``sentence_start`` and
``word_start``) is cut to ``seq_length - 3`` tokens and split at a sentence
start chosen uniformly among positions 1..n-1; with none there, at a word
start; with none either, at a uniform position. A segment of fewer than 2
tokens cannot be split: bidirectional then uses the single layout ``[CLS] x
[SEP]`` (segment 0) and seq2seq an empty target ``[CLS] x [SEP] [SEP]``.
``bidirectional_pairs=False`` always uses the single layout for bidirectional.

Cloze targets in every mode: ``mask_rate`` (15%) of the maskable positions,
in expectation, chosen as picks of which ``ngram_rate`` (20%) are bigrams or
trigrams (split evenly; ``max_ngram`` sets the top length) and the rest single
tokens; n-grams of tokens, or of whole words with ``whole_word``. Targets are
replaced [MASK] / random regular id / kept with ``replace_probs`` (80/10/10),
per token (``per_span`` for per pick). Maskable: body tokens (reserved input ids
other than ``unk`` excepted) and, in seq2seq, the target's closing [SEP] (as
UniLM does, so the model learns to end the target; ``predict_target_sep``).
An n-gram that would cross the middle [SEP] is cut there. In seq2seq a masked
target token is predicted from the source and the target to its left (and its
own [MASK]) only.

``UniLM.batch(samples, rng)`` builds [B, S] arrays at once (vectorised,
drawing differently from per-sample calls); ``UniLM(...)(sample, rng)`` is the
batch of one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from objectives import intervals, masking
from objectives.mlm import check_grid, maskable, one_row, set_targets, stack_segments
from objectives.sample import Sample, SpecialTokens, check_rate, check_transform_args
from objectives.task import Task

MODES = ("bidirectional", "left_to_right", "right_to_left", "seq2seq")
BIDIRECTIONAL, LEFT_TO_RIGHT, RIGHT_TO_LEFT, SEQ2SEQ = range(4)
# segment (= LM) id of the first part and of the second part, per mode
SEGMENT_A = np.array([0, 2, 3, 4], np.int32)
SEGMENT_B = np.array([1, 2, 3, 5], np.int32)
NUM_SEGMENT_TYPES = 6


@dataclass(frozen=True)
class UniLMConfig:
    seq_length: int = 512
    mode_probs: tuple = (1 / 3, 1 / 6, 1 / 6, 1 / 3)  # bidirectional, left_to_right, right_to_left, seq2seq
    mask_rate: float = 0.15                  # share of maskable positions that are targets
    ngram_rate: float = 0.2                  # share of picks that are n-grams of 2..max_ngram
    max_ngram: int = 3
    whole_word: bool = False                 # picks are whole words (True) or tokens
    replace_probs: tuple = (0.8, 0.1, 0.1)   # [MASK] / random / keep
    per_span: bool = False                   # 80/10/10 per token (UniLM) or per pick
    bidirectional_pairs: bool = True         # bidirectional as [CLS] A [SEP] B [SEP]
    predict_target_sep: bool = True          # seq2seq: the target's closing [SEP] can be a target

    def __post_init__(self):
        if not isinstance(self.seq_length, (int, np.integer)) or int(self.seq_length) < 4:
            raise ValueError(f"seq_length must be an int >= 4 ([CLS] x [SEP] [SEP]), got {self.seq_length!r}")
        p = np.asarray(self.mode_probs, dtype=np.float64)
        if p.shape != (4,) or not np.all(np.isfinite(p)) or np.any(p < 0) or abs(p.sum() - 1) > 1e-6:
            raise ValueError(f"mode_probs must be 4 rates >= 0 summing to 1 {MODES}, got {self.mode_probs!r}")
        check_rate("mask_rate", self.mask_rate)
        check_rate("ngram_rate", self.ngram_rate)
        if not isinstance(self.max_ngram, (int, np.integer)) or int(self.max_ngram) < 1:
            raise ValueError(f"max_ngram must be an int >= 1, got {self.max_ngram!r}")
        if int(self.max_ngram) == 1 and float(self.ngram_rate) > 0:
            raise ValueError(f"ngram_rate={self.ngram_rate} needs max_ngram >= 2")
        masking.check_action_probs(self.replace_probs, "replace_probs")

    @property
    def length_probs(self) -> np.ndarray:
        """P(pick of 1, 2, ... max_ngram tokens/words)."""
        k = int(self.max_ngram)
        p = np.zeros(k)
        p[0] = 1.0 - float(self.ngram_rate)
        if k > 1:
            p[1:] = float(self.ngram_rate) / (k - 1)
        return p


def _pick_in_rows(rng: np.random.Generator, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row a uniformly chosen True column of ``cand`` [B, L]; (column, found)."""
    B, L = cand.shape
    count = np.count_nonzero(cand, axis=1)
    flat = np.flatnonzero(cand.ravel())
    offs = np.cumsum(count) - count
    r = np.minimum((rng.random(B) * count).astype(np.int64), np.maximum(count - 1, 0))
    found = count > 0
    col = np.zeros(B, np.int64)
    col[found] = flat[(offs + r)[found]] - np.flatnonzero(found) * L
    return col, found


def split_points(rng: np.random.Generator, n: np.ndarray, sentence_start: np.ndarray | None,
                 word_start: np.ndarray | None, width: int) -> np.ndarray:
    """Cut column per row (1 <= cut <= n-1): a sentence start, else a word start, else
    uniform; rows with n < 2 get cut = n."""
    B = n.size
    cols = np.arange(width)[None, :]
    inside = (cols >= 1) & (cols < n[:, None])
    cut = np.minimum(1 + (rng.random(B) * np.maximum(n - 1, 0)).astype(np.int64), np.maximum(n - 1, 1))
    todo = np.ones(B, bool)
    for flags in (sentence_start, word_start):   # first found wins
        if flags is None or not todo.any():
            continue
        col, found = _pick_in_rows(rng, np.asarray(flags, bool) & inside & todo[:, None])
        cut = np.where(found, col, cut)
        todo &= ~found
    return np.where(n >= 2, cut, n)


def unilm_intervals(mode: np.ndarray, n_real: np.ndarray, source_end: np.ndarray,
                    seq_length: int) -> tuple[np.ndarray, np.ndarray]:
    """kv_start / kv_end [B, S] per row's mode via :mod:`objectives.intervals`; PAD rows
    (column >= n_real) see the real tokens ``[0, n_real)``."""
    B, S = mode.size, int(seq_length)
    kv_start = np.zeros((B, S), np.int32)
    kv_end = np.zeros((B, S), np.int32)
    cols = np.arange(S)[None, :]
    builders = {
        BIDIRECTIONAL: intervals.bidirectional,
        LEFT_TO_RIGHT: intervals.causal,
        RIGHT_TO_LEFT: intervals.right_to_left,
    }
    for m in range(4):
        rows = np.flatnonzero(mode == m)
        if rows.size == 0:
            continue
        k = rows.size
        real = cols < n_real[rows, None]
        # one "document" per row's real part, another for its pads (ids never repeat)
        doc = np.where(real, 2 * np.arange(k)[:, None], 2 * np.arange(k)[:, None] + 1).ravel()
        base = (np.arange(k) * S)[:, None]
        if m == SEQ2SEQ:
            s, e = intervals.prefix_lm(doc, np.repeat(base[:, 0] + source_end[rows], S))
        else:
            s, e = builders[m](doc)
        s = s.reshape(k, S) - base
        e = e.reshape(k, S) - base
        kv_start[rows] = np.where(real, s, 0)
        kv_end[rows] = np.where(real, e, n_real[rows, None])
    return kv_start, kv_end


class UniLM:
    """UniLM cloze objective with per-sample bidirectional / l2r / r2l / seq2seq masks."""

    writes = ("tokens", "labels", "loss_mask", "position_ids", "segment_ids", "kv_start", "kv_end")
    num_segment_types = NUM_SEGMENT_TYPES

    def __init__(self, config: UniLMConfig, *, special: SpecialTokens, vocab_size: int, tokenizer=None):
        self.vocab_size = check_transform_args("UniLM", config, UniLMConfig, special, vocab_size)
        self.config = config
        self.special = special
        self.length_probs = config.length_probs
        self.mode_cdf = np.cumsum(np.asarray(config.mode_probs, np.float64))
        self.reads = ("tokens", "word_start") if config.whole_word else ("tokens",)

    def layout(self, rng: np.random.Generator, body: np.ndarray, n: np.ndarray,
               sentence_start: np.ndarray | None, word_start: np.ndarray | None) -> dict:
        """Draw modes and cuts; place [CLS]/[SEP]/PAD. Returns the grids and per-row facts."""
        cfg, sp = self.config, self.special
        S = int(cfg.seq_length)
        B, W = body.shape
        mode = np.minimum(np.searchsorted(self.mode_cdf, rng.random(B), side="right"), 3)
        pair = (mode == SEQ2SEQ) | ((mode == BIDIRECTIONAL) & cfg.bidirectional_pairs & (n >= 2))
        n = np.where(pair, np.minimum(n, S - 3), np.minimum(n, S - 2))
        cut = np.where(pair, split_points(rng, n, sentence_start, word_start, W), n)
        n_real = n + 2 + pair
        cols = np.arange(S)[None, :]
        # body column j goes to j + 1 before the cut, j + 2 after it (pairs)
        shift1 = np.full((B, S), sp.pad, np.int32)
        shift1[:, 1:1 + min(W, S - 1)] = body[:, :S - 1]
        shift2 = np.full((B, S), sp.pad, np.int32)
        shift2[:, 2:2 + min(W, S - 2)] = body[:, :S - 2]
        second = cols >= (cut + 2)[:, None]
        tokens = np.where(second & pair[:, None], shift2, shift1)
        tokens[:, 0] = sp.cls
        rows = np.arange(B)
        tokens[rows, cut + 1] = sp.sep
        tokens[rows[pair], (n_real - 1)[pair]] = sp.sep
        tokens[cols >= n_real[:, None]] = sp.pad
        ws = None
        if word_start is not None:
            w1 = np.ones((B, S), bool)
            w1[:, 1:1 + min(W, S - 1)] = word_start[:, :S - 1]
            w2 = np.ones((B, S), bool)
            w2[:, 2:2 + min(W, S - 2)] = word_start[:, :S - 2]
            ws = np.where(second & pair[:, None], w2, w1)
            ws[:, 0] = True                               # each special is a word of its own
            ws[rows, cut + 1] = True
            ws[rows[pair], (n_real - 1)[pair]] = True
        segment = np.where(cols <= (cut + 1)[:, None], SEGMENT_A[mode][:, None], SEGMENT_B[mode][:, None])
        segment = np.where(cols < n_real[:, None], segment, 0).astype(np.int32)
        source_end = np.where(mode == SEQ2SEQ, cut + 2, n_real)
        return {"mode": mode, "pair": pair, "n": n, "cut": cut, "n_real": n_real, "tokens": tokens,
                "word_start": ws, "segment_ids": segment, "source_end": source_end}

    def batch_arrays(self, tokens: np.ndarray, lengths: np.ndarray, rng: np.random.Generator, *,
                     word_start: np.ndarray | None = None, sentence_start: np.ndarray | None = None) -> Sample:
        """[B, S] fields for a padded grid of segments (row b holds ``lengths[b]`` tokens)."""
        cfg, sp = self.config, self.special
        S = int(cfg.seq_length)
        body, n = check_grid(tokens, lengths, S - 2, self.vocab_size, "UniLM")
        if cfg.whole_word and word_start is None:
            raise ValueError("UniLM: whole_word=True needs word_start")
        for name, grid in (("word_start", word_start), ("sentence_start", sentence_start)):
            if grid is not None and np.shape(grid) != body.shape:
                raise ValueError(f"UniLM: {name} shape {np.shape(grid)} differs from tokens shape {body.shape}")
        B = body.shape[0]
        lay = self.layout(rng, body, n, sentence_start, word_start)
        out_tokens = lay["tokens"]
        n_real = lay["n_real"]
        pos, span, n_spans = self._choose_targets(rng, body, lay, word_start)
        kv_start, kv_end = unilm_intervals(lay["mode"], n_real, lay["source_end"], S)
        out = {
            "tokens": out_tokens,
            "labels": np.full((B, S), sp.pad, np.int32),
            "loss_mask": np.zeros((B, S), np.float32),
            "position_ids": np.tile(np.arange(S, dtype=np.int32), (B, 1)),
            "segment_ids": lay["segment_ids"],
            "kv_start": kv_start,
            "kv_end": kv_end,
        }
        set_targets(out, pos)
        action = masking.draw_actions(rng, span, n_spans, probs=cfg.replace_probs, per_span=cfg.per_span)
        masking.corrupt_positions(rng, out["tokens"].reshape(-1), pos, action, mask_id=sp.mask,
                                  low=sp.first_regular, high=self.vocab_size)
        return out

    def _choose_targets(self, rng: np.random.Generator, body: np.ndarray, lay: dict,
                        word_start: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, int]:
        """Cloze picks in body columns (fast ``lengths=`` path), mapped to output positions.

        Column ``n`` of a seq2seq row stands for the target's closing [SEP]; a pick that
        would cross the middle [SEP] (between columns cut-1 and cut) is cut in two there.
        Returns (flat output positions, pick index per position, number of picks)."""
        cfg, sp = self.config, self.special
        S = int(cfg.seq_length)
        W = S - 2
        B = body.shape[0]
        rows = np.arange(B)
        mode, pair, n, cut = lay["mode"], lay["pair"], lay["n"], lay["cut"]
        sep_col = (mode == SEQ2SEQ) & bool(cfg.predict_target_sep)
        grid = np.full((B, W), sp.pad, np.int32)
        grid[:, :min(W, body.shape[1])] = body[:, :W]
        eligible = maskable(grid, n, sp)                 # None: every body token may be picked
        n_pick = n + sep_col
        if eligible is not None:
            eligible[rows[sep_col], n[sep_col]] = True
            n_pick = np.count_nonzero(eligible, axis=1)
        if cfg.whole_word:
            ws = np.zeros((B, W), bool)
            ws[:, :min(W, word_start.shape[1])] = word_start[:, :W]
            ws[:, 0] = True
            ws[rows[pair], np.minimum(cut[pair], W - 1)] = True   # the second part starts a word
            ws[rows[sep_col], n[sep_col]] = True                  # [SEP] is a word of its own
        else:
            ws = np.ones((B, W), bool)
        spans = masking.choose_span_set(rng, ws, length_probs=self.length_probs,
                                        budget_tokens=cfg.mask_rate * n_pick,
                                        lengths=n + sep_col if eligible is None else None, eligible=eligible)
        start, end = spans.start, spans.end
        row = start // W
        cut_flat = row * W + cut[row]
        cross = pair[row] & (start < cut_flat) & (end > cut_flat)
        if cross.any():
            start = np.concatenate((start, cut_flat[cross]))
            end = np.concatenate((np.where(cross, cut_flat, end), end[cross]))
            order = np.argsort(start, kind="stable")
            start, end = start[order], end[order]
        pos_b, span = masking.SpanSet((B, W), start, end).positions()
        prow, col = np.divmod(pos_b, W)
        pos = prow * S + col + 1 + (pair[prow] & (col >= cut[prow]))
        return pos, span, int(start.size)

    def batch(self, samples: Sequence[Mapping[str, np.ndarray]], rng: np.random.Generator) -> Sample:
        """[B, S] fields for a list of segments, vectorised over the batch."""
        fields = []
        for f in ("word_start", "sentence_start"):
            present = [f in s for s in samples]
            if all(present):
                fields.append(f)
            elif any(present) or (f == "word_start" and self.config.whole_word):
                raise KeyError(f"UniLM: {f} is in some samples but not all" if any(present)
                               else "UniLM: whole_word=True needs word_start in every sample")
        body, n, extra = stack_segments(samples, self.config.seq_length - 2, "UniLM", fields=tuple(fields),
                                        pad=self.special.pad)
        return self.batch_arrays(body, n, rng, word_start=extra.get("word_start"),
                                 sentence_start=extra.get("sentence_start"))

    def __call__(self, sample: Mapping[str, np.ndarray], rng: np.random.Generator) -> Sample:
        return one_row(self.batch([sample], rng))

    def __repr__(self) -> str:
        return f"UniLM({self.config!r})"


def _body_length(config: UniLMConfig) -> int:
    """[CLS] A [SEP] B [SEP] holds seq_length - 3 tokens; when no mode draws two parts,
    [CLS] x [SEP] holds seq_length - 2."""
    p = config.mode_probs
    two_parts = p[SEQ2SEQ] > 0 or (config.bidirectional_pairs and p[BIDIRECTIONAL] > 0)
    return config.seq_length - (3 if two_parts else 2)


TASKS = (
    Task("unilm", UniLM, UniLMConfig, model="encoder", sampler="segment", input_length=_body_length,
         segment_types=NUM_SEGMENT_TYPES, special=("cls", "sep", "mask", "pad")),
)
