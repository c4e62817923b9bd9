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
same for source/target. The masks come from :mod:`ptobj.objectives.intervals`
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

``UniLM.batch(batch, streams)`` builds [B, S] arrays for a batch of segments,
row b drawing from its own stream; ``UniLM(...)(sample, seed, epoch=, index=)``
is the batch of one.
"""

from __future__ import annotations

from dataclasses import dataclass
import numpy as np

from ptobj.objectives import masking
from ptobj.objectives.mlm import flag_grid, maskable, rows_of, segment_grid, set_targets
from ptobj.objectives.sample import Batch, ConfiguredTransform, SpecialTokens, before, check_rate
from ptobj.objectives.task import Task
from ptobj.objectives.streams import RowStreams, site

MODES = ("bidirectional", "left_to_right", "right_to_left", "seq2seq")
BIDIRECTIONAL, LEFT_TO_RIGHT, RIGHT_TO_LEFT, SEQ2SEQ = range(4)
# segment (= LM) id of the first part and of the second part, per mode
SEGMENT_A = np.array([0, 2, 3, 4], np.int32)
SEGMENT_B = np.array([1, 2, 3, 5], np.int32)
NUM_SEGMENT_TYPES = 6
_SITE_MODE = site("unilm.mode")
_SITE_CUT = site("unilm.cut")


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


def _pick_in_rows(u: np.ndarray, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row the True column of ``cand`` [B, L] picked by the uniform ``u[b]``; (column, found)."""
    B, L = cand.shape
    count = np.count_nonzero(cand, axis=1)
    flat = np.flatnonzero(cand.ravel())
    offs = np.cumsum(count) - count
    r = np.minimum((u * count).astype(np.int64), np.maximum(count - 1, 0))
    found = count > 0
    col = np.zeros(B, np.int64)
    col[found] = flat[(offs + r)[found]] - np.flatnonzero(found) * L
    return col, found


def split_points(streams: RowStreams, n: np.ndarray, sentence_start: np.ndarray | None,
                 word_start: np.ndarray | None, width: int) -> np.ndarray:
    """Cut column per row (1 <= cut <= n-1): a sentence start, else a word start, else
    uniform; rows with n < 2 get cut = n."""
    inside = before(n, width)
    inside[:, :1] = False
    u = streams.uniform(_SITE_CUT, 3)
    cut = np.minimum(1 + (u[:, 0] * np.maximum(n - 1, 0)).astype(np.int64), np.maximum(n - 1, 1))
    todo = np.ones(n.size, bool)
    for j, flags in ((1, sentence_start), (2, word_start)):   # first found wins
        if flags is None or not todo.any():
            continue
        col, found = _pick_in_rows(u[:, j], np.asarray(flags, bool)[:, :width] & inside & todo[:, None])
        cut = np.where(found, col, cut)
        todo &= ~found
    return np.where(n >= 2, cut, n)


def unilm_intervals(mode: np.ndarray, n_real: np.ndarray, source_end: np.ndarray,
                    seq_length: int) -> tuple[np.ndarray, np.ndarray]:
    """kv_start / kv_end [B, S] per row's mode, as :mod:`ptobj.objectives.intervals` defines them
    (``bidirectional``, ``causal``, ``right_to_left``, ``prefix_lm``) for the row's real part
    ``[0, n_real)`` as one document; PAD rows (column >= n_real) see the real tokens."""
    i = np.arange(int(seq_length), dtype=np.int32)[None, :]
    real = before(n_real, seq_length)
    # a real row i sees [0, max(i + 1, prefix)): prefix = n_real (bidirectional, right-to-left),
    # the source's end (seq2seq) or 0 (left-to-right); right-to-left rows start at i
    prefix = np.where(mode == SEQ2SEQ, source_end, np.where(mode == LEFT_TO_RIGHT, 0, n_real)).astype(np.int32)
    kv_end = np.where(real, np.maximum(i + 1, prefix[:, None]), n_real[:, None].astype(np.int32))
    kv_start = np.where(real & (mode == RIGHT_TO_LEFT)[:, None], i, 0).astype(np.int32, copy=False)
    return kv_start, kv_end.astype(np.int32, copy=False)


class UniLM(ConfiguredTransform):
    """UniLM cloze objective with per-sample bidirectional / l2r / r2l / seq2seq masks."""

    config_type = UniLMConfig
    writes = ("tokens", "labels", "loss_mask", "position_ids", "segment_ids", "kv_start", "kv_end")
    num_segment_types = NUM_SEGMENT_TYPES

    def __init__(self, config: UniLMConfig, *, special: SpecialTokens, vocab_size: int, tokenizer=None):
        super().__init__(config, special=special, vocab_size=vocab_size)
        self.length_probs = config.length_probs
        self._law = masking.SpanLaw(self.length_probs)
        self._corrupt = masking.Corruption.of(config, special, self.vocab_size)
        self.mode_cdf = np.cumsum(np.asarray(config.mode_probs, np.float64))
        self.reads = ("tokens", "word_start") if config.whole_word else ("tokens",)

    def layout(self, streams: RowStreams, body: np.ndarray, n: np.ndarray,
               sentence_start: np.ndarray | None, word_start: np.ndarray | None) -> dict:
        """Draw modes and cuts; place [CLS]/[SEP]/PAD. Returns the grids and per-row facts."""
        cfg, sp = self.config, self.special
        S = int(cfg.seq_length)
        B, W = body.shape
        mode = np.minimum(np.searchsorted(self.mode_cdf, streams.uniform(_SITE_MODE, 1)[:, 0], side="right"), 3)
        pair = (mode == SEQ2SEQ) | ((mode == BIDIRECTIONAL) & cfg.bidirectional_pairs & (n >= 2))
        n = np.where(pair, np.minimum(n, S - 3), np.minimum(n, S - 2))
        cut = np.where(pair, split_points(streams, n, sentence_start, word_start, W), n)
        n_real = n + 2 + pair
        # body column j goes to j + 1 before the cut, j + 2 after it (pairs)
        first = before(cut + 2, S)                       # [CLS] and the first part (with its [SEP])
        real = before(n_real, S)
        tokens = np.full((B, S), sp.pad, np.int32)
        tokens[:, 1:1 + min(W, S - 1)] = body[:, :S - 1]
        if pair.any():
            shift2 = np.full((B, S), sp.pad, np.int32)
            shift2[:, 2:2 + min(W, S - 2)] = body[:, :S - 2]
            np.copyto(tokens, shift2, where=~first & pair[:, None])
        tokens[:, 0] = sp.cls
        rows = np.arange(B)
        tokens[rows, cut + 1] = sp.sep
        tokens[rows[pair], (n_real - 1)[pair]] = sp.sep
        np.copyto(tokens, sp.pad, where=~real)
        segment = np.where(first, SEGMENT_A[mode][:, None], SEGMENT_B[mode][:, None])   # int32
        segment *= real
        source_end = np.where(mode == SEQ2SEQ, cut + 2, n_real)
        return {"mode": mode, "pair": pair, "n": n, "cut": cut, "n_real": n_real, "tokens": tokens,
                "segment_ids": segment, "source_end": source_end}

    def apply(self, batch: Batch, streams: RowStreams) -> Batch:
        cfg, sp = self.config, self.special
        S = int(cfg.seq_length)
        body, n = segment_grid(batch, S - 2, self.vocab_size, "UniLM")
        word_start = flag_grid(batch, "word_start", body, "UniLM") if cfg.whole_word or "word_start" in batch \
            else None
        sentence_start = flag_grid(batch, "sentence_start", body, "UniLM") if "sentence_start" in batch else None
        B = body.shape[0]
        lay = self.layout(streams, body, n, sentence_start, word_start)
        n_real = lay["n_real"]
        pos, span, span_start = self._choose_targets(streams, body, lay, word_start)
        kv_start, kv_end = unilm_intervals(lay["mode"], n_real, lay["source_end"], S)
        position_ids = rows_of(np.arange(S, dtype=np.int32), B)
        out = {
            "tokens": lay["tokens"],
            "labels": np.full((B, S), sp.pad, np.int32),
            "loss_mask": np.zeros((B, S), np.float32),
            "position_ids": position_ids,
            "segment_ids": lay["segment_ids"],
            "kv_start": kv_start,
            "kv_end": kv_end,
        }
        set_targets(out, pos)
        self._corrupt(streams, out["tokens"], pos, span, span_start)
        return out

    def _choose_targets(self, streams: RowStreams, body: np.ndarray, lay: dict,
                        word_start: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Cloze picks in body columns (fast ``lengths=`` path), mapped to output positions.

        Column ``n`` of a seq2seq row stands for the target's closing [SEP]; a pick that
        would cross the middle [SEP] (between columns cut-1 and cut) is cut in two there.
        Returns (flat output positions, pick index per position, each pick's first output position)."""
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
            ws = None                                             # token picks
        spans = masking.choose_spans(streams, ws, length_probs=self._law, budget_tokens=cfg.mask_rate * n_pick,
                                     lengths=n + sep_col if eligible is None else None, eligible=eligible, width=W)
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

        def to_output(p):
            prow, col = np.divmod(p, W)
            return prow * S + col + 1 + (pair[prow] & (col >= cut[prow]))

        return to_output(pos_b), span, to_output(start)


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
