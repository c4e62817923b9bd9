"""Sentence-pair objectives: SOP (ALBERT) and NSP (BERT, the ablation baseline).

Both take a segment of ONE document (``tokens``, ``word_start``,
``sentence_start``) and cut it in two at a random sentence boundary, as
ALBERT does: A = the text before the cut, B = the text after it.

* **SOP**: with probability ``swap_rate`` (0.5) the order becomes B, A and
  ``sop_label`` = 1 (1 = swapped, 0 = in order). The negative is always the
  same two segments swapped: no random-document negatives (ALBERT's code mixes
  some in; this does not).
* **NSP**: with probability ``random_rate`` (0.5) B is replaced by the start
  of ``random_tokens`` (a segment of another document from the sampler) and
  ``nsp_label`` = 1 (1 = B is random, 0 = B is the true continuation). A
  sample whose ``random_tokens`` is empty keeps its true B (label 0).

Output (length ``seq_length``): ``[CLS] A [SEP] B [SEP] PAD...``,
``segment_ids`` 0 for [CLS] A [SEP], 1 for B [SEP], 0 for PAD; every row sees
the non-pad tokens. The pair is truncated to ``seq_length - 3`` tokens: the
longer segment loses tokens first, then both alternately; A loses them at its
front and B at its back, so A and B stay adjacent in the document (ALBERT
picks the side at random; keeping them adjacent keeps the order signal clean).

Fallbacks, on purpose: a segment with no sentence boundary after its first
token is cut at a random word start instead; with no word start either, at a
random token. A segment of fewer than 2 tokens cannot make a pair: it becomes
``[CLS] tokens [SEP]`` with label -1 (the pair heads skip -1) and still gets
its MLM targets.

MLM on top (the model trains both): ``masking="mlm"`` (default, BERT 80/10/10
per token over whole-word n-grams, ``ngram_probs`` (1,) = whole-word unigrams,
budget ``mask_rate`` of the tokens), ``"macbert"`` (MacBERT's similar-word
correction, budget ``mask_rate`` of the words; ``similar_words`` as for
MacBERT) or ``"none"`` (no token targets). [CLS]/[SEP]/PAD are never targets,
and no n-gram runs across the middle [SEP]: n-grams longer than one word are
chosen within each segment (``mask_rate`` of each segment). Reserved ids
already in the input (e.g. ``unk``) are treated as ordinary tokens.

``SOP.batch`` / ``NSP.batch`` build a list of samples at once, vectorised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from objectives import masking
from objectives.macbert import MacBERT, MacBERTConfig, _segment_row, _stack_segments
from objectives.sample import Sample, SpecialTokens, check_rate, check_transform_args
from objectives.task import Task

MASKINGS = ("mlm", "macbert", "none")


@dataclass(frozen=True)
class _PairConfig:
    seq_length: int = 512
    masking: str = "mlm"                      # mlm | macbert | none
    mask_rate: float = 0.15
    ngram_probs: tuple = (1.0,)               # P(n-gram of 1, 2, ... words); MacBERT uses (0.4, 0.3, 0.2, 0.1)
    replace_probs: tuple = (0.8, 0.1, 0.1)    # mlm: mask/random/keep; macbert: similar/random/keep
    similar_words: str = ""                   # macbert only: table / synonym / embedding file
    similar_format: str = "auto"

    def __post_init__(self):
        if not isinstance(self.seq_length, (int, np.integer)) or isinstance(self.seq_length, bool) \
                or self.seq_length < 5:
            raise ValueError(f"seq_length must be >= 5 ([CLS] a [SEP] b [SEP]), got {self.seq_length!r}")
        if self.masking not in MASKINGS:
            raise ValueError(f"masking must be one of {MASKINGS}, got {self.masking!r}")
        check_rate("mask_rate", self.mask_rate)
        masking.check_word_masking(self.ngram_probs, self.replace_probs)


@dataclass(frozen=True)
class SOPConfig(_PairConfig):
    swap_rate: float = 0.5

    def __post_init__(self):
        super().__post_init__()
        check_rate("swap_rate", self.swap_rate)


@dataclass(frozen=True)
class NSPConfig(_PairConfig):
    random_rate: float = 0.5

    def __post_init__(self):
        super().__post_init__()
        check_rate("random_rate", self.random_rate)


def choose_split(rng: np.random.Generator, n: np.ndarray, sentence_start: np.ndarray,
                 word_start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row a cut in ``[1, n)``: a uniform sentence boundary, else a uniform word
    start, else a uniform token. Grids are False past each row's ``n``. Returns
    ``(split, kind)`` with kind 0 sentence, 1 word, 2 token, -1 none possible
    (n < 2; split = n)."""
    B, N = sentence_start.shape
    flag = sentence_start.copy()
    flag[:, 0] = False
    count = np.count_nonzero(flag, axis=1)
    kind = np.zeros(B, np.int64)
    if not count.all():                      # rare: rows with a single sentence
        j = np.arange(N)[None, :]
        inner = (j >= 1) & (j < n[:, None])
        w_flag = word_start & inner
        cw = np.count_nonzero(w_flag, axis=1)
        ct = np.maximum(n - 1, 0)
        no_s = count == 0
        flag = np.where(no_s[:, None], np.where((cw > 0)[:, None], w_flag, inner), flag)
        kind = np.where(no_s, np.where(cw > 0, 1, 2), 0)
        count = np.where(no_s, np.where(cw > 0, cw, ct), count)
    k = np.minimum((rng.random(B) * count).astype(np.int64), np.maximum(count - 1, 0))
    # the k-th True of each row: rows' True positions are consecutive in flatnonzero
    hits = np.flatnonzero(flag)
    first = np.cumsum(count) - count
    none = count == 0
    split = hits[np.minimum(first + k, max(len(hits) - 1, 0))] % N if len(hits) else np.zeros(B, np.int64)
    return np.where(none, n, split), np.where(none, -1, kind)


def choose_split_row(rng: np.random.Generator, sentence_start: np.ndarray,
                     word_start: np.ndarray) -> tuple[int, int]:
    """:func:`choose_split` for one segment (1-D flags of its n tokens), same draw."""
    n = sentence_start.size
    flag = sentence_start.copy()
    flag[:1] = False
    count, kind = int(np.count_nonzero(flag)), 0
    if count == 0:
        flag = word_start.copy()
        flag[:1] = False
        count, kind = int(np.count_nonzero(flag)), 1
        if count == 0:
            count, kind = max(n - 1, 0), 2
    k = min(int(rng.random() * count), max(count - 1, 0))
    if count == 0:
        return n, -1
    return (1 + k if kind == 2 else int(np.flatnonzero(flag)[k])), kind


def truncate_pair_row(la: int, lb: int, max_total: int) -> tuple[int, int]:
    """:func:`truncate_pair` on plain ints."""
    excess = max(la + lb - max_total, 0)
    d = min(excess, abs(la - lb))
    rem = excess - d
    if la >= lb:
        return d + (rem + 1) // 2, rem // 2
    return rem // 2, d + (rem + 1) // 2


def truncate_pair(la: np.ndarray, lb: np.ndarray, max_total: int) -> tuple[np.ndarray, np.ndarray]:
    """Tokens to cut from A and B so ``la + lb <= max_total``: the longer loses
    first, then both alternately (the longer, or A on a tie, takes the odd one)."""
    excess = np.maximum(la + lb - max_total, 0)
    d = np.minimum(excess, np.abs(la - lb))
    rem = excess - d
    a_longer = la >= lb
    cut_a = np.where(a_longer, d + (rem + 1) // 2, rem // 2)
    cut_b = np.where(a_longer, rem // 2, d + (rem + 1) // 2)
    return cut_a, cut_b


class _SentencePair:
    reads: tuple[str, ...] = ("tokens", "word_start", "sentence_start")
    label_field = ""
    config_type: type = _PairConfig

    def __init__(self, config: _PairConfig, *, special: SpecialTokens, vocab_size: int, tokenizer=None,
                 similar=None):
        self.vocab_size = check_transform_args(type(self).__name__, config, self.config_type, special, vocab_size)
        self.config = config
        self.special = special
        self.writes = ("tokens", "labels", "loss_mask", "position_ids", "segment_ids", "kv_start", "kv_end",
                       self.label_field)
        self.ngram_probs = masking.ngram_length_probs(config.ngram_probs)
        self._law = masking.SpanLaw(self.ngram_probs)
        self._corrupt = masking.Corruption(config.replace_probs, per_span=False, mask_id=special.mask,
                                           low=special.first_regular, high=self.vocab_size)
        self._positions = np.arange(int(config.seq_length), dtype=np.int32)
        self.macbert = None
        if config.masking == "macbert":
            mc = MacBERTConfig(seq_length=config.seq_length, mask_rate=config.mask_rate,
                               ngram_probs=config.ngram_probs, replace_probs=config.replace_probs,
                               similar_words=config.similar_words, similar_format=config.similar_format)
            self.macbert = MacBERT(mc, special=special, vocab_size=vocab_size, tokenizer=tokenizer, similar=similar)

    # the B segment's source: (grid of tokens, grid of word starts, start, length, label) per row
    def _second(self, rng, samples, own, split, n, pairable):
        raise NotImplementedError

    def _swap(self, rng, B):
        return np.zeros(B, bool)

    def _choose(self, rng, grid_ws, s1, l1, s2, l2):
        """Targets as flat output positions, with word-start flags and span indices.
        Unigrams are chosen on the contiguous pair (first + second, no [SEP]); longer
        n-grams on each segment as its own row (budget: ``mask_rate`` of each)."""
        cfg = self.config
        B, S = len(l1), int(cfg.seq_length)
        flat_ws = grid_ws.reshape(-1)
        base = np.arange(B, dtype=np.int64) * grid_ws.shape[1]
        if self.ngram_probs.size == 1:
            W = S - 3
            q = np.arange(W, dtype=np.int64)[None, :]
            n12 = l1 + l2
            src = np.where(q < l1[:, None], (base + s1)[:, None], (base + s2 - l1)[:, None]) + q
            ws = np.take(flat_ws, src, mode="clip")
            ws[:, 0] = True
            rows = np.flatnonzero(l1 < W)
            ws[rows, l1[rows]] = True                          # each segment starts a word
            ws &= q < n12[:, None]
            if self.macbert is not None:
                spans = self.macbert.choose(rng, ws, lengths=n12)
            else:
                spans = masking.choose_span_set(rng, ws, length_probs=self.ngram_probs,
                                                budget_tokens=cfg.mask_rate * n12, lengths=n12)
            pos_p, span = spans.positions()
            row, col = np.divmod(pos_p, W)
            pos = row * S + col + 1 + (col >= l1[row])
            return pos, ws.reshape(-1)[pos_p], span, len(spans)
        # n-grams: each segment is its own row, so no n-gram runs across the [SEP]
        W = int(max(l1.max(initial=0), l2.max(initial=0), 1))
        q = np.arange(W, dtype=np.int64)[None, :]
        starts = np.stack([base + s1, base + s2], axis=1).reshape(-1)
        lens = np.stack([l1, l2], axis=1).reshape(-1)
        ws = np.take(flat_ws, starts[:, None] + q, mode="clip")
        ws[:, 0] = True
        ws &= q < lens[:, None]
        if self.macbert is not None:
            spans = self.macbert.choose(rng, ws, lengths=lens)
        else:
            spans = masking.choose_span_set(rng, ws, length_probs=self.ngram_probs,
                                            budget_tokens=cfg.mask_rate * lens, lengths=lens)
        pos_w, span = spans.positions()
        row, col = np.divmod(pos_w, W)
        b, second = np.divmod(row, 2)
        pos = b * S + 1 + col + second * (l1[b] + 1)
        return pos, ws.reshape(-1)[pos_w], span, len(spans)

    def batch(self, samples: Sequence[Mapping[str, np.ndarray]], rng: np.random.Generator) -> Sample:
        cfg, sp = self.config, self.special
        S = int(cfg.seq_length)
        B = len(samples)
        width = max([len(np.asarray(s["tokens"])) if "tokens" in s else 0 for s in samples] + [1])
        tok, ws, n, sent = _stack_segments(samples, width, type(self).__name__, extra=("sentence_start",))
        split, kind = choose_split(rng, n, sent, ws)
        pairable = kind >= 0
        # B's source grid: own tokens (offset 0) or the random document (offset width)
        grid_tok, grid_ws, b_start, lb, label = self._second(rng, samples, (tok, ws), split, n, pairable)
        la = split
        cut_a, cut_b = truncate_pair(la, lb, S - 3)
        a_start, la = cut_a, la - cut_a                      # A loses its front
        lb = lb - cut_b                                       # B loses its back
        # a segment that cannot pair: [CLS] tokens[:S-2] [SEP]
        la = np.where(pairable, la, np.minimum(n, S - 2))
        a_start = np.where(pairable, a_start, 0)
        swap = self._swap(rng, B) & pairable
        label = np.where(pairable, np.where(swap, 1, label), -1).astype(np.int32)
        s1 = np.where(swap, b_start, a_start)
        l1 = np.where(swap, lb, la)
        s2 = np.where(swap, a_start, b_start)
        l2 = np.where(swap, la, lb)

        # output position p reads grid column s1 + p - 1 (first part) or s2 + p - l1 - 2 (second)
        p = np.arange(S, dtype=np.int64)[None, :]
        base = np.arange(B, dtype=np.int64) * grid_tok.shape[1]
        idx = np.where(p <= l1[:, None], (base + s1 - 1)[:, None], (base + s2 - l1 - 2)[:, None]) + p
        n_real = np.where(l2 > 0, l1 + l2 + 3, l1 + 2)
        tokens = np.take(grid_tok.reshape(-1), idx, mode="clip")
        np.copyto(tokens, sp.pad, where=p >= n_real[:, None])
        rows = np.arange(B)
        tokens[:, 0] = sp.cls
        tokens[rows, l1 + 1] = sp.sep
        two = l2 > 0
        tokens[rows[two], (l1 + l2 + 2)[two]] = sp.sep
        labels = np.full((B, S), sp.pad, np.int32)
        loss_mask = np.zeros((B, S), np.float32)
        if cfg.masking != "none":
            pos, cws, span, n_spans = self._choose(rng, grid_ws, s1, l1, s2, l2)
            flat = tokens.reshape(-1)
            orig = flat[pos]
            if self.macbert is not None:
                flat[pos] = self.macbert.substitute(rng, orig, cws)[0]
            else:
                action = masking.draw_actions(rng, span, n_spans, probs=cfg.replace_probs, per_span=False)
                masking.corrupt_positions(rng, flat, pos, action, mask_id=sp.mask, low=sp.first_regular,
                                          high=self.vocab_size)
            labels.reshape(-1)[pos] = orig
            loss_mask.reshape(-1)[pos] = 1.0
        segment_ids = ((p >= (l1 + 2)[:, None]) & (p < n_real[:, None])).astype(np.int32)
        position_ids = np.empty((B, S), np.int32)
        position_ids[:] = np.arange(S, dtype=np.int32)
        kv_end = np.empty((B, S), np.int32)
        kv_end[:] = n_real[:, None]
        return {
            "tokens": tokens,
            "labels": labels,
            "loss_mask": loss_mask,
            "position_ids": position_ids,
            "segment_ids": segment_ids,
            "kv_start": np.zeros((B, S), np.int32),
            "kv_end": kv_end,
            self.label_field: label,
        }

    # ------------------------------------------------------------------ one sample
    def _second_row(self, rng, sample, tok, ws, split, n, pairable):
        """One row of :meth:`_second`: (tokens, word starts, start, length, label) of B's source."""
        raise NotImplementedError

    def _choose_row(self, rng, grid_ws, s1, l1, s2, l2):
        """One row of :meth:`_choose` (same draws): ``(pos, word_start at pos, span, n_spans)``."""
        cfg = self.config
        if self.ngram_probs.size != 1:                      # two rows (one per segment): the grid code
            pos, cws, span, n_spans = self._choose(rng, grid_ws[None], np.array([s1]), np.array([l1]),
                                                   np.array([s2]), np.array([l2]))
            return pos, cws, span, n_spans
        W = int(cfg.seq_length) - 3
        n12 = l1 + l2
        ws = np.concatenate((grid_ws[s1:s1 + l1], grid_ws[s2:s2 + l2]))
        if n12:
            ws[0] = True
        if l2:
            ws[l1] = True                                    # each segment starts a word
        token_mode = n12 == W and bool(ws[1:].all())
        if self.macbert is not None:
            budget, by_tokens = cfg.mask_rate * int(np.count_nonzero(ws)), False
        else:
            budget, by_tokens = cfg.mask_rate * n12, True
        lo, hi = masking.row_spans(rng, ws, budget, self.macbert._law if self.macbert is not None else self._law,
                                   by_tokens=by_tokens, row_len=n12, token_mode=token_mode)
        pos_p, span = masking.row_positions(lo, hi)
        pos = pos_p + 1
        pos += pos_p >= l1                                   # the middle [SEP]
        return pos, ws[pos_p], span, lo.size

    def __call__(self, sample: Mapping[str, np.ndarray], rng: np.random.Generator) -> Sample:
        """One sample: the batch of one (same draws, same output), on a 1-D fast path."""
        if not masking.ONE_ROW_FAST_PATH:
            out = self.batch([sample], rng)
            return {k: np.asarray(v[0]) for k, v in out.items()}
        cfg, sp = self.config, self.special
        S = int(cfg.seq_length)
        tok, ws, sent = _segment_row(sample, 1 << 62, type(self).__name__, extra=("sentence_start",))
        n = tok.size
        if n == 0:                                           # the batch's one-column grid
            tok, ws = np.zeros(1, np.int32), np.zeros(1, bool)
        ws[0] = True
        split, kind = choose_split_row(rng, sent, ws)
        pairable = kind >= 0
        grid_tok, grid_ws, b_start, lb, label = self._second_row(rng, sample, tok, ws, split, n, pairable)
        cut_a, cut_b = truncate_pair_row(split, lb, S - 3)
        a_start, la = cut_a, split - cut_a                   # A loses its front
        lb -= cut_b                                          # B loses its back
        if not pairable:                                     # [CLS] tokens[:S-2] [SEP]
            la, a_start = min(n, S - 2), 0
        swap = self._swap_row(rng) and pairable
        label = (1 if swap else label) if pairable else -1
        s1, l1, s2, l2 = (b_start, lb, a_start, la) if swap else (a_start, la, b_start, lb)

        n_real = l1 + l2 + 3 if l2 > 0 else l1 + 2
        tokens = np.full(S, sp.pad, np.int32)
        tokens[0] = sp.cls
        tokens[1:l1 + 1] = grid_tok[s1:s1 + l1]
        tokens[l1 + 1] = sp.sep
        if l2 > 0:
            tokens[l1 + 2:l1 + 2 + l2] = grid_tok[s2:s2 + l2]
            tokens[l1 + l2 + 2] = sp.sep
        labels = np.full(S, sp.pad, np.int32)
        loss_mask = np.zeros(S, np.float32)
        if cfg.masking != "none":
            pos, cws, span, n_spans = self._choose_row(rng, grid_ws, s1, l1, s2, l2)
            orig = tokens[pos]
            if self.macbert is not None:
                tokens[pos] = self.macbert.substitute(rng, orig, cws)[0]
            else:
                self._corrupt(rng, tokens, pos, span, n_spans)
            labels[pos] = orig
            loss_mask[pos] = 1.0
        segment_ids = np.zeros(S, np.int32)
        segment_ids[l1 + 2:n_real] = 1
        return {
            "tokens": tokens,
            "labels": labels,
            "loss_mask": loss_mask,
            "position_ids": self._positions.copy(),
            "segment_ids": segment_ids,
            "kv_start": np.zeros(S, np.int32),
            "kv_end": np.full(S, n_real, np.int32),
            self.label_field: np.array(label, np.int32),
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"


class SOP(_SentencePair):
    """Sentence-order prediction: A, B from one document, swapped half the time."""

    label_field = "sop_label"
    config_type = SOPConfig

    def _second(self, rng, samples, own, split, n, pairable):
        tok, ws = own
        return tok, ws, split, n - split, np.zeros(len(n), np.int32)

    def _swap(self, rng, B):
        return rng.random(B) < self.config.swap_rate

    def _second_row(self, rng, sample, tok, ws, split, n, pairable):
        return tok, ws, split, n - split, 0

    def _swap_row(self, rng):
        return bool(rng.random() < self.config.swap_rate)


class NSP(_SentencePair):
    """Next-sentence prediction: B replaced by another document's text half the time."""

    reads = ("tokens", "word_start", "sentence_start", "random_tokens", "random_word_start")
    label_field = "nsp_label"
    config_type = NSPConfig

    def _second(self, rng, samples, own, split, n, pairable):
        tok, ws = own
        width = tok.shape[1]
        rand = [{"tokens": s["random_tokens"], "word_start": s["random_word_start"]} if "random_tokens" in s
                else {"tokens": np.zeros(0, np.int32), "word_start": np.zeros(0, bool)} for s in samples]
        if not all("random_word_start" in s for s in samples if "random_tokens" in s):
            raise KeyError("NSP: a sample with random_tokens lacks random_word_start")
        r_width = max([len(np.asarray(r["tokens"])) for r in rand] + [1])
        r_tok, r_ws, r_n = _stack_segments(rand, r_width, "NSP (random_tokens)")
        is_random = (rng.random(len(n)) < self.config.random_rate) & (r_n > 0) & pairable
        grid_tok = np.concatenate([tok, r_tok], axis=1)
        grid_ws = np.concatenate([ws, r_ws], axis=1)
        b_start = np.where(is_random, width, split)
        lb = np.where(is_random, r_n, n - split)
        return grid_tok, grid_ws, b_start, lb, is_random.astype(np.int32)

    def _second_row(self, rng, sample, tok, ws, split, n, pairable):
        if "random_tokens" in sample:
            if "random_word_start" not in sample:
                raise KeyError("NSP: a sample with random_tokens lacks random_word_start")
            r_tok, r_ws = _segment_row({"tokens": sample["random_tokens"], "word_start": sample["random_word_start"]},
                                       1 << 62, "NSP (random_tokens)")
        else:
            r_tok, r_ws = np.zeros(0, np.int32), np.zeros(0, bool)
        is_random = bool(rng.random() < self.config.random_rate) and r_tok.size > 0 and pairable
        if not is_random:
            return tok, ws, split, n - split, 0
        r_ws[0] = True
        return np.concatenate((tok, r_tok)), np.concatenate((ws, r_ws)), tok.size, r_tok.size, 1

    def _swap_row(self, rng):
        return False


def _pair_losses(name: str):
    return lambda c: {"lm": "token", name: "sequence"} if c.masking != "none" else {name: "sequence"}


_PAIR_SPECIAL = ("cls", "sep", "mask", "pad")

TASKS = (
    Task("sop", SOP, SOPConfig, model="encoder", sampler="segment_pair", input_length=lambda c: c.seq_length - 3,
         losses=_pair_losses("sop"), segment_types=2, special=_PAIR_SPECIAL),
    Task("nsp", NSP, NSPConfig, model="encoder", sampler="segment_pair", input_length=lambda c: c.seq_length - 3,
         losses=_pair_losses("nsp"), segment_types=2, special=_PAIR_SPECIAL),
)
