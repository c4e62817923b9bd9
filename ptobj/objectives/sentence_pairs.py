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
and no n-gram runs across the middle [SEP]: targets are chosen within each
segment (``mask_rate`` of each), the two segments of a sample drawing from two
streams split off the sample's. Reserved ids already in the input (e.g.
``unk``) are treated as ordinary tokens.

``SOP.batch(batch, streams)`` / ``NSP.batch`` build [B, S] arrays for a batch of
segments, row b drawing from its own stream; a call on one sample is the batch
of one.
"""

from __future__ import annotations

from dataclasses import dataclass
import numpy as np

from ptobj.objectives import masking
from ptobj.objectives.macbert import MacBERT, MacBERTConfig
from ptobj.objectives.mlm import columns_of, flag_grid, rows_of, segment_grid, set_targets
from ptobj.objectives.sample import Batch, ConfiguredTransform, SpecialTokens, before, check_rate, lengths, windows
from ptobj.objectives.task import Task
from ptobj.objectives.streams import RowStreams, site

MASKINGS = ("mlm", "macbert", "none")
_SITE_SPLIT = site("sentence_pairs.split")
_SITE_SWAP = site("sentence_pairs.swap")
_SITE_RANDOM = site("sentence_pairs.random_b")


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


def choose_split(streams: RowStreams, n: np.ndarray, sentence_start: np.ndarray,
                 word_start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row a cut in ``[1, n)``: a uniform sentence boundary, else a uniform word
    start, else a uniform token (one draw from the row's stream). Grids are False past
    each row's ``n``. Returns ``(split, kind)`` with kind 0 sentence, 1 word, 2 token,
    -1 none possible (n < 2; split = n)."""
    B, N = sentence_start.shape
    flag = sentence_start.copy()
    if N:
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
    u = streams.uniform(_SITE_SPLIT, 1)[:, 0]
    k = np.minimum((u * count).astype(np.int64), np.maximum(count - 1, 0))
    # the k-th True of each row: rows' True positions are consecutive in flatnonzero
    hits = np.flatnonzero(flag)
    first = np.cumsum(count) - count
    none = count == 0
    split = hits[np.minimum(first + k, max(len(hits) - 1, 0))] % max(N, 1) if len(hits) else np.zeros(B, np.int64)
    return np.where(none, n, split), np.where(none, -1, kind)


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


class _SentencePair(ConfiguredTransform):
    reads: tuple[str, ...] = ("tokens", "word_start", "sentence_start")
    label_field = ""
    config_type: type = _PairConfig

    def __init__(self, config: _PairConfig, *, special: SpecialTokens, vocab_size: int, tokenizer=None,
                 similar=None):
        super().__init__(config, special=special, vocab_size=vocab_size)
        self.writes = ("tokens", "labels", "loss_mask", "position_ids", "segment_ids", "kv_start", "kv_end",
                       self.label_field)
        self.ngram_probs = masking.ngram_length_probs(config.ngram_probs)
        self._law = masking.SpanLaw(self.ngram_probs)
        self._corrupt = masking.Corruption(config.replace_probs, per_span=False, mask_id=special.mask,
                                           low=special.first_regular, high=self.vocab_size)
        self.macbert = None
        if config.masking == "macbert":
            mc = MacBERTConfig(seq_length=config.seq_length, mask_rate=config.mask_rate,
                               ngram_probs=config.ngram_probs, replace_probs=config.replace_probs,
                               similar_words=config.similar_words, similar_format=config.similar_format)
            self.macbert = MacBERT(mc, special=special, vocab_size=vocab_size, tokenizer=tokenizer, similar=similar)

    # the B segment's source: (grid of tokens, grid of word starts, start, length, label) per row
    def _second(self, streams, batch, tok, ws, split, n, pairable):
        raise NotImplementedError

    def _swap(self, streams):
        return np.zeros(len(streams), bool)

    def _targets(self, streams: RowStreams, out: Batch, grid_ws, s1, l1, s2, l2) -> None:
        """MLM targets of the pair, in place on ``out``. Each segment is its own row of a
        [2B, W] grid of word starts (so no n-gram runs across the [SEP]) with its own stream
        split off the sample's, its budget ``mask_rate`` of that segment; the chosen tokens
        are then corrupted in the output grid, draws keyed by their output columns."""
        cfg = self.config
        B, S = len(l1), int(cfg.seq_length)
        W = int(max(l1.max(initial=0), l2.max(initial=0), 1))
        base = np.arange(B) * grid_ws.shape[1]
        lens = np.stack([l1, l2], axis=1).reshape(-1)
        # the segments' word starts as they are read (False past each one's length), then column 0
        ws = windows(grid_ws.reshape(-1), np.stack([base + s1, base + s2], axis=1).reshape(-1), lens, W, bool)
        ws[:, 0] = lens > 0                                   # = masking.effective_word_starts(ws, lengths=lens)
        parts = streams.split(2)
        if self.macbert is not None:
            spans = self.macbert.choose(parts, ws, lengths=lens)
        else:
            spans = masking.choose_spans(parts, ws, length_probs=self._law, budget_tokens=cfg.mask_rate * lens,
                                         lengths=lens)
        pos_w, span = spans.positions()
        row, col = np.divmod(pos_w, W)
        b, second = np.divmod(row, 2)
        pos = b * S + 1 + col + second * (l1[b] + 1)          # [CLS] first [SEP] second [SEP]
        set_targets(out, pos)
        if self.macbert is not None:
            self.macbert.substitute(streams, out["tokens"], pos, ws.reshape(-1)[pos_w])
        else:
            srow, scol = np.divmod(spans.start, W)
            sb, ssecond = np.divmod(srow, 2)
            self._corrupt(streams, out["tokens"], pos, span, sb * S + 1 + scol + ssecond * (l1[sb] + 1))

    def apply(self, batch: Batch, streams: RowStreams) -> Batch:
        cfg, sp = self.config, self.special
        S = int(cfg.seq_length)
        who = type(self).__name__
        tok, n = segment_grid(batch, np.iinfo(np.int64).max, self.vocab_size, who)
        real = before(n, tok.shape[1])
        ws = flag_grid(batch, "word_start", tok, who)         # _targets reads segments' starts from it
        sent = flag_grid(batch, "sentence_start", tok, who) & real
        B = len(n)
        if tok.shape[1] == 0:                                 # only empty segments: one blank column
            tok, ws, sent = np.zeros((B, 1), np.int32), np.zeros((B, 1), bool), np.zeros((B, 1), bool)
        split, kind = choose_split(streams, n, sent, ws)
        pairable = kind >= 0
        # B's source grid: own tokens (offset 0) or the random document (offset width)
        grid_tok, grid_ws, b_start, lb, label = self._second(streams, batch, tok, ws, split, n, pairable)
        la = split
        cut_a, cut_b = truncate_pair(la, lb, S - 3)
        a_start, la = cut_a, la - cut_a                      # A loses its front
        lb = lb - cut_b                                       # B loses its back
        # a segment that cannot pair: [CLS] tokens[:S-2] [SEP]
        la = np.where(pairable, la, np.minimum(n, S - 2))
        a_start = np.where(pairable, a_start, 0)
        swap = self._swap(streams) & pairable
        label = np.where(pairable, np.where(swap, 1, label), -1).astype(np.int32)
        s1 = np.where(swap, b_start, a_start)
        l1 = np.where(swap, lb, la)
        s2 = np.where(swap, a_start, b_start)
        l2 = np.where(swap, la, lb)

        # output position p reads grid column s1 + p - 1 (first part) or s2 + p - l1 - 2 (second)
        p = np.arange(S, dtype=np.int32)[None, :]
        base = np.arange(B, dtype=np.int64) * grid_tok.shape[1]
        first, second = (base + s1 - 1).astype(np.int32), (base + s2 - l1 - 2).astype(np.int32)
        idx = np.where(p <= l1.astype(np.int32)[:, None], first[:, None], second[:, None])
        idx += p
        n_real = np.where(l2 > 0, l1 + l2 + 3, l1 + 2)
        real = before(n_real, S)
        tokens = grid_tok.reshape(-1).take(idx, mode="clip").astype(np.int32, copy=False)
        np.copyto(tokens, sp.pad, where=~real)
        rows = np.arange(B)
        tokens[:, 0] = sp.cls
        tokens[rows, l1 + 1] = sp.sep
        two = l2 > 0
        tokens[rows[two], (l1 + l2 + 2)[two]] = sp.sep
        out = {
            "tokens": tokens,
            "labels": np.full((B, S), sp.pad, np.int32),
            "loss_mask": np.zeros((B, S), np.float32),
            "position_ids": rows_of(np.arange(S, dtype=np.int32), B),
            "segment_ids": (~before(l1 + 2, S) & real).astype(np.int32),
            "kv_start": np.zeros((B, S), np.int32),
            "kv_end": columns_of(n_real.astype(np.int32), S),
            self.label_field: label,
        }
        if cfg.masking != "none":
            self._targets(streams, out, grid_ws, s1, l1, s2, l2)
        return out


class SOP(_SentencePair):
    """Sentence-order prediction: A, B from one document, swapped half the time."""

    label_field = "sop_label"
    config_type = SOPConfig

    def _second(self, streams, batch, tok, ws, split, n, pairable):
        return tok, ws, split, n - split, np.zeros(len(n), np.int32)

    def _swap(self, streams):
        return streams.uniform(_SITE_SWAP, 1)[:, 0] < self.config.swap_rate


class NSP(_SentencePair):
    """Next-sentence prediction: B replaced by another document's text half the time."""

    reads = ("tokens", "word_start", "sentence_start", "random_tokens", "random_word_start")
    label_field = "nsp_label"
    config_type = NSPConfig

    def _second(self, streams, batch, tok, ws, split, n, pairable):
        width = tok.shape[1]
        r_tok, r_n = segment_grid({"tokens": batch["random_tokens"], "length": lengths(batch, "random_")},
                                  np.iinfo(np.int64).max, self.vocab_size, "NSP (random_tokens)")
        r_ws = flag_grid(batch, "random_word_start", r_tok, "NSP")
        is_random = (streams.uniform(_SITE_RANDOM, 1)[:, 0] < self.config.random_rate) & (r_n > 0) & pairable
        grid_tok = np.concatenate([tok, r_tok], axis=1)
        grid_ws = np.concatenate([ws, r_ws], axis=1)
        b_start = np.where(is_random, width, split)
        lb = np.where(is_random, r_n, n - split)
        return grid_tok, grid_ws, b_start, lb, is_random.astype(np.int32)


def _pair_losses(name: str):
    return lambda c: {"lm": "token", name: "sequence"} if c.masking != "none" else {name: "sequence"}


_PAIR_SPECIAL = ("cls", "sep", "mask", "pad")

TASKS = (
    Task("sop", SOP, SOPConfig, model="encoder", sampler="segment_pair", input_length=lambda c: c.seq_length - 3,
         losses=_pair_losses("sop"), segment_types=2, special=_PAIR_SPECIAL),
    Task("nsp", NSP, NSPConfig, model="encoder", sampler="segment_pair", input_length=lambda c: c.seq_length - 3,
         losses=_pair_losses("nsp"), segment_types=2, special=_PAIR_SPECIAL),
)
