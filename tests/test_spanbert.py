"""SpanBERT (ptobj.objectives.spanbert): geometric whole-word spans and SBO targets."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ptobj.objectives.sample import SpecialTokens
from ptobj.objectives.streams import RowStreams
from ptobj.objectives.spanbert import SpanBERT, SpanBERTConfig

SP = SpecialTokens()
V = 300
SETTINGS = settings(max_examples=40, deadline=None)


def make(**kw):
    return SpanBERT(SpanBERTConfig(**kw), special=SP, vocab_size=V)


def sample(tokens, word_start):
    return {"tokens": np.asarray(tokens, np.int32), "word_start": np.asarray(word_start, bool)}


def runs(mask):
    """Maximal runs of True as (start, end) pairs, computed the plain way."""
    out, i = [], 0
    while i < len(mask):
        if mask[i]:
            j = i
            while j < len(mask) and mask[j]:
                j += 1
            out.append((i, j))
            i = j
        else:
            i += 1
    return out


# ----------------------------------------------------------------------------- literals


def test_literal_one_word_touching_both_edges():
    """A span covering the whole body has [CLS] (0) and [SEP] (n + 1) as its boundaries."""
    t = make(seq_length=7, mask_rate=1.0, replace_probs=(1.0, 0.0, 0.0))
    out = t(sample([20, 21, 22], [1, 0, 0]), 0)
    assert out["tokens"].tolist() == [3, 2, 2, 2, 4, 0, 0]
    assert out["labels"].tolist() == [0, 20, 21, 22, 0, 0, 0]
    assert out["sbo_left"].tolist() == [-1, 0, 0, 0, -1, -1, -1]
    assert out["sbo_right"].tolist() == [-1, 4, 4, 4, -1, -1, -1]
    assert out["sbo_offset"].tolist() == [0, 1, 2, 3, 0, 0, 0]
    assert all(out[k].dtype == np.int32 for k in ("sbo_left", "sbo_right", "sbo_offset"))


def test_literal_one_word_spans():
    """geometric_p = 1: every span is one word; with the full budget every word is one."""
    t = make(seq_length=10, mask_rate=1.0, geometric_p=1.0, replace_probs=(0.0, 0.0, 1.0))
    out = t(sample([20, 21, 22, 23, 24, 25], [1, 0, 1, 1, 0, 0]), 0)
    # words: [20 21] [22] [23 24 25] at output columns 1-2, 3, 4-6
    assert out["tokens"].tolist() == [3, 20, 21, 22, 23, 24, 25, 4, 0, 0]
    assert out["sbo_left"].tolist() == [-1, 0, 0, 2, 3, 3, 3, -1, -1, -1]
    assert out["sbo_right"].tolist() == [-1, 3, 3, 4, 7, 7, 7, -1, -1, -1]
    assert out["sbo_offset"].tolist() == [0, 1, 2, 1, 1, 2, 3, 0, 0, 0]


def test_edge_documents():
    t = make(seq_length=8)
    for toks in ([], [50], [SP.cls, SP.sep, SP.mask]):
        out = t(sample(toks, [1] * len(toks)), 1)
        n = len(toks)
        assert out["tokens"][0] == SP.cls and out["tokens"][n + 1] == SP.sep
        if toks != [50]:
            assert out["loss_mask"].sum() == 0 and np.all(out["sbo_offset"] == 0)


# ----------------------------------------------------------------------------- properties


@st.composite
def segments(draw, max_len=60):
    n = draw(st.integers(0, max_len))
    g = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    toks = g.integers(SP.first_regular, V, n)
    return sample(toks, g.random(n) < draw(st.floats(0.2, 1.0)))


def check_sbo(out, s, S):
    body = s["tokens"][: S - 2]
    n = body.size
    ws = s["word_start"][: S - 2].copy()
    if n:
        ws[0] = True
    tok, lm = out["tokens"], out["loss_mask"]
    left, right, off = out["sbo_left"], out["sbo_right"], out["sbo_offset"]
    assert tok[0] == SP.cls and tok[n + 1] == SP.sep and np.all(tok[n + 2:] == SP.pad)
    target = lm == 1
    assert np.array_equal(off > 0, target) and np.array_equal(left >= 0, target) and np.array_equal(right >= 0, target)
    assert np.array_equal(out["labels"][target], body[np.flatnonzero(target) - 1])
    # each span = positions sharing (left, right); its targets are exactly left+1 .. right-1
    spans = {}
    for i in np.flatnonzero(target):
        spans.setdefault((left[i], right[i]), []).append(i)
    for (lft, rgt), idx in spans.items():
        assert idx == list(range(lft + 1, rgt)), "a span is the tokens strictly between its boundaries"
        assert off[idx].tolist() == list(range(1, len(idx) + 1))
        assert 0 <= lft and rgt <= n + 1, "boundaries stay inside [CLS] .. [SEP]"
        # whole words: span starts at a word start, the token after it starts a word (or is [SEP])
        assert ws[lft]                              # output column lft+1 = body column lft
        assert rgt == n + 1 or ws[rgt - 1], "span ends mid-word"
        # boundary tokens are outside the span: not a target of the same span
        for b in (lft, rgt):
            assert not target[b] or (left[b], right[b]) != (lft, rgt)
    dense = np.zeros((S, S), bool)
    dense[:, : n + 2] = True                       # every row sees [CLS] body [SEP], never pads
    j = np.arange(S)[None, :]
    assert np.array_equal((j >= out["kv_start"][:, None]) & (j < out["kv_end"][:, None]), dense)
    assert np.all(out["segment_ids"] == 0) and np.array_equal(out["position_ids"], np.arange(S))
    # 80/10/10 decided per span: a span is all [MASK] or has no [MASK]
    for idx in spans.values():
        masked = tok[idx] == SP.mask
        assert masked.all() or not masked.any()
    return spans


@SETTINGS
@given(segments(), st.integers(0, 2 ** 32 - 1), st.floats(0.0, 1.0))
def test_sbo_invariants_and_purity(s, seed, rate):
    S = 40
    t = make(seq_length=S, mask_rate=rate, max_span=4)
    out = t(s, seed)
    again = t(s, seed)
    assert all(np.array_equal(out[k], again[k]) for k in out)
    spans = check_sbo(out, s, S)
    ws = s["word_start"][: S - 2].copy()
    if ws.size:
        ws[0] = True
    for (lft, rgt) in spans:
        assert ws[lft:rgt - 1].sum() <= 4, "span longer than max_span words"


@SETTINGS
@given(st.lists(segments(max_len=80), min_size=1, max_size=5), st.integers(0, 2 ** 32 - 1))
def test_batch_form(samples, seed):
    S = 48
    t = make(seq_length=S, mask_rate=0.4)
    out = t.batch(samples, RowStreams.for_rows(seed, 0, np.arange(len(samples))))
    for b, s in enumerate(samples):
        check_sbo({k: v[b] for k, v in out.items()}, s, S)
        single = t(s, seed, index=b)
        assert all(np.array_equal(out[k][b], single[k]) for k in single), "a row is its sample alone"


# ----------------------------------------------------------------------------- statistics


def test_budget_span_lengths_and_per_span_actions():
    g = np.random.default_rng(11)
    B, S = 1000, 512
    body = g.integers(SP.first_regular, 32000, (B, S - 2)).astype(np.int32)
    ws = g.random((B, S - 2)) < 0.7
    ws[:, 0] = True
    t = SpanBERT(SpanBERTConfig(seq_length=S), special=SP, vocab_size=32000)
    out = t.batch({"tokens": body, "word_start": ws}, RowStreams.for_rows(12, 0, np.arange(B)))
    target = out["loss_mask"] == 1
    assert abs(target.sum() / (B * (S - 2)) - 0.15) < 0.002
    # spans: first target of each span has offset 1
    first = out["sbo_offset"] == 1
    rows, cols = np.nonzero(first)
    ends = out["sbo_right"][rows, cols]
    wsum = np.concatenate(([0], np.cumsum(ws.ravel())))
    # words in span = word starts among body columns [col-1, end-1)
    flat0 = rows * (S - 2)
    words = wsum[flat0 + ends - 1] - wsum[flat0 + cols - 1]
    se = words.std() / np.sqrt(words.size)
    assert abs(words.mean() - 3.797) < 4 * se + 0.01, (words.mean(), se)
    assert words.min() >= 1 and words.max() <= 10
    # 80/10/10 per span: share of spans whose first token is [MASK]
    masked = out["tokens"][rows, cols] == SP.mask
    kept = out["tokens"][rows, cols] == out["labels"][rows, cols]
    tol = 4 * np.sqrt(0.16 / masked.size)
    assert abs(masked.mean() - 0.8) < tol and abs(kept.mean() - 0.1) < tol


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kw, match", [
    ({"geometric_p": 0.0}, "geometric_p"), ({"geometric_p": -1.0}, "geometric_p"),
    ({"geometric_p": 1.2}, "geometric_p"), ({"max_span": 0}, "max_span"),
    ({"mask_rate": 1.01}, "mask_rate"), ({"mask_rate": -0.5}, "mask_rate"),
    ({"replace_probs": (1.0, 0.1, 0.0)}, "replace_probs"), ({"seq_length": 1}, "seq_length"),
])
def test_bad_config(kw, match):
    with pytest.raises(ValueError, match=match):
        SpanBERTConfig(**kw)


def test_bad_samples():
    t = make(seq_length=8)
    rng = 0
    with pytest.raises(KeyError, match="word_start"):
        t({"tokens": np.array([20], np.int32)}, rng)
    with pytest.raises(ValueError, match="vocab_size"):
        t(sample([20, -1], [1, 1]), rng)
