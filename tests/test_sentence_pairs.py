"""SOP and NSP: literal examples, properties (hypothesis), MLM shares, bad input."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ptobj.objectives import intervals
from ptobj.objectives.sample import SpecialTokens
from ptobj.objectives.streams import RowStreams
from ptobj.objectives.sentence_pairs import NSP, SOP, NSPConfig, SOPConfig, choose_split, truncate_pair

SP = SpecialTokens()
V = 1000


def doc(n, sentence_at=(), word_frac=1.0, rng=None, base=100):
    rng = rng or np.random.default_rng(0)
    ss = np.zeros(n, bool)
    ss[list(sentence_at)] = True
    if n:
        ss[0] = True
    ws = rng.random(n) < word_frac
    if n:
        ws[0] = True
    return {"tokens": np.arange(base, base + n, dtype=np.int32), "word_start": ws | ss, "sentence_start": ss}


def parts(out):
    """(first, second) segments of [CLS] A [SEP] B [SEP] as lists."""
    tok = out["tokens"].tolist()
    seps = [i for i, t in enumerate(tok) if t == SP.sep]
    return tok[1:seps[0]], tok[seps[0] + 1:seps[1]] if len(seps) > 1 else []


# ------------------------------------------------------------------ literal examples
def test_literal_sop_in_order_and_swapped():
    s = doc(6, sentence_at=(3,))                         # two sentences: 100 101 102 | 103 104 105
    keep = SOP(SOPConfig(seq_length=10, masking="none", swap_rate=0.0), special=SP, vocab_size=V)
    out = keep(s, 0)
    assert out["tokens"].tolist() == [3, 100, 101, 102, 4, 103, 104, 105, 4, 0]
    assert out["segment_ids"].tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1, 0]
    assert int(out["sop_label"]) == 0 and out["sop_label"].shape == () and out["sop_label"].dtype == np.int32
    assert out["kv_end"].tolist() == [9] * 10 and out["loss_mask"].sum() == 0
    swap = SOP(SOPConfig(seq_length=10, masking="none", swap_rate=1.0), special=SP, vocab_size=V)
    out = swap(s, 0)
    assert out["tokens"].tolist() == [3, 103, 104, 105, 4, 100, 101, 102, 4, 0]
    assert out["segment_ids"].tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1, 0] and int(out["sop_label"]) == 1


def test_literal_nsp_random_b_comes_from_other_document():
    s = doc(6, sentence_at=(3,))
    s["random_tokens"] = np.array([500, 501, 502, 503, 504], np.int32)
    s["random_word_start"] = np.ones(5, bool)
    t = NSP(NSPConfig(seq_length=10, masking="none", random_rate=1.0), special=SP, vocab_size=V)
    out = t(s, 0)
    # A = 100 101 102 (the only boundary), B = the random segment cut to fit 10 - 3 - 3 = 4 tokens
    assert out["tokens"].tolist() == [3, 100, 101, 102, 4, 500, 501, 502, 503, 4]
    assert int(out["nsp_label"]) == 1
    t0 = NSP(NSPConfig(seq_length=10, masking="none", random_rate=0.0), special=SP, vocab_size=V)
    assert t0(s, 0)["tokens"].tolist() == [3, 100, 101, 102, 4, 103, 104, 105, 4, 0]


def test_literal_truncation_keeps_a_and_b_adjacent():
    s = doc(12, sentence_at=(8,))                        # A = 100..107 (8), B = 108..111 (4)
    t = SOP(SOPConfig(seq_length=11, masking="none", swap_rate=0.0), special=SP, vocab_size=V)
    out = t(s, 0)
    # 8 tokens fit: A (longer) loses 4 at its front
    assert out["tokens"].tolist() == [3, 104, 105, 106, 107, 4, 108, 109, 110, 111, 4]
    assert truncate_pair(np.array([8, 5, 3]), np.array([4, 5, 9]), 8)[0].tolist() == [4, 1, 0]
    assert truncate_pair(np.array([8, 5, 3]), np.array([4, 5, 9]), 8)[1].tolist() == [0, 1, 4]


# ------------------------------------------------------------------ fallbacks
def test_single_sentence_splits_at_a_word_start():
    s = doc(8, word_frac=0.0)
    s["word_start"][[3, 5]] = True
    split, kind = choose_split(RowStreams.for_rows(0, 0, [0]), np.array([8]), s["sentence_start"][None],
                               s["word_start"][None])
    assert kind.tolist() == [1] and split[0] in (3, 5)
    t = SOP(SOPConfig(seq_length=12, masking="none", swap_rate=0.0), special=SP, vocab_size=V)
    firsts = {len(parts(t(s, k))[0]) for k in range(20)}
    assert firsts == {3, 5}


def test_one_word_splits_at_a_token_and_tiny_docs_get_label_minus_one():
    s = doc(4, word_frac=0.0)
    _, kind = choose_split(RowStreams.for_rows(0, 0, [0]), np.array([4]), s["sentence_start"][None], s["word_start"][None])
    assert kind.tolist() == [2]
    t = SOP(SOPConfig(seq_length=8, masking="none"), special=SP, vocab_size=V)
    assert int(t(s, 0)["sop_label"]) in (0, 1)
    one = t(doc(1), 0)
    assert one["tokens"].tolist() == [3, 100, 4, 0, 0, 0, 0, 0] and int(one["sop_label"]) == -1
    assert one["kv_end"][0] == 3 and one["segment_ids"].sum() == 0
    empty = t(doc(0), 0)
    assert empty["tokens"].tolist() == [3, 4, 0, 0, 0, 0, 0, 0] and int(empty["sop_label"]) == -1


# ------------------------------------------------------------------ properties
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(2, 60), seed=st.integers(0, 2**32 - 1), S=st.integers(5, 70),
       n_sent=st.integers(0, 6), swap_rate=st.sampled_from([0.0, 0.5, 1.0]))
def test_sop_properties(n, seed, S, n_sent, swap_rate):
    rng = np.random.default_rng(seed)
    at = rng.choice(np.arange(1, n), size=min(n_sent, n - 1), replace=False)
    s = doc(n, sentence_at=at, word_frac=0.5, rng=rng)
    cfg = dict(seq_length=S, masking="none")
    t = SOP(SOPConfig(swap_rate=swap_rate, **cfg), special=SP, vocab_size=V)
    a, b = t(s, seed), t(s, seed)
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    first, second = parts(a)
    label = int(a["sop_label"])
    A, B = (second, first) if label == 1 else (first, second)
    assert len(A) >= 1 and len(B) >= 1 and len(A) + len(B) <= S - 3
    # A then B are one contiguous piece of the document; the cut is a sentence boundary when there is one
    assert A + B == list(range(A[0], A[0] + len(A) + len(B)))
    cut = A[-1] + 1 - 100
    if len(at):
        assert s["sentence_start"][cut]
    # the swapped negative is the same two segments in the other order (same seed, same draws)
    t_in = SOP(SOPConfig(swap_rate=0.0, **cfg), special=SP, vocab_size=V)
    t_sw = SOP(SOPConfig(swap_rate=1.0, **cfg), special=SP, vocab_size=V)
    p_in, p_sw = parts(t_in(s, seed)), parts(t_sw(s, seed))
    assert p_sw == (p_in[1], p_in[0])
    # specials only where the objective put them; segment ids; row intervals = dense reference
    tok = a["tokens"]
    n_real = len(first) + len(second) + 3
    special_pos = np.flatnonzero(tok < SP.first_regular)
    expect = [0, len(first) + 1, n_real - 1] + list(range(n_real, S))
    assert special_pos.tolist() == expect
    assert a["segment_ids"].tolist() == [0] * (len(first) + 2) + [1] * (len(second) + 1) + [0] * (S - n_real)
    ref = np.broadcast_to(np.arange(S) < n_real, (S, S))
    assert np.array_equal(intervals.dense(a["kv_start"], a["kv_end"]), ref)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(2, 40), r=st.integers(0, 40), seed=st.integers(0, 2**32 - 1), S=st.integers(5, 60))
def test_nsp_negatives_come_from_the_other_document(n, r, seed, S):
    rng = np.random.default_rng(seed)
    s = doc(n, sentence_at=rng.choice(np.arange(1, n), size=min(2, n - 1), replace=False), rng=rng)
    s["random_tokens"] = np.arange(600, 600 + r, dtype=np.int32)
    s["random_word_start"] = np.ones(r, bool)
    t = NSP(NSPConfig(seq_length=S, masking="none"), special=SP, vocab_size=V)
    out = t(s, seed)
    A, B = parts(out)
    assert all(100 <= x < 100 + n for x in A)
    if int(out["nsp_label"]) == 1:
        assert r > 0 and B == list(range(600, 600 + len(B)))
    else:
        assert int(out["nsp_label"]) == 0 and B == list(range(A[-1] + 1, A[-1] + 1 + len(B)))


# ------------------------------------------------------------------ MLM on top
def _many(t, rows=600, n=500, seed=2):
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(rows):
        at = rng.choice(np.arange(1, n), size=12, replace=False)
        s = doc(n, sentence_at=at, word_frac=0.6, rng=rng)
        s["tokens"] = rng.integers(16, V, n).astype(np.int32)
        samples.append(s)
    return samples, t.batch(samples, RowStreams.for_rows(seed, 0, np.arange(rows)))


def test_mlm_budget_and_80_10_10_shares():
    t = SOP(SOPConfig(seq_length=512), special=SP, vocab_size=V)
    _, out = _many(t)
    lm = out["loss_mask"].astype(bool)
    eligible = (out["tokens"] >= SP.first_regular) | lm
    assert abs(lm.sum() / eligible.sum() - 0.15) < 0.003
    tok, lab = out["tokens"][lm], out["labels"][lm]
    n = lm.sum()
    got = np.array([(tok == SP.mask).mean(), ((tok != SP.mask) & (tok != lab)).mean(), (tok == lab).mean()])
    # a random token equals the original with probability ~1/984: shift that share
    expect = np.array([0.8, 0.1 * (1 - 1 / 984), 0.1 + 0.1 / 984])
    assert np.all(np.abs(got - expect) < 5 * np.sqrt(expect * (1 - expect) / n)), got
    # [MASK] never outside targets; labels only at targets; pair layout untouched
    assert not (out["tokens"][~lm] == SP.mask).any() and (out["labels"][~lm] == SP.pad).all()
    assert (out["tokens"][:, 0] == SP.cls).all()
    labels = out["sop_label"]
    assert labels.shape == (600,) and abs(labels.mean() - 0.5) < 5 * np.sqrt(0.25 / 600)


def test_macbert_masking_on_pairs_uses_no_mask_token():
    t = SOP(SOPConfig(seq_length=512, masking="macbert", ngram_probs=(0.4, 0.3, 0.2, 0.1)), special=SP, vocab_size=V)
    _, out = _many(t, rows=100)
    lm = out["loss_mask"].astype(bool)
    assert lm.sum() > 0 and not (out["tokens"] == SP.mask).any()
    assert (out["tokens"][lm] >= SP.first_regular).all()


def test_whole_words_are_masked_whole():
    # keep-only corruption leaves tokens readable: doc token 100 + i sits at doc position i
    t = SOP(SOPConfig(seq_length=64, ngram_probs=(0.5, 0.5), replace_probs=(0.0, 0.0, 1.0)), special=SP, vocab_size=V)
    rng = np.random.default_rng(4)
    for k in range(40):
        s = doc(100, sentence_at=(30, 55, 70), word_frac=0.4, rng=rng)
        out = t(s, k)
        lm = out["loss_mask"].astype(bool)
        first, second = parts(out)
        A, B = (second, first) if int(out["sop_label"]) == 1 else (first, second)
        ws = s["word_start"].copy()
        ws[[A[0] - 100, B[0] - 100]] = True            # each segment starts a word
        word = np.cumsum(ws) - 1
        present = (out["tokens"] >= 100) & (out["tokens"] < 200)
        d = out["tokens"][present] - 100
        for w in np.unique(word[d]):
            flags = lm[present][word[d] == w]
            assert flags.all() or not flags.any(), (k, w)
        assert lm.sum() > 0


# ------------------------------------------------------------------ bad input / config
@pytest.mark.parametrize("cls,field,value", [(SOPConfig, "seq_length", 4), (NSPConfig, "seq_length", 12.5), (SOPConfig, "masking", "t5"),
                                             (SOPConfig, "swap_rate", 1.5), (NSPConfig, "random_rate", -0.1),
                                             (SOPConfig, "mask_rate", 2.0), (NSPConfig, "replace_probs", (1, 1, 1))])
def test_config_out_of_range_names_the_field(cls, field, value):
    with pytest.raises(ValueError, match=field):
        cls(**{field: value})


def test_bad_fields():
    t = SOP(SOPConfig(seq_length=16), special=SP, vocab_size=V)
    with pytest.raises(KeyError, match="sentence_start"):
        t({"tokens": np.arange(20, 25, dtype=np.int32), "word_start": np.ones(5, bool)}, 0)
    with pytest.raises(TypeError):
        SOP(NSPConfig(), special=SP, vocab_size=V)
    nsp = NSP(NSPConfig(seq_length=16, random_rate=1.0, masking="none"), special=SP, vocab_size=V)
    with pytest.raises(KeyError, match="random_tokens"):   # NSP without negatives: refused, named
        nsp(doc(8, sentence_at=(4,)), 0)
    s = dict(doc(8, sentence_at=(4,)), random_tokens=np.zeros(0, np.int32), random_word_start=np.zeros(0, bool))
    assert int(nsp(s, 0)["nsp_label"]) == 0                # an empty negative: the true B, label 0
