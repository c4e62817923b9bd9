"""Shared masking primitives: whole-word span choice and BERT's 80/10/10 corruption.

Every masked-LM objective here (BERT MLM, whole-word, n-gram, SpanBERT, UniLM
cloze, MacBERT, the MLM of SOP/NSP) is "choose spans of whole words, then
corrupt them". Both steps live here, vectorised over a batch ``[B, W]``; row b
draws only from its own stream (:class:`ptobj.objectives.streams.RowStreams`), so its
spans do not depend on the other rows.

Span choice (:func:`choose_spans`), per row:

1. span lengths (in words) are drawn i.i.d. from ``length_probs``;
2. spans are taken in draw order while the words taken so far are below a
   threshold ``T`` (the span that crosses it included). Whether to take a span
   never depends on that span's own length, so the taken spans keep the length
   law exactly (the expected number of spans of length l is P(l) E[N]), on short
   rows as on long ones. ``T`` is an integer drawn from the two neighbours that
   make the expected number of words taken, ``mean x E[N]`` (Wald), equal the
   budget: ``E[N | T = j]`` is the renewal function of the law, computed once
   per law (:class:`SpanLaw`);
3. the taken spans are placed without overlap, in draw order, at random: the
   free words are cut into ``k + 1`` gaps at ``k`` sorted uniform points (stars
   and bars), so no span is ever rejected or cut.

Budgets are in words (``budget_words``, or ``word_share`` of the row's words) or
tokens (``budget_tokens``, turned into words at the row's tokens-per-word ratio,
so the expected number of masked tokens is the budget up to how word lengths
vary along the row); both are met in expectation, fractional ones too. The law cannot hold where it does not fit: a
row with fewer words than the threshold plus the longest span (under about 12
words for SpanBERT's law at 15%) cuts the span that overflows it, and a span that
would run over an ineligible token is cut there. As for any process of
non-overlapping spans, the first and last words of a row are covered less often
than the middle ones when spans are longer than a word.

Spans start at word starts and cover whole words (position 0 of a row always
starts a word); two spans may touch. Tokens outside ``eligible`` (e.g. [CLS],
[SEP], PAD) are never chosen; an ineligible token inside a word splits that word.

Corruption (:class:`Corruption`): each target becomes [MASK] / a uniform regular
id / itself with (80, 10, 10)%, drawn per token or once per span.
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

from ptobj.objectives.sample import before
from ptobj.objectives.streams import RowStreams, site

_SITE_SPANS = site("masking.spans")
_SITE_ACTION = site("masking.action")
_SITE_SPAN_ACTION = site("masking.span_action")

# ------------------------------------------------------------------------------------------
# Length distributions (over words)
# ------------------------------------------------------------------------------------------


def geometric_length_probs(p: float, max_len: int) -> np.ndarray:
    """SpanBERT's span-length law: Geometric(p) on 1, 2, ... clipped at ``max_len``
    by renormalising. ``probs[k-1]`` is P(length = k). p=0.2, max 10 -> mean 3.8."""
    if not 0.0 < float(p) <= 1.0:
        raise ValueError(f"geometric p must lie in (0, 1], got {p!r}")
    if int(max_len) < 1:
        raise ValueError(f"max span length must be >= 1, got {max_len!r}")
    k = np.arange(1, int(max_len) + 1, dtype=np.float64)
    w = float(p) * (1.0 - float(p)) ** (k - 1)
    return w / w.sum()


def ngram_length_probs(weights: Sequence[float]) -> np.ndarray:
    """Normalised n-gram weights: ``weights[n-1]`` for an n-word span
    (MacBERT: (0.4, 0.3, 0.2, 0.1); BERT whole-word: (1,))."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or w.size == 0:
        raise ValueError(f"length weights must be a non-empty 1-D sequence, got {weights!r}")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"length weights must be finite, >= 0 and not all 0, got {weights!r}")
    return w / w.sum()


def expected_length(length_probs: np.ndarray) -> float:
    """Mean span length (words) of a length distribution."""
    p = np.asarray(length_probs, dtype=np.float64)
    return float((np.arange(1, p.size + 1) * p).sum())


class SpanLaw:
    """A span-length law and its constants, computed once per transform: normalised
    probabilities, CDF, mean, and the renewal table ``expected_spans``."""

    __slots__ = ("probs", "cdf", "size", "mean", "_count")

    def __init__(self, length_probs: Sequence[float] | np.ndarray):
        if isinstance(length_probs, SpanLaw):
            length_probs = length_probs.probs
        self.probs = ngram_length_probs(length_probs)
        self.cdf = np.cumsum(self.probs)
        self.cdf[-1] = 1.0
        self.size = int(self.probs.size)
        self.mean = expected_length(self.probs)
        self._count = np.zeros(1)

    def expected_spans(self, upto: float) -> np.ndarray:
        """``c[j]`` = expected number of spans taken under threshold ``j`` (words): the
        spans n with ``S_{n-1} < j`` (S = running sum of lengths, S_0 = 0), i.e.
        ``sum_{i<j} u(i)`` with u the renewal mass of the law. Grown until ``c[-1] > upto``."""
        c = self._count
        if c[-1] > upto:
            return c
        p, K = self.probs, self.size
        J = max(2 * c.size, int(upto * self.mean) + 2 * K + 8)
        u = np.zeros(J)
        u[0] = 1.0
        rev = p[::-1]
        for i in range(1, J):                       # u(i) = sum_l p_l u(i - l)
            lo = max(0, i - K)
            u[i] = rev[K - (i - lo):] @ u[lo:i]
        self._count = np.concatenate(([0.0], np.cumsum(u)))
        return self._count


def _law(length_probs) -> SpanLaw:
    return length_probs if isinstance(length_probs, SpanLaw) else SpanLaw(length_probs)


def check_action_probs(probs: Sequence[float], name: str = "probs") -> np.ndarray:
    """Validate (mask, random, keep) shares: three rates in [0, 1] summing to 1."""
    p = np.asarray(probs, dtype=np.float64)
    if p.shape != (3,) or not np.all(np.isfinite(p)) or np.any(p < 0) or np.any(p > 1):
        raise ValueError(f"{name} must be three rates in [0, 1] (mask, random, keep), got {probs!r}")
    if abs(p.sum() - 1.0) > 1e-6:
        raise ValueError(f"{name} must sum to 1 (mask + random + keep), got {probs!r} (sum {p.sum()})")
    return p


def check_word_masking(ngram_probs: Sequence[float], replace_probs: Sequence[float]) -> None:
    """Config check shared by the word n-gram objectives (MacBERT, SOP/NSP masking)."""
    try:
        ngram_length_probs(ngram_probs)
    except ValueError as e:
        raise ValueError(f"ngram_probs: {e}") from e
    check_action_probs(replace_probs, "replace_probs")


# ------------------------------------------------------------------------------------------
# Span choice
# ------------------------------------------------------------------------------------------


class SpanSet:
    """Chosen spans of a [B, W] grid in row-major order: span ``i`` covers the flat
    positions ``[start[i], end[i])`` (flat = row * W + column), spans sorted by start."""

    def __init__(self, shape: tuple[int, int], start: np.ndarray, end: np.ndarray):
        self.shape = (int(shape[0]), int(shape[1]))
        self.start = np.asarray(start, dtype=np.int64)
        self.end = np.asarray(end, dtype=np.int64)

    def __len__(self) -> int:
        return int(self.start.size)

    @property
    def lengths(self) -> np.ndarray:
        return self.end - self.start

    @property
    def rows(self) -> np.ndarray:
        return self.start // max(self.shape[1], 1)

    def positions(self) -> tuple[np.ndarray, np.ndarray]:
        """``(pos, span)``: flat position of every chosen token, ascending, and the
        index of the span holding it."""
        ln = self.lengths
        total = int(ln.sum())
        if total == ln.size:                              # single-token spans
            return self.start, np.arange(total)
        span = np.arange(len(self)).repeat(ln)
        pos = np.arange(total, dtype=np.int64)
        pos += (self.start - (ln.cumsum() - ln)).repeat(ln)
        return pos, span

    def span_id(self) -> np.ndarray:
        """Dense int32 [B, W]: -1 where unchosen, else the span's index within its row
        (left to right)."""
        B, W = self.shape
        out = np.full(B * W, -1, np.int32)
        if len(self):
            first_of_row = np.searchsorted(self.start, self.rows * W)
            local = (np.arange(len(self)) - first_of_row).astype(np.int32)
            pos, span = self.positions()
            out[pos] = local[span]
        return out.reshape(B, W)


def _row_budget(value, rows: int, name: str) -> np.ndarray:
    b = np.asarray(value, dtype=np.float64)
    if b.ndim == 0:
        b = np.full(rows, float(b))
    elif b.shape != (rows,):
        raise ValueError(f"{name} must be a scalar or one value per row ({rows}), got shape {np.shape(value)}")
    if not (b.min(initial=0.0) >= 0 and b.max(initial=0.0) < np.inf):   # NaN fails both
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    return b


def _no_spans(B: int, W: int) -> SpanSet:
    return SpanSet((B, W), np.zeros(0, np.int64), np.zeros(0, np.int64))


def effective_word_starts(word_start: np.ndarray, *, lengths: np.ndarray | None = None,
                          eligible: np.ndarray | None = None) -> np.ndarray:
    """Word starts as :func:`choose_spans` sees them ([B, W]): column 0 of a row (if the row
    has a token), no start past ``lengths``, and with ``eligible`` only eligible tokens plus
    the first token of every eligible run."""
    if eligible is not None:
        start = eligible & word_start
        start[:, 0] = eligible[:, 0]
        start[:, 1:] |= eligible[:, 1:] & ~eligible[:, :-1]       # first eligible token after a gap
        return start
    W = word_start.shape[1]
    if lengths is None or lengths.min(initial=W) >= W:
        start = word_start.copy()
        if W:
            start[:, 0] = True
        return start
    start = word_start & before(lengths, W)
    start[:, 0] = lengths > 0
    return start


# counters of one choice's draws at ``_SITE_SPANS``: 0 the threshold, 1 + j the length of span j,
# _GAPS + j the j-th gap of the placement (a row never takes _GAPS spans)
_GAPS = 1 << 30


def choose_spans(
    streams: RowStreams,
    word_start: np.ndarray,
    *,
    length_probs: Sequence[float] | np.ndarray | SpanLaw = (1.0,),
    budget_tokens=None,
    budget_words=None,
    word_share: float | None = None,
    eligible: np.ndarray | None = None,
    lengths: np.ndarray | None = None,
    width: int | None = None,
) -> SpanSet:
    """Pick non-overlapping whole-word spans of ``word_start`` ([B, W], or [W] for one
    row); row b draws from ``streams`` row b. Returns a :class:`SpanSet` over [B, W].
    ``word_start=None`` (with ``width=W``) is token-level masking: every token a word.

    ``length_probs[k-1]`` = P(span of k words) (or a :class:`SpanLaw`). Exactly one
    budget: ``budget_words`` (words wanted per row), ``word_share`` (that share of
    each row's words) or ``budget_tokens`` (tokens wanted, converted at the row's
    tokens per word), a scalar or one float per row, met in expectation and capped
    by what the row holds. ``eligible`` (bool, same
    shape) marks tokens that may be chosen (default: all); ``lengths`` (int per row)
    is the fast way to say "only the first ``lengths[b]`` tokens of row b". Give at
    most one of the two. ``word_start`` all True means token-level masking too.
    """
    if word_start is None:
        if width is None:
            raise ValueError("choose_spans: word_start=None (token level) needs width=")
        B, W = len(streams), int(width)
        ws = None
    else:
        ws = np.asarray(word_start, dtype=bool)
        if ws.ndim == 1:
            ws = ws[None]
        if ws.ndim != 2:
            raise ValueError(f"word_start must be 1-D [W] or 2-D [B, W], got shape {ws.shape}")
        B, W = ws.shape
    if len(streams) != B:
        raise ValueError(f"choose_spans: {B} rows but {len(streams)} streams")
    given = {k: v for k, v in (("budget_tokens", budget_tokens), ("budget_words", budget_words),
                                ("word_share", word_share)) if v is not None}
    if len(given) != 1:
        raise ValueError("give exactly one of budget_tokens, budget_words or word_share")
    (budget_kind, budget_value), = given.items()
    budget = _row_budget(budget_value, B, budget_kind)
    law = _law(length_probs)
    el = None
    if eligible is not None:
        el = np.asarray(eligible, dtype=bool)
        el = el[None] if el.ndim == 1 else el
        if el.shape != (B, W):
            raise ValueError(f"eligible shape {el.shape} differs from word_start shape {(B, W)}")
        if lengths is not None:
            raise ValueError("give at most one of eligible or lengths")
    row_len = None
    if lengths is not None:
        row_len = np.asarray(lengths, dtype=np.int64)
        if row_len.ndim == 0:
            row_len = np.full(B, int(row_len))
        elif row_len.shape != (B,):
            raise ValueError(f"lengths must be a scalar or one int per row ({B}), got shape {np.shape(lengths)}")
        if row_len.min(initial=0) < 0 or row_len.max(initial=0) > W:
            raise ValueError(f"lengths must lie in [0, {W}], got {lengths!r}")
    if B * W == 0:
        return _no_spans(B, W)

    # --- words ---------------------------------------------------------------------------
    token_mode = el is None and (ws is None or bool(ws[:, 1:].all()))
    if token_mode:                                        # word = token: no lookups needed
        n_words = row_len if row_len is not None else np.full(B, W, np.int64)
        n_tok = n_words
    else:
        if ws is None:
            ws = np.ones((B, W), bool)
        start = effective_word_starts(ws, lengths=row_len, eligible=el)
        if el is None:
            w_tok = start.ravel().nonzero()[0]             # token position of each word
            n_tok = row_len if row_len is not None else np.full(B, W, np.int64)
        else:
            b_pos = (start | ~el).ravel().nonzero()[0]
            is_start = start.ravel()[b_pos]
            w_tok = b_pos[is_start]
            w_end = np.concatenate((b_pos[1:], [B * W]))[is_start]   # a word also ends at an ineligible token
            n_tok = np.count_nonzero(el, axis=1)
        edges = w_tok.searchsorted(np.arange(B + 1) * W)
        n_words = edges[1:] - edges[:-1]
    if budget_kind == "budget_tokens":
        budget = budget * n_words / np.maximum(n_tok, 1)
    elif budget_kind == "word_share":
        budget = budget * n_words
    budget = np.minimum(budget, n_words)

    # --- 1. thresholds and lengths: span j is taken while the words before it are below T ----
    # T is j_b or j_b + 1 (E[spans taken | T] brackets the spans wanted). A row takes at most
    # T spans, about T / mean: its first m lengths (and m + 1 gaps) are drawn in one hash pass,
    # and the rare row that takes all m without reaching T is drawn again with more
    target = budget * (1.0 / law.mean)
    c = law.expected_spans(float(target.max()))
    j = c.searchsorted(target, side="right") - 1
    frac = (target - c[j]) / (c[j + 1] - c[j])
    J = int(j.max()) + 1                                  # the most spans any row can take
    K = law.size
    M = J if K == 1 else min(J, int(np.ceil(1.5 * J / law.mean)) + K + 2)
    while True:
        u = streams.uniform(_SITE_SPANS, _counters(M, K > 1))
        T = j + (u[:, 0] < frac)
        if K == 1:                                        # one word each: T spans, as many as fit
            k = np.minimum(T, n_words)
            cols = np.arange(M)
            valid = cols < k[:, None]
            span_w = valid.astype(np.int64)
            before = np.minimum(cols, n_words[:, None])   # words before span j
            used = k
            break
        span_w = law.cdf.searchsorted(u[:, 1:1 + M], side="right") + 1
        cum = span_w.cumsum(axis=1)
        if M == J or not (cum[:, -1] < T).any():
            span_w[(cum - span_w) >= T[:, None]] = 0      # not taken: the words before it reach T
            cum = np.minimum(span_w.cumsum(axis=1), n_words[:, None])   # a row too small cuts the overflow
            span_w = cum.copy()
            span_w[:, 1:] -= cum[:, :-1]
            before = cum - span_w
            k = np.count_nonzero(span_w, axis=1)
            valid = span_w > 0                            # taken spans are the leading ones
            used = cum[:, -1]
            break
        M = J                                             # some row needs more lengths: all it may
    if not k.any():
        return _no_spans(B, W)

    # --- 2. placement (stars and bars) ----------------------------------------------------
    free = n_words - used
    gam = (-np.log1p(-u[:, -(M + 1):])).cumsum(axis=1)
    scale = (free + 1) / gam[np.arange(B), k]
    free_before = np.minimum(np.floor(gam[:, :M] * scale[:, None]), free[:, None]).astype(np.int64)
    row = np.arange(B).repeat(k)                          # the taken spans, row-major, left to right
    first = free_before[valid] + before[valid]            # local index of each span's first word
    width_w = span_w[valid]
    if token_mode:
        tok_lo = row * W + first
        return SpanSet((B, W), tok_lo, tok_lo + width_w)
    g_first = edges[row] + first
    g_last = g_first + width_w - 1                        # placement keeps spans in their row
    tok_lo = w_tok[g_first]
    if el is None:                                        # a word ends where the next one starts
        tok_hi = np.minimum(np.concatenate((w_tok, [B * W]))[g_last + 1],
                            row * W + (row_len[row] if row_len is not None else W))
    else:                                                 # cut at the first ineligible token after the start
        inel = np.concatenate(((~el).ravel().nonzero()[0], [B * W]))
        run_end = np.minimum(inel[inel.searchsorted(tok_lo)], (row + 1) * W)
        tok_hi = w_end[np.minimum(g_last, w_tok.searchsorted(run_end) - 1)]
    return SpanSet((B, W), tok_lo, tok_hi)


@functools.lru_cache(maxsize=4096)
def _counters(m: int, lengths: bool) -> np.ndarray:
    """Counters at ``_SITE_SPANS`` for m spans: the threshold, m lengths (if drawn), m + 1 gaps."""
    return np.concatenate((np.arange(1 + (m if lengths else 0)), _GAPS + np.arange(m + 1)))


# ------------------------------------------------------------------------------------------
# 80/10/10
# ------------------------------------------------------------------------------------------


class Corruption:
    """BERT's corruption with (mask, random, keep) shares ``probs``, thresholds computed once.

    Called on the chosen positions of a [B, S] token grid: each becomes [MASK], a
    uniform regular id in ``[low, high)`` or stays, drawn once per token (at its
    column) or once per span (at the span's first column) from the row's stream."""

    __slots__ = ("p_mask", "p_mask_random", "per_span", "mask_id", "low", "high")

    def __init__(self, probs, *, per_span: bool, mask_id: int, low: int, high: int):
        p = check_action_probs(probs)
        if not int(low) < int(high):
            raise ValueError(f"random replacement range [low={low}, high={high}) is empty")
        self.p_mask = float(p[0])
        self.p_mask_random = float(p[0] + p[1])
        self.per_span = bool(per_span)
        self.mask_id, self.low, self.high = int(mask_id), int(low), int(high)

    @classmethod
    def of(cls, config, special, vocab_size: int) -> "Corruption":
        """From a config with ``replace_probs`` and ``per_span``: [MASK] and regular ids of ``special``."""
        return cls(config.replace_probs, per_span=config.per_span, mask_id=special.mask, low=special.first_regular,
                   high=vocab_size)

    def __call__(self, streams: RowStreams, tokens: np.ndarray, pos: np.ndarray, span: np.ndarray,
                 span_start: np.ndarray) -> None:
        """In place on ``tokens`` [B, S] at the chosen flat positions ``pos`` (``span``: each
        one's span, an index into ``span_start``, the flat first position of each span)."""
        width = tokens.shape[1]
        if self.per_span:                      # the span's draw decides, each random token draws its id
            sr, sc = np.divmod(span_start, width)
            u = streams.uniform_at(_SITE_SPAN_ACTION, sr, sc)[span]
            ids = None
        else:                                  # one word per token: high half the action, low half the id
            r, c = np.divmod(pos, width)
            u, ids = streams.split_at(_SITE_ACTION, r, c, self.low, self.high)
        rnd = u < self.p_mask_random
        masked = u < self.p_mask
        flat = tokens.reshape(-1)
        flat[pos[masked]] = self.mask_id
        rnd &= ~masked
        if ids is None:
            r, c = np.divmod(pos[rnd], width)
            flat[pos[rnd]] = streams.integers_at(_SITE_ACTION, r, c, self.low, self.high)
        else:
            flat[pos[rnd]] = ids[rnd]
