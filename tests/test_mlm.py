"""BERT MLM baseline (ptobj.objectives.mlm): token-level and whole-word."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ptobj.objectives.mlm import MLM, MLMConfig
from ptobj.objectives.sample import SpecialTokens
from ptobj.objectives.streams import RowStreams

SP = SpecialTokens()
V = 300
SETTINGS = settings(max_examples=40, deadline=None)


def make(**kw):
    return MLM(MLMConfig(**kw), special=SP, vocab_size=V)


@st.composite
def segments(draw, max_len=40, reserved=True):
    n = draw(st.integers(0, max_len))
    g = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    tokens = g.integers(SP.first_regular, V, n).astype(np.int32)
    if reserved and n and draw(st.booleans()):   # sprinkle reserved ids (unk included)
        k = g.integers(0, n, max(1, n // 5))
        tokens[k] = g.choice([SP.unk, SP.mask, SP.cls, SP.sep, SP.eot, SP.pad], k.size)
    ws = g.random(n) < 0.6
    return {"tokens": tokens, "word_start": ws}


def check_encoder(out, sample, S):
    """Invariants every single-segment encoder output must satisfy (written independently)."""
    body = np.asarray(sample["tokens"])[: S - 2]
    n = body.size
    assert set(out) >= {"tokens", "labels", "loss_mask", "position_ids", "segment_ids", "kv_start", "kv_end"}
    for k, v in out.items():
        assert v.shape == (S,), k
    assert out["tokens"].dtype == np.int32 and out["labels"].dtype == np.int32
    assert out["loss_mask"].dtype == np.float32
    tok, lab, lm = out["tokens"], out["labels"], out["loss_mask"]
    assert tok[0] == SP.cls and tok[n + 1] == SP.sep and np.all(tok[n + 2:] == SP.pad)
    target = lm == 1.0
    assert np.all((lm == 0) | target)
    assert not target[0] and not target[n + 1:].any(), "only body positions may be targets"
    cols = np.flatnonzero(target)
    assert np.array_equal(lab[cols], body[cols - 1]), "labels are the original tokens"
    assert np.all(lab[~target] == SP.pad)
    plain = np.flatnonzero(~target[1:n + 1]) + 1
    assert np.array_equal(tok[plain], body[plain - 1]), "non-targets are copied unchanged"
    # a target is [MASK], a regular id, or the original token; never another special id
    t = tok[cols]
    assert np.all((t == SP.mask) | (t >= SP.first_regular) | (t == body[cols - 1]))
    # reserved input ids (other than unk) are never targets
    reserved = (body < SP.first_regular) & (body != SP.unk)
    assert not np.any(target[1:n + 1] & reserved)
    assert np.array_equal(out["position_ids"], np.arange(S))
    assert np.all(out["segment_ids"] == 0)
    dense = np.zeros((S, S), bool)
    dense[:, : n + 2] = True                       # every row sees [CLS] body [SEP], never pads
    got = (np.arange(S)[None, :] >= out["kv_start"][:, None]) & (np.arange(S)[None, :] < out["kv_end"][:, None])
    assert np.array_equal(got, dense)
    return target


# ----------------------------------------------------------------------------- literals


def test_literal_mask_everything():
    t = make(seq_length=8, mask_rate=1.0, replace_probs=(1.0, 0.0, 0.0))
    out = t({"tokens": np.array([20, 21, 22], np.int32)}, 0)
    assert out["tokens"].tolist() == [3, 2, 2, 2, 4, 0, 0, 0]
    assert out["labels"].tolist() == [0, 20, 21, 22, 0, 0, 0, 0]
    assert out["loss_mask"].tolist() == [0, 1, 1, 1, 0, 0, 0, 0]
    assert out["kv_start"].tolist() == [0] * 8
    assert out["kv_end"].tolist() == [5] * 8


def test_literal_no_targets_and_truncation():
    t = make(seq_length=6, mask_rate=0.0)
    out = t({"tokens": np.array([20, 21, 22, 23, 24, 25], np.int32)}, 0)
    assert out["tokens"].tolist() == [3, 20, 21, 22, 23, 4]
    assert out["loss_mask"].sum() == 0 and np.all(out["labels"] == 0)


def test_literal_whole_word_keep():
    t = make(seq_length=9, mask_rate=1.0, whole_word=True, replace_probs=(0.0, 0.0, 1.0))
    s = {"tokens": np.array([20, 21, 22, 23, 24], np.int32), "word_start": np.array([1, 0, 1, 0, 0], bool)}
    out = t(s, 0)
    assert out["tokens"].tolist() == [3, 20, 21, 22, 23, 24, 4, 0, 0]
    assert out["labels"].tolist() == [0, 20, 21, 22, 23, 24, 0, 0, 0]


def test_edge_documents():
    t = make(seq_length=8, mask_rate=1.0)
    empty = t({"tokens": np.zeros(0, np.int32)}, 0)
    assert empty["tokens"].tolist() == [3, 4, 0, 0, 0, 0, 0, 0] and empty["loss_mask"].sum() == 0
    one = t({"tokens": np.array([77], np.int32)}, 0)
    assert one["labels"].tolist() == [0, 77, 0, 0, 0, 0, 0, 0]
    specials = np.array([SP.cls, SP.sep, SP.mask, SP.eot], np.int32)
    out = t({"tokens": specials}, 0)
    assert out["loss_mask"].sum() == 0, "a document of only special tokens gets no targets"
    assert out["tokens"][1:5].tolist() == specials.tolist()


# ----------------------------------------------------------------------------- properties


@SETTINGS
@given(segments(), st.booleans(), st.integers(0, 2 ** 32 - 1), st.floats(0.0, 1.0))
def test_invariants_and_purity(sample, whole_word, seed, rate):
    S = 32
    t = make(seq_length=S, whole_word=whole_word, mask_rate=rate)
    out = t(sample, seed)
    again = t(sample, seed)
    for k in out:
        assert np.array_equal(out[k], again[k]), f"{k} is not a pure function of (sample, seed)"
    target = check_encoder(out, sample, S)
    body = sample["tokens"][: S - 2]
    if whole_word and not np.any(body < SP.first_regular):
        ws = sample["word_start"][: S - 2].copy()
        if ws.size:
            ws[0] = True
        word = np.cumsum(ws) - 1
        tgt = target[1:body.size + 1]
        for w in np.unique(word):
            assert tgt[word == w].all() or not tgt[word == w].any(), "a word is masked whole or not at all"


@SETTINGS
@given(st.lists(segments(max_len=50), min_size=1, max_size=6), st.booleans(), st.integers(0, 2 ** 32 - 1))
def test_batch_form(samples, whole_word, seed):
    S = 40
    t = make(seq_length=S, whole_word=whole_word, mask_rate=0.3)
    keys = RowStreams.for_rows(seed, 1, np.arange(len(samples)))
    out = t.batch(samples, keys)
    again = t.batch(samples, keys)
    for b, s in enumerate(samples):
        row = {k: v[b] for k, v in out.items()}
        check_encoder(row, s, S)
        assert all(np.array_equal(out[k], again[k]) for k in out)
        single = t(s, seed, epoch=1, index=b)
        assert all(np.array_equal(row[k], single[k]) for k in single), "a row is its sample alone"
    # a row does not depend on its neighbours or its place in the batch
    rev = t.batch(samples[::-1], keys.take(np.arange(len(samples))[::-1]))
    assert all(np.array_equal(rev[k][::-1], out[k]) for k in out)


# ----------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("whole_word", [False, True])
def test_budget_and_80_10_10(whole_word):
    g = np.random.default_rng(7)
    B, S = 1000, 512
    body = g.integers(SP.first_regular, 32000, (B, S - 2)).astype(np.int32)
    ws = g.random((B, S - 2)) < 0.7
    t = MLM(MLMConfig(seq_length=S, whole_word=whole_word), special=SP, vocab_size=32000)
    out = t.batch({"tokens": body, "word_start": ws}, RowStreams.for_rows(8, 0, np.arange(B)))
    target = out["loss_mask"] == 1
    assert abs(target.sum() / (B * (S - 2)) - 0.15) < 0.002
    tok, lab = out["tokens"][target], out["labels"][target]
    masked, kept = (tok == SP.mask).mean(), (tok == lab).mean()
    rand = 1 - masked - kept
    tol = 4 * np.sqrt(0.16 / tok.size)
    assert abs(masked - 0.8) < tol and abs(kept - 0.1) < tol and abs(rand - 0.1) < tol


def test_lengths_shorter_than_grid():
    g = np.random.default_rng(0)
    B, S = 200, 64
    body = g.integers(SP.first_regular, V, (B, S - 2)).astype(np.int32)
    n = g.integers(0, S - 1, B)
    out = make(seq_length=S, mask_rate=0.5).batch({"tokens": body, "length": n},
                                                  RowStreams.for_rows(0, 0, np.arange(B)))
    for b in range(B):
        check_encoder({k: v[b] for k, v in out.items()}, {"tokens": body[b, :n[b]]}, S)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kw, match", [
    ({"mask_rate": -0.1}, "mask_rate"), ({"mask_rate": 1.5}, "mask_rate"),
    ({"seq_length": 2}, "seq_length"), ({"replace_probs": (0.8, 0.1, 0.2)}, "replace_probs"),
    ({"replace_probs": (0.9, 0.1)}, "replace_probs"), ({"ngram_probs": (0.5, -0.5)}, "ngram_probs"),
    ({"ngram_probs": ()}, "ngram_probs"),
])
def test_bad_config(kw, match):
    with pytest.raises(ValueError, match=match):
        MLMConfig(**kw)


def test_bad_construction_and_samples():
    with pytest.raises(ValueError, match="vocab_size"):
        MLM(MLMConfig(), special=SP, vocab_size=SP.first_regular)
    with pytest.raises(TypeError, match="MLMConfig"):
        MLM({"seq_length": 8}, special=SP, vocab_size=V)
    t = make(seq_length=8)
    rng = 0
    with pytest.raises(KeyError, match="tokens"):
        t({"ids": np.zeros(3, np.int32)}, rng)
    with pytest.raises(ValueError, match="vocab_size"):
        t({"tokens": np.array([20, V], np.int32)}, rng)
    with pytest.raises(ValueError, match="1-D"):
        t({"tokens": np.zeros((2, 2), np.int32)}, rng)
    with pytest.raises(KeyError, match="word_start"):
        make(seq_length=8, whole_word=True)({"tokens": np.array([20], np.int32)}, rng)
    with pytest.raises(ValueError, match="word_start"):
        make(seq_length=8, whole_word=True)({"tokens": np.array([20, 21], np.int32),
                                              "word_start": np.ones(3, bool)}, rng)
