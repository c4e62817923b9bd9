"""Shared masking primitives: whole-word span choice and BERT's 80/10/10 corruption.

Every masked-LM objective here (BERT MLM, whole-word, n-gram, SpanBERT, UniLM
cloze, MacBERT) is "choose spans of whole words, then corrupt them". The two
steps live here, vectorised over a batch ``[B, S]`` (a 1-D input is one row).

Span choice (:func:`choose_span_set`, dense form :func:`choose_spans`):

1. draw i.i.d. span lengths (in words) from ``length_probs``; when a span's
   token cost is only known after placement (whole words, token budget), draw a
   fixed number of spans covering about ``overfill`` x the budget;
2. place them without overlap, uniformly at random: the free words are cut into
   ``k + 1`` gaps by scaled uniform order statistics (stars and bars), so no
   candidate is ever rejected and long spans are not discriminated against;
3. visit the spans (in a random order when overfilled) and stop at the first one
   that reaches ``budget - E[overshoot]``, that span included (whether to go on
   depends only on the spans already taken, so by Wald's identity the kept
   spans keep the length law and the expected masked amount is the budget). Short rows,
   where that asymptotic is poor, take every span that fits plus the crossing
   one with probability ``(budget - before) / its cost`` instead.

Budgets are therefore met in expectation (fractional budgets too), with a
per-row spread of a couple of tokens. Rows are processed in cache-sized blocks;
a single row (a per-sample call) takes :func:`row_spans`, a 1-D path with the
same draws and spans and a fraction of the fixed per-call cost.
As for any process of non-overlapping spans, the first and last words of a row
are covered less often than the middle ones when spans are longer than a word.

Spans start at word starts and cover whole words (position 0 of a row always
starts a word); two spans may touch. Tokens outside ``eligible``
(e.g. [CLS], [SEP], PAD) are never chosen; a span that would run over an
ineligible token is cut there, and an ineligible token inside a word splits
that word. A span longer than the row's number of eligible words is cut to it.

Actions (:func:`bert_actions`) code what happened to each position:
``ACTION_NONE`` (not a target), ``ACTION_MASK`` ([MASK]), ``ACTION_RANDOM``
(random regular token), ``ACTION_KEEP`` (original token, still a target).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

ACTION_NONE = 0
ACTION_MASK = 1
ACTION_RANDOM = 2
ACTION_KEEP = 3

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


# ------------------------------------------------------------------------------------------
# Words
# ------------------------------------------------------------------------------------------


def word_spans(word_start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Word boundaries in token positions of a 1-D ``word_start``: word ``w`` covers
    tokens ``[starts[w], ends[w])``. Position 0 always starts a word."""
    ws = np.asarray(word_start, dtype=bool)
    if ws.ndim != 1:
        raise ValueError(f"word_start must be 1-D, got shape {ws.shape}")
    n = ws.size
    if n == 0:
        return np.zeros(0, np.int32), np.zeros(0, np.int32)
    starts = np.flatnonzero(ws)
    if starts.size == 0 or starts[0] != 0:
        starts = np.concatenate(([0], starts))
    ends = np.concatenate((starts[1:], [n]))
    return starts.astype(np.int32), ends.astype(np.int32)


def word_ids(word_start: np.ndarray) -> np.ndarray:
    """Per token, the index of its word (position 0 always starts word 0)."""
    ws = np.asarray(word_start, dtype=bool).copy()
    if ws.size:
        ws[..., 0] = True
    return (np.cumsum(ws, axis=-1) - 1).astype(np.int32)


# ------------------------------------------------------------------------------------------
# Span choice
# ------------------------------------------------------------------------------------------


def _as_rows(a: np.ndarray, name: str, dtype) -> np.ndarray:
    a = np.asarray(a, dtype=dtype)
    if a.ndim not in (1, 2):
        raise ValueError(f"{name} must be 1-D [S] or 2-D [B, S], got shape {a.shape}")
    return a[None] if a.ndim == 1 else a


def _row_budget(value, rows: int, name: str) -> np.ndarray:
    try:
        b = np.broadcast_to(np.asarray(value, dtype=np.float64), (rows,)).copy()
    except ValueError:
        raise ValueError(f"{name} must be a scalar or one value per row ({rows}), got shape {np.shape(value)}") from None
    if not np.all(np.isfinite(b)) or np.any(b < 0):
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    return b


def _sample_lengths(rng: np.random.Generator, cdf: np.ndarray, shape) -> np.ndarray:
    if cdf.size == 1:
        return np.ones(shape, np.int64)
    u = rng.random(shape)
    return np.searchsorted(cdf, u, side="right").astype(np.int64) + 1


def _take_prefix(rng, cum: np.ndarray, step: np.ndarray, budget: np.ndarray) -> np.ndarray:
    """How many leading items (costs ``step`` >= 1, 0 = no item; running totals ``cum``;
    [B, M]) to take so that the expected total cost equals ``budget``, without skewing the
    cost distribution of the items taken.

    Any rule that decides "stop before item n" without looking at item n keeps the taken
    items' law intact (Wald's identity: E[total] = E[cost] * E[count]). So stop at the
    first item reaching ``budget - E[overshoot]``, where the overshoot of an integer
    renewal process averages E[C(C-1)] / (2 E[C]) (estimated from the row's items), the
    threshold rounded at random to keep its mean. Where the budget is small next to the
    overshoot (short rows) that asymptotic fails; those rows instead take every item that
    fits plus the crossing one with probability (budget - before) / its cost, which also
    meets the budget in expectation (at a slight bias toward short items)."""
    B, M = cum.shape
    rows = np.arange(B)
    has = step > 0
    n_items = np.count_nonzero(has, axis=1)
    excess = (step * (step - 1)).sum(axis=1) / np.maximum(2 * cum[:, -1], 1)
    thresh = budget - excess
    u = rng.random((2, B))
    t_int = np.floor(thresh) + (u[0] < thresh - np.floor(thresh))
    n_wald = np.minimum(np.count_nonzero(cum < t_int[:, None], axis=1) + 1, n_items)
    wald = (budget >= 4 * excess) & (budget >= 8)
    # crossing rule
    n_full = np.minimum(np.count_nonzero(cum <= budget[:, None], axis=1), n_items)
    before = np.where(n_full > 0, cum[rows, np.maximum(n_full - 1, 0)], 0)
    cross = step[rows, np.minimum(n_full, M - 1)]
    take = (n_full < n_items) & (u[1] * np.maximum(cross, 1) < budget - before)
    everything = budget >= cum[:, -1]              # the budget covers every item: take them all
    return np.where(everything, n_items, np.where(wald, n_wald, n_full + take))


def _fill(lengths: np.ndarray, n_words: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cap drawn lengths [B, M] at each row's capacity: the span that overflows the row
    is cut to the words left, later ones get 0. Returns (lengths, cumsum, n fitting)."""
    cum = np.minimum(np.cumsum(lengths, axis=1), n_words[:, None])
    capped = np.diff(cum, axis=1, prepend=0)
    return capped, cum, np.count_nonzero(capped, axis=1)


def _place(rng, lengths: np.ndarray, cum: np.ndarray, k: np.ndarray, n_words: np.ndarray) -> np.ndarray:
    """Local word index of the first word of each of the first ``k`` spans of every row,
    non-overlapping, in draw order = left-to-right order. The free words are cut into
    k + 1 gaps by uniform order statistics (normalised cumulative exponentials)."""
    B, M = lengths.shape
    rows = np.arange(B)
    used = np.where(k > 0, cum[rows, np.maximum(k - 1, 0)], 0)
    free = (n_words - used).astype(np.float64)
    gam = np.cumsum(rng.standard_exponential((B, M + 1)), axis=1)
    scale = (free + 1) / gam[rows, k]
    free_before = np.minimum(np.floor(gam[:, :M] * scale[:, None]), free[:, None])
    return free_before.astype(np.int64) + (cum - lengths)


class SpanSet:
    """Chosen spans of a [B, S] grid in row-major order: span ``i`` covers the flat
    positions ``[start[i], end[i])`` (flat = row * S + column), spans sorted by start."""

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
        span = np.repeat(np.arange(len(self)), ln)
        offs = np.cumsum(ln) - ln
        pos = np.arange(total, dtype=np.int64) + np.repeat(self.start - offs, ln)
        return pos, span

    def span_id(self) -> np.ndarray:
        """Dense int32 [B, S]: -1 where unchosen, else the span's index within its row
        (left to right)."""
        B, S = self.shape
        out = np.full(B * S, -1, np.int32)
        if len(self):
            first_of_row = np.searchsorted(self.start, self.rows * S)
            local = (np.arange(len(self)) - first_of_row).astype(np.int32)
            pos, span = self.positions()
            out[pos] = local[span]
        return out.reshape(B, S)


def choose_spans(rng: np.random.Generator, word_start: np.ndarray, **kwargs) -> np.ndarray:
    """Pick non-overlapping whole-word spans; return ``span_id`` int32 with the shape of
    ``word_start`` ([S] or [B, S]): -1 where unmasked, else the span's index within its
    row, numbered left to right. Keywords as for :func:`choose_span_set`."""
    span_id = choose_span_set(rng, word_start, **kwargs).span_id()
    return span_id[0] if np.ndim(word_start) == 1 else span_id


CHUNK_TOKENS = 1 << 16   # rows are processed in blocks of about this many tokens (cache-sized)


def rows_per_chunk(row_width: int) -> int:
    """Rows per block so a block's temporaries stay in cache (much faster than one pass)."""
    return max(1, CHUNK_TOKENS // max(int(row_width), 1))


def choose_span_set(
    rng: np.random.Generator,
    word_start: np.ndarray,
    *,
    length_probs: Sequence[float] | np.ndarray = (1.0,),
    budget_tokens=None,
    budget_words=None,
    eligible: np.ndarray | None = None,
    lengths: np.ndarray | None = None,
    overfill: float = 1.5,
) -> SpanSet:
    """Pick non-overlapping whole-word spans of ``word_start`` ([S] or [B, S]; a 1-D
    input is one row) and return them as a :class:`SpanSet` over [B, S].

    ``length_probs[k-1]`` = P(span of k words). Exactly one budget: ``budget_tokens``
    (masked tokens wanted per row) or ``budget_words`` (masked words wanted), a scalar
    or one float per row; budgets are met in expectation (fractional ones too), capped
    by what the row holds. ``eligible`` (bool, same shape) marks tokens that may be
    masked (default: all); ``lengths`` (int per row) is the fast way to say "only the
    first ``lengths[b]`` tokens of row b" (a padded batch). Give at most one of the two.
    ``word_start`` all True means token-level masking (each token is a word).
    """
    ws = _as_rows(word_start, "word_start", bool)
    B, S = ws.shape
    if (budget_tokens is None) == (budget_words is None):
        raise ValueError("give exactly one of budget_tokens or budget_words")
    step = rows_per_chunk(S)
    if B > step:   # blocks of rows, same draws for any caller-side split at block bounds
        budget_key = "budget_tokens" if budget_words is None else "budget_words"
        budget_all = _row_budget(budget_tokens if budget_words is None else budget_words, B, budget_key)
        el_all = None if eligible is None else _as_rows(eligible, "eligible", bool)
        if el_all is not None and el_all.shape != ws.shape:
            raise ValueError(f"eligible shape {el_all.shape} differs from word_start shape {ws.shape}")
        try:
            len_all = None if lengths is None else np.broadcast_to(np.asarray(lengths), (B,))
        except ValueError:
            raise ValueError(f"lengths must be a scalar or one int per row ({B}), got shape {np.shape(lengths)}") from None
        parts = []
        for r0 in range(0, B, step):
            r1 = min(B, r0 + step)
            part = choose_span_set(
                rng, ws[r0:r1], length_probs=length_probs, overfill=overfill,
                eligible=None if el_all is None else el_all[r0:r1],
                lengths=None if len_all is None else len_all[r0:r1], **{budget_key: budget_all[r0:r1]})
            parts.append((part.start + r0 * S, part.end + r0 * S))
        return SpanSet((B, S), np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    if eligible is not None:
        el = _as_rows(eligible, "eligible", bool)
        if el.shape != ws.shape:
            raise ValueError(f"eligible shape {el.shape} differs from word_start shape {ws.shape}")
        if lengths is not None:
            raise ValueError("give at most one of eligible or lengths")
    row_len = None
    if lengths is not None:
        try:
            row_len = np.broadcast_to(np.asarray(lengths, dtype=np.int64), (B,))
        except ValueError:
            raise ValueError(f"lengths must be a scalar or one int per row ({B}), got shape {np.shape(lengths)}") from None
        if np.any(row_len < 0) or np.any(row_len > S):
            raise ValueError(f"lengths must lie in [0, {S}], got {lengths!r}")
    by_tokens = budget_tokens is not None
    budget = _row_budget(budget_tokens if by_tokens else budget_words, B,
                         "budget_tokens" if by_tokens else "budget_words")
    law = length_probs if isinstance(length_probs, SpanLaw) else SpanLaw(length_probs)
    K = law.size
    if not overfill >= 1.0:
        raise ValueError(f"overfill must be >= 1, got {overfill!r}")
    if B == 1 and ONE_ROW_FAST_PATH:
        lo, hi = row_spans(rng, ws[0], float(budget[0]), law, by_tokens=by_tokens,
                           eligible=None if eligible is None else el[0],
                           row_len=None if row_len is None else int(row_len[0]), overfill=overfill)
        return SpanSet((1, S), lo, hi)

    none = SpanSet((B, S), np.zeros(0, np.int64), np.zeros(0, np.int64))
    if B * S == 0:
        return none
    rows = np.arange(B)

    # --- words -----------------------------------------------------------------------------
    token_mode = eligible is None and bool(ws[:, 1:].all())
    w_tok = w_end = None
    if token_mode:                                            # word = token: no lookups needed
        n_words = row_len if row_len is not None else np.full(B, S, np.int64)
    else:
        if eligible is None:
            start = ws.copy()
            start[:, 0] = True
            if row_len is not None and np.any(row_len < S):
                start &= np.arange(S)[None, :] < row_len[:, None]
        else:
            start = el & ws
            start[:, 0] = el[:, 0]
            start[:, 1:] |= el[:, 1:] & ~el[:, :-1]           # first eligible token after a gap
        n_words = np.count_nonzero(start, axis=1)
        if eligible is None:
            w_tok = np.flatnonzero(start.ravel())              # token position of each word
        else:                                                  # a word also ends at an ineligible token
            b_pos = np.append(np.flatnonzero((start | ~el).ravel()), B * S)
            is_start = start.ravel()[b_pos[:-1]]
            w_tok = b_pos[:-1][is_start]
            w_end = b_pos[1:][is_start]
    n_words = np.asarray(n_words, dtype=np.int64)
    w_off = np.cumsum(n_words) - n_words
    if not n_words.any():
        return none
    if by_tokens:
        if token_mode or row_len is not None:
            n_tok = n_words if token_mode else row_len
        else:
            n_tok = np.count_nonzero(el, axis=1) if eligible is not None else np.full(B, S)
    cdf, mean_w = law.cdf, law.mean

    # --- 1. lengths and how many spans to place -------------------------------------------
    # cost known before placement (token mode, or words without cuts): place just enough
    direct = token_mode or (not by_tokens and eligible is None)
    if direct:
        bmax = float(budget.max())
        M = int(min(np.ceil(bmax) + 1, np.ceil(1.5 * bmax / mean_w) + K + 2, n_words.max()))
        if M == 0:
            return none
        span_w, cum, fits = _fill(_sample_lengths(rng, cdf, (B, M)), n_words)
        k = np.minimum(_take_prefix(rng, cum, span_w, budget), fits)
    else:
        words_wanted = budget * n_words / np.maximum(n_tok, 1) if by_tokens else budget
        target = np.minimum(np.ceil(words_wanted * overfill).astype(np.int64) + K, n_words)
        # a span count fixed before the lengths are seen keeps the placed lengths' law intact
        n_spans = np.minimum(np.ceil(target / mean_w).astype(np.int64) + 2, target)
        M = int(n_spans.max())
        if M == 0:
            return none
        span_w, cum, fits = _fill(_sample_lengths(rng, cdf, (B, M)), n_words)
        k = np.minimum(n_spans, fits)
    valid = np.arange(M)[None, :] < k[:, None]

    # --- 2. placement ----------------------------------------------------------------------
    first = np.where(valid, _place(rng, span_w, cum, k, n_words), 0)
    if token_mode:
        tok_lo = rows[:, None] * S + first
        tok_hi = tok_lo + span_w
        cost = span_w
    else:
        g_first = np.minimum(w_off[:, None] + first, w_tok.size - 1)
        g_last = g_first + span_w - 1                          # placement keeps spans in their row
        tok_lo = w_tok[g_first]
        if eligible is not None:
            # cut a span at the first ineligible token (or row end) after its start
            inel = np.append(np.flatnonzero(~el.ravel()), B * S)
            run_end = np.minimum(inel[np.searchsorted(inel, tok_lo)], (tok_lo // S + 1) * S)
            g_last = np.minimum(g_last, np.searchsorted(w_tok, run_end) - 1)
        if eligible is None:
            # a word ends where the next one starts, or at its row's end
            nxt = g_last + 1
            tok_hi = np.where(nxt < w_tok.size, w_tok[np.minimum(nxt, w_tok.size - 1)], B * S)
            row_end = rows * S + (row_len if row_len is not None else S)
            tok_hi = np.minimum(tok_hi, row_end[:, None])
        else:
            tok_hi = w_end[g_last]
        cost = (tok_hi - tok_lo) if by_tokens else (g_last - g_first + 1)

    # --- 3. overfilled: visit in random order, keep a prefix meeting the budget -----------
    if direct:
        sel = valid
    else:
        keys = rng.random((B, M))
        keys[~valid] = 2.0                                     # unplaced spans sort last
        flat_order = (np.argsort(keys, axis=1) + (rows * M)[:, None]).ravel()
        cost = np.where(valid, cost, 0)
        c_sorted = cost.ravel()[flat_order].reshape(B, M)
        n_take = _take_prefix(rng, np.cumsum(c_sorted, axis=1), c_sorted, budget)
        sel = np.empty(B * M, bool)
        sel[flat_order] = (np.arange(M)[None, :] < n_take[:, None]).ravel()
        sel = sel.reshape(B, M)

    # left-to-right within a row and rows in order: row-major boolean indexing keeps it
    return SpanSet((B, S), tok_lo[sel], tok_hi[sel])


# ------------------------------------------------------------------------------------------
# One row: the per-sample path
# ------------------------------------------------------------------------------------------

# Per-sample transforms and choose_span_set on a single row take a dedicated 1-D path
# (the vectorised code's fixed cost is ~100 small numpy calls). It draws exactly the same
# random numbers and returns exactly the same spans as the vectorised code on a batch of
# one; tests switch this off to compare the two.
ONE_ROW_FAST_PATH = True

_NO_SPANS = np.zeros(0, np.int64)


class SpanLaw:
    """A span-length law's per-config constants (normalised probabilities, CDF, mean),
    computed once; pass it as ``length_probs`` to skip re-validating it per call."""

    __slots__ = ("probs", "cdf", "size", "mean")

    def __init__(self, length_probs: Sequence[float] | np.ndarray):
        if isinstance(length_probs, SpanLaw):
            length_probs = length_probs.probs
        self.probs = ngram_length_probs(length_probs)
        self.cdf = np.cumsum(self.probs)
        self.size = int(self.probs.size)
        self.mean = expected_length(self.probs)


def _take_prefix_row(rng, cum: np.ndarray, step: np.ndarray, budget: float, n_items: int) -> int:
    """:func:`_take_prefix` on one row (``cum`` non-decreasing, so counts are searches;
    ``n_items`` = how many of ``step`` are > 0, all leading)."""
    u0, u1 = rng.random(2).tolist()
    if n_items == 0:
        return 0
    total = int(cum[-1])
    excess = (int(step @ step) - total) / max(2 * total, 1)     # sum of C (C - 1); total = sum of C
    if budget >= total:                              # the budget covers every item
        return n_items
    if budget >= 4 * excess and budget >= 8:         # Wald rule
        thresh = budget - excess
        fl = math.floor(thresh)
        t_int = fl + (u0 < thresh - fl)
        return min(int(np.searchsorted(cum, t_int, "left")) + 1, n_items)
    n_full = min(int(np.searchsorted(cum, budget, "right")), n_items)   # crossing rule
    if n_full >= n_items:
        return n_full
    before = int(cum[n_full - 1]) if n_full > 0 else 0
    return n_full + bool(u1 * max(int(step[n_full]), 1) < budget - before)


def row_spans(
    rng: np.random.Generator,
    word_start: np.ndarray,
    budget: float,
    law: SpanLaw,
    *,
    by_tokens: bool = True,
    eligible: np.ndarray | None = None,
    row_len: int | None = None,
    token_mode: bool | None = None,
    overfill: float = 1.5,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`choose_span_set` for ONE row, unchecked: ``(start, end)`` int64 token
    positions of the chosen spans, left to right. ``word_start`` (bool [S]) and
    ``eligible`` (bool [S] or None) are 1-D; ``row_len`` as ``lengths``; ``token_mode``
    (every token a word) is derived from ``word_start`` unless given (callers that
    pass a shortened row give the full row's answer). Same draws and spans as the
    vectorised code on a batch of one."""
    S = word_start.size
    if S == 0:
        return _NO_SPANS, _NO_SPANS
    if token_mode is None:
        token_mode = eligible is None and bool(word_start[1:].all())
    K, mean_w = law.size, law.mean
    w_tok = w_end = None
    if token_mode:
        n_words = S if row_len is None else int(row_len)
        n_tok = n_words
    elif eligible is None:
        m = S if row_len is None else int(row_len)
        if m == 0:
            return _NO_SPANS, _NO_SPANS
        start = word_start[:m].copy()
        start[0] = True
        w_tok = np.flatnonzero(start)
        n_words, n_tok, S = w_tok.size, m, m
    else:
        start = eligible & word_start
        start[0] = eligible[0]
        start[1:] |= eligible[1:] & ~eligible[:-1]
        b_pos = np.flatnonzero(start | ~eligible)
        is_start = start[b_pos]
        w_tok = b_pos[is_start]
        w_end = np.append(b_pos[1:], S)[is_start]
        n_words = w_tok.size
        n_tok = int(np.count_nonzero(eligible))
    if n_words == 0:
        return _NO_SPANS, _NO_SPANS

    # --- 1. lengths and how many spans to place
    direct = token_mode or (not by_tokens and eligible is None)
    if direct:
        M = int(min(math.ceil(budget) + 1, math.ceil(1.5 * budget / mean_w) + K + 2, n_words))
    else:
        words_wanted = budget * n_words / max(n_tok, 1) if by_tokens else budget
        target = min(int(math.ceil(words_wanted * overfill)) + K, n_words)
        M = min(int(math.ceil(target / mean_w)) + 2, target)
    if M == 0:
        return _NO_SPANS, _NO_SPANS
    if K == 1:                                       # M <= n_words: every span fits
        cum = np.arange(1, M + 1, dtype=np.int64)
        span_w = np.ones(M, np.int64)
        fits = M
    else:
        cum = (law.cdf.searchsorted(rng.random(M), side="right") + 1).cumsum()
        np.minimum(cum, n_words, out=cum)
        span_w = cum.copy()
        span_w[1:] -= cum[:-1]
        fits = int(np.count_nonzero(span_w))
    k = min(_take_prefix_row(rng, cum, span_w, budget, fits), fits) if direct else min(M, fits)

    # --- 2. placement of the first k (stars and bars)
    used = int(cum[k - 1]) if k > 0 else 0
    free = float(n_words - used)
    gam = rng.standard_exponential(M + 1).cumsum()
    scale = (free + 1) / gam[k]
    sw = span_w[:k]
    x = gam[:k]
    x *= scale
    np.floor(x, out=x)
    np.minimum(x, free, out=x)
    first = x.astype(np.int64)
    first += cum[:k]
    first -= sw
    if token_mode:
        lo, hi = first, first + sw
        cost = sw
    else:
        g_first = first                              # placement keeps first + sw <= n_words
        g_last = g_first + sw - 1
        lo = w_tok[g_first]
        if eligible is not None:
            inel = np.append(np.flatnonzero(~eligible), S)
            run_end = np.minimum(inel[np.searchsorted(inel, lo)], S)
            g_last = np.minimum(g_last, np.searchsorted(w_tok, run_end) - 1)
            hi = w_end[g_last]
        else:
            hi = np.append(w_tok, S)[g_last + 1]     # a word ends where the next one starts
        cost = (hi - lo) if by_tokens else (g_last - g_first + 1)
    if direct:
        return lo, hi

    # --- 3. overfilled: a random visiting order, keep a prefix meeting the budget
    keys = rng.random(M)
    if k == 0:
        rng.random(2)
        return _NO_SPANS, _NO_SPANS
    order = np.argsort(keys[:k])
    c_sorted = cost[order]
    n_take = _take_prefix_row(rng, c_sorted.cumsum(), c_sorted, budget, k)   # every placed span costs >= 1
    chosen = order[:n_take]
    chosen.sort()
    return lo[chosen], hi[chosen]


def row_positions(start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:meth:`SpanSet.positions` for one row's spans: ``(pos, span)``."""
    ln = end - start
    total = int(ln.sum())
    if total == ln.size:                             # single-token spans
        return start, np.arange(total)
    span = np.arange(ln.size).repeat(ln)
    shift = start - ln.cumsum()
    shift += ln
    pos = shift.repeat(ln)
    pos += np.arange(total, dtype=np.int64)
    return pos, span


class Corruption:
    """80/10/10 (``probs`` = mask, random, keep) with its thresholds computed once:
    :func:`draw_actions` + :func:`corrupt_positions` for one row, same draws."""

    __slots__ = ("p_mask", "p_mask_random", "per_span", "mask_id", "low", "high")

    def __init__(self, probs, *, per_span: bool, mask_id: int, low: int, high: int):
        p = check_action_probs(probs)
        if not int(low) < int(high):
            raise ValueError(f"random replacement range [low={low}, high={high}) is empty")
        self.p_mask = float(p[0])
        self.p_mask_random = float(p[0] + p[1])
        self.per_span = bool(per_span)
        self.mask_id, self.low, self.high = int(mask_id), int(low), int(high)

    def __call__(self, rng: np.random.Generator, tokens: np.ndarray, pos: np.ndarray, span: np.ndarray,
                 n_spans: int) -> None:
        """In place on 1-D ``tokens``: corrupt the chosen positions ``pos`` (span index ``span``)."""
        u = rng.random(n_spans)[span] if self.per_span else rng.random(span.size)
        tokens[pos[u < self.p_mask]] = self.mask_id
        rnd = pos[(u >= self.p_mask) & (u < self.p_mask_random)]
        if rnd.size:
            tokens[rnd] = rng.integers(self.low, self.high, size=rnd.size, dtype=np.int64)


# ------------------------------------------------------------------------------------------
# 80/10/10
# ------------------------------------------------------------------------------------------


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


def draw_actions(
    rng: np.random.Generator,
    span: np.ndarray,
    n_spans: int,
    *,
    probs: Sequence[float] = (0.8, 0.1, 0.1),
    per_span: bool = True,
) -> np.ndarray:
    """``ACTION_MASK`` / ``ACTION_RANDOM`` / ``ACTION_KEEP`` (int8) for chosen tokens
    given the index of their span (``span`` int [T], spans 0..n_spans-1), drawn with
    ``probs`` once per span (``per_span``) or once per token."""
    p = check_action_probs(probs)
    span = np.asarray(span)
    u = rng.random(int(n_spans))[span] if per_span else rng.random(span.shape)
    act = np.full(span.shape, ACTION_KEEP, np.int8)
    act[u < p[0] + p[1]] = ACTION_RANDOM
    act[u < p[0]] = ACTION_MASK
    return act


def corrupt_positions(
    rng: np.random.Generator,
    flat_tokens: np.ndarray,
    pos: np.ndarray,
    action: np.ndarray,
    *,
    mask_id: int,
    low: int,
    high: int,
) -> None:
    """In place: ``flat_tokens[pos]`` becomes [MASK] where ACTION_MASK and a uniform
    id in ``[low, high)`` (per token) where ACTION_RANDOM."""
    if not int(low) < int(high):
        raise ValueError(f"random replacement range [low={low}, high={high}) is empty")
    flat_tokens[pos[action == ACTION_MASK]] = mask_id
    rnd = pos[action == ACTION_RANDOM]
    if rnd.size:
        flat_tokens[rnd] = rng.integers(low, high, size=rnd.size, dtype=np.int64)


def bert_actions(
    rng: np.random.Generator,
    span_id: np.ndarray,
    *,
    probs: Sequence[float] = (0.8, 0.1, 0.1),
    per_span: bool = True,
) -> np.ndarray:
    """Per position an ``ACTION_*`` code (int8), dense form of :func:`draw_actions`.
    Positions with ``span_id < 0`` get ACTION_NONE; chosen ones MASK / RANDOM / KEEP
    with ``probs``, drawn once per span (SpanBERT, whole-word) or per token."""
    sid = np.asarray(span_id)
    rows = sid[None] if sid.ndim == 1 else sid
    B, S = rows.shape
    pos = np.flatnonzero(rows.ravel() >= 0)
    width = int(rows.max()) + 1 if pos.size else 1
    span = (pos // max(S, 1)) * width + rows.ravel()[pos]
    act = np.zeros(B * S, np.int8)
    act[pos] = draw_actions(rng, span, B * width, probs=probs, per_span=per_span)
    act = act.reshape(B, S)
    return act[0] if sid.ndim == 1 else act


def apply_actions(
    rng: np.random.Generator,
    tokens: np.ndarray,
    action: np.ndarray,
    *,
    mask_id: int,
    low: int,
    high: int,
) -> np.ndarray:
    """New tokens: [MASK] where ACTION_MASK, a uniform id in ``[low, high)`` per token
    where ACTION_RANDOM, the original elsewhere."""
    new = np.array(tokens, copy=True)
    act = np.asarray(action).ravel()
    pos = np.flatnonzero(act)
    corrupt_positions(rng, new.reshape(-1), pos, act[pos], mask_id=mask_id, low=low, high=high)
    return new


def bert_corrupt(
    rng: np.random.Generator,
    tokens: np.ndarray,
    span_id: np.ndarray,
    *,
    mask_id: int,
    low: int,
    high: int,
    probs: Sequence[float] = (0.8, 0.1, 0.1),
    per_span: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """BERT corruption of the chosen spans: ``(new_tokens, action)``; see
    :func:`bert_actions` and :func:`apply_actions`."""
    action = bert_actions(rng, span_id, probs=probs, per_span=per_span)
    return apply_actions(rng, tokens, action, mask_id=mask_id, low=low, high=high), action
