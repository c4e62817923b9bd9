"""Shared masking primitives: span choice and 80/10/10 (ptobj.objectives.masking)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ptobj.objectives import masking as m
from ptobj.objectives.streams import RowStreams

SETTINGS = settings(max_examples=40, deadline=None)


def streams(seed, rows):
    return RowStreams.for_rows(seed, 0, np.arange(rows))


def span_ids(seed, ws, **kw):
    """Dense span ids of ``choose_spans`` ([S] for a 1-D ``ws``), row b keyed (seed, 0, b)."""
    ws = np.asarray(ws, bool)
    out = m.choose_spans(streams(seed, 1 if ws.ndim == 1 else ws.shape[0]), ws, **kw).span_id()
    return out[0] if ws.ndim == 1 else out


NONE, MASK, RANDOM, KEEP = range(4)


def corrupt(seed, tokens, sid, probs=(0.8, 0.1, 0.1), per_span=True, low=16, high=30, mask_id=2):
    """Corruption of the spans of a dense ``sid`` ([B, S]): (new tokens, actions [B, S]), the
    actions read off the result (original ids must lie outside [low, high) to tell random from kept)."""
    tokens = np.atleast_2d(np.array(tokens, copy=True))
    sid = np.atleast_2d(sid)
    B, S = sid.shape
    chosen = sid.ravel() >= 0
    pos = np.flatnonzero(chosen)
    key = (pos // S) * (S + 1) + sid.ravel()[pos]
    uniq, span = np.unique(key, return_inverse=True)
    first = np.full(uniq.size, B * S, np.int64)
    np.minimum.at(first, span, pos)                  # each span's first position
    original = tokens.copy()
    m.Corruption(probs, per_span=per_span, mask_id=mask_id, low=low, high=high)(streams(seed, B), tokens, pos,
                                                                             span, first)
    act = np.where(tokens == mask_id, MASK, np.where(tokens == original, KEEP, RANDOM))
    return tokens, np.where(sid >= 0, act, NONE)


def words_of(ws):
    """Independent word split: list of (start, end) with position 0 a start."""
    ws = np.asarray(ws, bool).copy()
    ws[0] = True
    starts = [i for i in range(len(ws)) if ws[i]]
    return list(zip(starts, starts[1:] + [len(ws)]))


def spans_of(span_id):
    """Independent decode of a 1-D span_id: {id: (start, end)} requiring contiguity."""
    out = {}
    for k in sorted(set(span_id.tolist()) - {-1}):
        idx = np.flatnonzero(span_id == k)
        assert np.all(np.diff(idx) == 1), f"span {k} is not contiguous: {idx}"
        out[k] = (int(idx[0]), int(idx[-1]) + 1)
    return out


# ----------------------------------------------------------------------------- literals


def test_geometric_law_matches_spanbert():
    p = m.geometric_length_probs(0.2, 10)
    raw = np.array([0.2 * 0.8 ** (k - 1) for k in range(1, 11)])
    assert np.allclose(p, raw / raw.sum())
    assert abs(m.expected_length(p) - 3.8) < 0.01          # "mean 3.8" in the paper
    assert np.allclose(m.geometric_length_probs(1.0, 5), [1, 0, 0, 0, 0])


def test_full_budget_takes_every_word_literal():
    ws = np.array([1, 0, 1, 1, 0, 0, 1], bool)
    sid = span_ids(0, ws, length_probs=[1.0], budget_tokens=7)
    # all 4 words chosen, one span each, numbered left to right
    assert sid.tolist() == [0, 0, 1, 2, 2, 2, 3]


def test_zero_budget_chooses_nothing():
    ws = np.ones(50, bool)
    sid = span_ids(0, ws, budget_tokens=0)
    assert np.all(sid == -1)


def test_actions_literal_mask_everything():
    tokens = np.array([40, 41, 42, 43], np.int32)
    sid = np.array([-1, 0, 0, 1])
    new, act = corrupt(0, tokens, sid, probs=(1.0, 0.0, 0.0))
    assert new[0].tolist() == [40, 2, 2, 2]
    assert act[0].tolist() == [NONE, MASK, MASK, MASK]
    new, act = corrupt(0, tokens, sid, probs=(0.0, 0.0, 1.0))
    assert new[0].tolist() == [40, 41, 42, 43]
    assert act[0].tolist() == [NONE, KEEP, KEEP, KEEP]


# ----------------------------------------------------------------------------- properties


@st.composite
def grids(draw):
    B = draw(st.integers(1, 4))
    S = draw(st.integers(0, 60))
    seed = draw(st.integers(0, 2 ** 32 - 1))
    g = np.random.default_rng(seed)
    ws = g.random((B, S)) < draw(st.floats(0.2, 1.0))
    el = g.random((B, S)) < draw(st.floats(0.5, 1.0))
    K = draw(st.integers(1, 6))
    probs = g.random(K) + 0.01
    rate = draw(st.floats(0.0, 1.0))
    return ws, el, probs, rate, seed


@SETTINGS
@given(grids(), st.booleans(), st.booleans())
def test_spans_are_whole_eligible_words(grid, use_eligible, by_words):
    ws, el, probs, rate, seed = grid
    B, S = ws.shape
    eligible = el if use_eligible else None
    elig = el if use_eligible else np.ones_like(ws)
    budget = rate * (elig.sum(1) if not by_words else ws.sum(1) + 1)
    kw = {"budget_words": budget} if by_words else {"budget_tokens": budget}
    sid = span_ids(seed, ws, length_probs=probs, eligible=eligible, **kw)
    again = span_ids(seed, ws, length_probs=probs, eligible=eligible, **kw)
    assert sid.shape == (B, S) and sid.dtype == np.int32
    assert np.array_equal(sid, again), "span choice must be a pure function of (input, seed)"
    for b in range(B):
        assert not np.any((sid[b] >= 0) & ~elig[b]), "an ineligible token was chosen"
        # effective word starts: flagged, position 0, or first eligible after an ineligible one
        start = ws[b].copy()
        if S:
            start[0] = True
        start[1:] |= ~elig[b][:-1]
        spans = spans_of(sid[b])
        assert list(spans) == list(range(len(spans))), "ids must be 0..k-1"
        prev_end = -1
        for k, (s, e) in spans.items():
            assert s >= prev_end, "spans are numbered left to right and never overlap"
            prev_end = e
            assert start[s], f"span {k} starts mid-word at {s}"
            assert e == S or start[e] or not elig[b][e], f"span {k} ends mid-word at {e}"
            assert len(probs) >= 1 + sum(start[s + 1:e]), "span longer than the largest length"


@SETTINGS
@given(st.integers(0, 2 ** 32 - 1), st.integers(1, 5), st.integers(2, 80))
def test_spanset_views_agree(seed, B, S):
    g = np.random.default_rng(seed)
    ws = g.random((B, S)) < 0.6
    spans = m.choose_spans(streams(seed, B), ws, length_probs=[0.5, 0.3, 0.2], budget_tokens=0.4 * S)
    pos, span = spans.positions()
    dense = spans.span_id()
    assert np.array_equal(np.flatnonzero(dense.ravel() >= 0), pos)
    assert np.all(np.diff(spans.start) > 0)
    assert np.all(pos >= spans.start[span]) and np.all(pos < spans.end[span])


@SETTINGS
@given(st.integers(0, 2 ** 32 - 1), st.integers(1, 300))
def test_lengths_equals_prefix_eligibility(seed, B):
    """``lengths=`` is the fast spelling of a prefix ``eligible`` mask: same spans' law,
    and never a chosen token past the length."""
    g = np.random.default_rng(seed)
    S = 40
    ws = g.random((B, S)) < 0.7
    n = g.integers(0, S + 1, B)
    sid = span_ids(seed, ws, budget_tokens=0.3 * n, lengths=n)
    assert not np.any((sid >= 0) & (np.arange(S)[None, :] >= n[:, None]))


# ----------------------------------------------------------------------------- statistics

B_BIG, S_BIG = 2000, 510


@pytest.fixture(scope="module")
def big_words():
    g = np.random.default_rng(123)
    ws = g.random((B_BIG, S_BIG)) < 0.7
    ws[:, 0] = True
    return ws


def span_word_lengths(sid, ws):
    B, S = sid.shape
    chosen = sid >= 0
    key = (np.arange(B)[:, None] * S + sid)[chosen]
    words = np.bincount(key, weights=ws[chosen])
    present = np.bincount(key) > 0
    return words[present].astype(int)


def test_token_budget_and_geometric_lengths(big_words):
    probs = m.geometric_length_probs(0.2, 10)
    sid = span_ids(1, big_words, length_probs=probs, budget_tokens=0.15 * S_BIG)
    frac = (sid >= 0).mean()
    assert abs(frac - 0.15) < 0.002, frac
    lens = span_word_lengths(sid, big_words)
    se = lens.std() / np.sqrt(lens.size)
    assert abs(lens.mean() - 3.797) < 4 * se + 0.01, (lens.mean(), se)
    share = np.bincount(lens, minlength=11)[1:] / lens.size
    assert np.all(np.abs(share - probs) < 0.012), np.round(share - probs, 4)


def test_word_budget_and_ngram_shares(big_words):
    probs = np.array([0.4, 0.3, 0.2, 0.1])
    budget = 0.15 * big_words.sum(1)
    sid = span_ids(2, big_words, length_probs=probs, budget_words=budget)
    words_chosen = (big_words & (sid >= 0)).sum()
    assert abs(words_chosen / budget.sum() - 1) < 0.01
    lens = span_word_lengths(sid, big_words)
    share = np.bincount(lens, minlength=5)[1:] / lens.size
    assert np.all(np.abs(share - probs) < 0.012), share


def test_token_level_budget_per_row_is_tight():
    ws = np.ones((B_BIG, S_BIG), bool)
    sid = span_ids(3, ws, budget_tokens=0.15 * S_BIG)
    per_row = (sid >= 0).sum(1)
    assert abs(per_row.mean() - 0.15 * S_BIG) < 0.1
    assert per_row.min() >= 76 and per_row.max() <= 77     # 76.5 -> 76 or 77, never further


def test_eighty_ten_ten_shares(big_words):
    sid = span_ids(4, big_words, length_probs=[0.7, 0.3], budget_tokens=0.15 * S_BIG)
    for per_span in (False, True):
        _, act = corrupt(5, np.zeros(sid.shape, np.int32), sid, per_span=per_span)
        assert np.array_equal(act == NONE, sid < 0)
        if per_span:   # one draw per span: count spans
            B, S = sid.shape
            chosen = sid >= 0
            key = (np.arange(B)[:, None] * S + sid)[chosen]
            first = np.unique(key, return_index=True)[1]
            a = act[chosen][first]
            # every token of a span got the span's action
            assert np.array_equal(act[chosen], a[np.searchsorted(np.unique(key), key)])
        else:
            a = act[sid >= 0]
        share = np.bincount(a, minlength=4)[1:] / a.size
        tol = 4 * np.sqrt(0.8 * 0.2 / a.size)
        assert np.all(np.abs(share - [0.8, 0.1, 0.1]) < tol), share


def test_random_replacements_are_regular_ids():
    tokens = np.full((4, 5000), 40, np.int32)
    sid = np.tile(np.arange(5000), (4, 1))
    new, act = corrupt(0, tokens, sid, low=16, high=50, probs=(0.0, 1.0, 0.0))
    assert new.min() >= 16 and new.max() < 50
    assert len(np.unique(new)) == 34                  # the whole range gets used


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kwargs, match", [
    ({}, "exactly one"),
    ({"budget_tokens": 3, "budget_words": 3}, "exactly one"),
    ({"budget_tokens": -1}, "budget_tokens"),
    ({"budget_words": float("nan")}, "budget_words"),
    ({"budget_tokens": 2, "length_probs": []}, "length weights"),
    ({"budget_tokens": 2, "length_probs": [0.5, -0.1]}, "length weights"),
    ({"budget_tokens": 2, "eligible": np.ones(5, bool)}, "eligible shape"),
    ({"budget_tokens": 2, "lengths": 11}, "lengths"),
    ({"budget_tokens": 2, "lengths": 3, "eligible": np.ones(10, bool)}, "at most one"),
])
def test_choose_spans_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        m.choose_spans(streams(0, 1), np.ones(10, bool), **kwargs)


@pytest.mark.parametrize("p, k, match", [(0.0, 10, "geometric p"), (-0.1, 10, "geometric p"),
                                         (1.5, 10, "geometric p"), (0.2, 0, "max span")])
def test_geometric_rejects_bad_config(p, k, match):
    with pytest.raises(ValueError, match=match):
        m.geometric_length_probs(p, k)


@pytest.mark.parametrize("probs", [(0.8, 0.1), (0.8, 0.1, 0.2), (1.2, -0.1, -0.1), (0.5, 0.5, float("nan"))])
def test_action_probs_rejected(probs):
    with pytest.raises(ValueError, match="probs"):
        m.Corruption(probs, per_span=False, mask_id=2, low=16, high=30)


def test_empty_replacement_range_rejected():
    with pytest.raises(ValueError, match="empty"):
        m.Corruption((0, 1, 0), per_span=False, mask_id=2, low=16, high=16)


def test_empty_and_tiny_inputs_pass_through():
    assert span_ids(0, np.zeros(0, bool), budget_tokens=1).shape == (0,)
    assert span_ids(0, np.zeros((3, 0), bool), budget_tokens=1).shape == (3, 0)
    # nothing eligible: nothing chosen
    assert np.all(span_ids(0, np.ones(6, bool), budget_tokens=3, eligible=np.zeros(6, bool)) == -1)
    # one token, budget 0.15: chosen 15% of the time
    rows = (span_ids(0, np.ones((20000, 1), bool), budget_tokens=0.15) == 0).mean()
    assert abs(rows - 0.15) < 0.01


def test_a_rows_spans_do_not_depend_on_its_batch():
    """Row b's spans are a function of its stream and its own words, whatever else is in the batch."""
    S = 300
    g = np.random.default_rng(3)
    ws = g.random((40, S)) < 0.7
    n = g.integers(0, S + 1, 40)
    kw = dict(length_probs=[0.6, 0.3, 0.1])
    whole = m.choose_spans(streams(9, 40), ws, budget_tokens=0.2 * n, lengths=n, **kw).span_id()
    keys = streams(9, 40)
    for b in (0, 7, 39):
        alone = m.choose_spans(keys.take([b]), ws[b:b + 1], budget_tokens=0.2 * n[b], lengths=n[b], **kw)
        assert np.array_equal(alone.span_id()[0], whole[b])
    order = g.permutation(40)
    shuffled = m.choose_spans(keys.take(order), ws[order], budget_tokens=0.2 * n[order], lengths=n[order], **kw)
    assert np.array_equal(shuffled.span_id(), whole[order])
    with pytest.raises(ValueError, match="one value per row"):
        m.choose_spans(keys, ws, budget_tokens=[1.0, 2.0])
    with pytest.raises(ValueError, match="one int per row"):
        m.choose_spans(keys, ws, budget_tokens=1.0, lengths=[1, 2])
    with pytest.raises(ValueError, match="eligible shape"):
        m.choose_spans(keys, ws, budget_tokens=1.0, eligible=np.ones((2, S), bool))
    with pytest.raises(ValueError, match="streams"):
        m.choose_spans(streams(0, 3), ws, budget_tokens=1.0)


def test_short_rows_keep_the_length_law_and_the_budget():
    """Rows of 30-120 tokens (as the tiny recipes' segments): SpanBERT's kept spans still
    have mean 3.8 words and the law's shares, and 15% of the tokens are masked on average."""
    g = np.random.default_rng(7)
    B, S = 8000, 120
    n = g.integers(30, S + 1, B)
    ws = g.random((B, S)) < 0.75
    probs = m.geometric_length_probs(0.2, 10)
    sid = span_ids(11, ws, length_probs=probs, budget_tokens=0.15 * n, lengths=n)
    ws_eff = ws.copy()
    ws_eff[:, 0] = True
    lens = span_word_lengths(sid, ws_eff)
    se = lens.std() / np.sqrt(lens.size)
    assert abs(lens.mean() - 3.797) < 4 * se, (lens.mean(), se)
    share = np.bincount(lens, minlength=11)[1:] / lens.size
    assert np.all(np.abs(share - probs) < 4 * np.sqrt(probs * (1 - probs) / lens.size) + 1e-3), share - probs
    masked = (sid >= 0).sum()
    assert abs(masked / (0.15 * n.sum()) - 1) < 0.02, masked / (0.15 * n.sum())
