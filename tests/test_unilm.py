"""UniLM (ptobj.objectives.unilm): four LMs, cloze targets, LM ids, row-interval masks."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ptobj.objectives import masking
from ptobj.objectives.sample import SpecialTokens
from ptobj.objectives.streams import RowStreams
from ptobj.objectives.unilm import NUM_SEGMENT_TYPES, UniLM, UniLMConfig

SP = SpecialTokens()
V = 300
SETTINGS = settings(max_examples=40, deadline=None)
ONLY = {"bidirectional": (1, 0, 0, 0), "left_to_right": (0, 1, 0, 0),
        "right_to_left": (0, 0, 1, 0), "seq2seq": (0, 0, 0, 1)}
# first-part / second-part LM ids per mode, as documented
SEG = {"bidirectional": (0, 1), "left_to_right": (2, 2), "right_to_left": (3, 3), "seq2seq": (4, 5)}


def make(**kw):
    return UniLM(UniLMConfig(**kw), special=SP, vocab_size=V)


def seg(tokens, sentence_start=None, word_start=None):
    s = {"tokens": np.asarray(tokens, np.int32)}
    if sentence_start is not None:
        s["sentence_start"] = np.asarray(sentence_start, bool)
    if word_start is not None:
        s["word_start"] = np.asarray(word_start, bool)
    return s


def dense_reference(mode, n_real, src_end, S):
    """The [S, S] mask each LM needs, built the obvious way, cell by cell."""
    ref = np.zeros((S, S), bool)
    for i in range(S):
        for j in range(S):
            if i >= n_real:
                ref[i, j] = j < n_real
            elif mode == "bidirectional":
                ref[i, j] = j < n_real
            elif mode == "left_to_right":
                ref[i, j] = j <= i
            elif mode == "right_to_left":
                ref[i, j] = i <= j < n_real
            else:
                ref[i, j] = j < src_end if i < src_end else j <= i
    return ref


def dense_of(out):
    S = out["kv_start"].size
    j = np.arange(S)[None, :]
    return (j >= out["kv_start"][:, None]) & (j < out["kv_end"][:, None])


# ----------------------------------------------------------------------------- literals


SIX = seg([20, 21, 22, 23, 24, 25], sentence_start=[1, 0, 0, 1, 0, 0])


def test_literal_seq2seq_layout_and_mask():
    out = make(seq_length=12, mode_probs=ONLY["seq2seq"], mask_rate=0.0)(SIX, 0)
    assert out["tokens"].tolist() == [3, 20, 21, 22, 4, 23, 24, 25, 4, 0, 0, 0]
    assert out["segment_ids"].tolist() == [4, 4, 4, 4, 4, 5, 5, 5, 5, 0, 0, 0]
    assert out["kv_start"].tolist() == [0] * 12
    assert out["kv_end"].tolist() == [5, 5, 5, 5, 5, 6, 7, 8, 9, 9, 9, 9]
    assert out["loss_mask"].sum() == 0


def test_literal_seq2seq_all_targets_include_target_sep():
    t = make(seq_length=12, mode_probs=ONLY["seq2seq"], mask_rate=1.0, replace_probs=(1.0, 0.0, 0.0))
    out = t(SIX, 0)
    assert out["tokens"].tolist() == [3, 2, 2, 2, 4, 2, 2, 2, 2, 0, 0, 0]
    assert out["labels"].tolist() == [0, 20, 21, 22, 0, 23, 24, 25, 4, 0, 0, 0]
    t = make(seq_length=12, mode_probs=ONLY["seq2seq"], mask_rate=1.0, predict_target_sep=False)
    assert t(SIX, 0)["loss_mask"][8] == 0


def test_literal_unidirectional_and_bidirectional():
    s = seg([20, 21, 22])
    l2r = make(seq_length=7, mode_probs=ONLY["left_to_right"], mask_rate=0.0)(s, 0)
    assert l2r["tokens"].tolist() == [3, 20, 21, 22, 4, 0, 0]
    assert l2r["segment_ids"].tolist() == [2, 2, 2, 2, 2, 0, 0]
    assert l2r["kv_start"].tolist() == [0] * 7 and l2r["kv_end"].tolist() == [1, 2, 3, 4, 5, 5, 5]
    r2l = make(seq_length=7, mode_probs=ONLY["right_to_left"], mask_rate=0.0)(s, 0)
    assert r2l["segment_ids"].tolist() == [3, 3, 3, 3, 3, 0, 0]
    assert r2l["kv_start"].tolist() == [0, 1, 2, 3, 4, 0, 0] and r2l["kv_end"].tolist() == [5] * 7
    bi = make(seq_length=10, mode_probs=ONLY["bidirectional"], mask_rate=0.0)(SIX, 0)
    assert bi["tokens"].tolist() == [3, 20, 21, 22, 4, 23, 24, 25, 4, 0]
    assert bi["segment_ids"].tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1, 0]
    assert bi["kv_start"].tolist() == [0] * 10 and bi["kv_end"].tolist() == [9] * 10
    single = make(seq_length=10, mode_probs=ONLY["bidirectional"], mask_rate=0.0,
                  bidirectional_pairs=False)(SIX, 0)
    assert single["tokens"].tolist() == [3, 20, 21, 22, 23, 24, 25, 4, 0, 0]


@pytest.mark.parametrize("mode", list(ONLY))
@pytest.mark.parametrize("toks", [[], [50], [SP.cls, SP.mask, SP.sep]])
def test_edge_documents(mode, toks):
    t = make(seq_length=10, mode_probs=ONLY[mode], mask_rate=1.0)
    out = t(seg(toks), 0)
    n = len(toks)
    layout = np.where(out["loss_mask"] == 1, out["labels"], out["tokens"])
    if n < 2 or mode in ("left_to_right", "right_to_left"):
        assert layout[0] == SP.cls and layout[n + 1] == SP.sep
    if mode == "seq2seq" and n < 2:
        assert layout[n + 2] == SP.sep               # an empty target: [CLS] x [SEP] [SEP]
        assert out["segment_ids"][n + 2] == 5 and out["loss_mask"][n + 2] == 1
    if mode == "bidirectional" and n < 2:
        assert out["segment_ids"][: n + 2].tolist() == [0] * (n + 2)
    if toks != [50]:
        body = (layout >= SP.first_regular)
        assert not np.any((out["loss_mask"] == 1) & ~body & (np.arange(10) < n + 2)), \
            "special tokens in the input are never targets"


# ----------------------------------------------------------------------------- properties


@st.composite
def segments(draw, max_len=40):
    n = draw(st.integers(0, max_len))
    g = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    toks = g.integers(SP.first_regular, V, n)
    if n and draw(st.booleans()):
        toks[g.integers(0, n)] = SP.unk
    return seg(toks, sentence_start=g.random(n) < draw(st.floats(0.0, 0.4)), word_start=g.random(n) < 0.6)


def check_unilm(out, s, S, predict_target_sep=True):
    tok, lab, lm, segid = out["tokens"], out["labels"], out["loss_mask"], out["segment_ids"]
    for k, v in out.items():
        assert v.shape == (S,) and v.dtype in (np.int32, np.float32), k
    mode = {0: "bidirectional", 2: "left_to_right", 3: "right_to_left", 4: "seq2seq"}[int(segid[0])]
    target = lm == 1
    layout = np.where(target, lab, tok)            # the uncorrupted sequence
    seps = np.flatnonzero(layout == SP.sep)
    body = s["tokens"]
    pair = mode == "seq2seq" or (mode == "bidirectional" and 1 in segid)
    if pair:
        n = min(body.size, S - 3)
        cut = int(seps[0]) - 1
        expect = [SP.cls, *body[:cut], SP.sep, *body[cut:n], SP.sep]
        if n >= 2:
            assert 1 <= cut <= n - 1
            cands = np.flatnonzero(s["sentence_start"][1:n]) + 1
            if cands.size:
                assert cut in cands, "the pair is split at a sentence start when there is one"
    else:
        n = min(body.size, S - 2)
        cut = n
        expect = [SP.cls, *body[:n], SP.sep]
    n_real = len(expect)
    assert layout[:n_real].tolist() == expect and np.all(layout[n_real:] == SP.pad)
    a, b = SEG[mode]
    seg_expect = [a] * (cut + 2) + [b] * (n_real - cut - 2) + [0] * (S - n_real)
    assert segid.tolist() == seg_expect
    assert segid.max() < NUM_SEGMENT_TYPES
    # targets: body tokens (reserved ids other than unk excepted) or seq2seq's closing [SEP]
    allowed = np.zeros(S, bool)
    allowed[1:n_real] = (layout[1:n_real] >= SP.first_regular) | (layout[1:n_real] == SP.unk)
    if mode == "seq2seq" and predict_target_sep:
        allowed[n_real - 1] = True
    assert not np.any(target & ~allowed), "a target where the objective puts none"
    assert np.all(lab[~target] == SP.pad)
    t = tok[target]
    assert np.all((t == SP.mask) | (t >= SP.first_regular) | (t == lab[target]))
    assert np.array_equal(tok[~target], layout[~target]), "special tokens only where the layout puts them"
    src_end = cut + 2
    assert np.array_equal(dense_of(out), dense_reference(mode, n_real, src_end, S))
    assert np.array_equal(out["position_ids"], np.arange(S))
    return mode


@SETTINGS
@given(segments(), st.integers(0, 2 ** 32 - 1), st.booleans(), st.sampled_from(list(ONLY) + ["mix"]))
def test_invariants_masks_and_purity(s, seed, whole_word, mode):
    S = 36
    probs = (1 / 3, 1 / 6, 1 / 6, 1 / 3) if mode == "mix" else ONLY[mode]
    t = make(seq_length=S, mode_probs=probs, whole_word=whole_word, mask_rate=0.3)
    out = t(s, seed)
    again = t(s, seed)
    assert all(np.array_equal(out[k], again[k]) for k in out)
    got = check_unilm(out, s, S)
    assert mode in ("mix", got)


@SETTINGS
@given(st.lists(segments(max_len=70), min_size=1, max_size=6), st.integers(0, 2 ** 32 - 1))
def test_batch_form(samples, seed):
    S = 40
    t = make(seq_length=S, mask_rate=0.3)
    out = t.batch(samples, RowStreams.for_rows(seed, 0, np.arange(len(samples))))
    for b, s in enumerate(samples):
        check_unilm({k: v[b] for k, v in out.items()}, s, S)
        single = t(s, seed, index=b)
        assert all(np.array_equal(out[k][b], single[k]) for k in single), "a row is its sample alone"


# ----------------------------------------------------------------------------- statistics


def test_mode_shares_budget_and_80_10_10():
    g = np.random.default_rng(5)
    B, S = 6000, 64
    body = g.integers(SP.first_regular, 32000, (B, S - 2)).astype(np.int32)
    ss = g.random((B, S - 2)) < 0.1
    t = UniLM(UniLMConfig(seq_length=S), special=SP, vocab_size=32000)
    out = t.batch({"tokens": body, "sentence_start": ss}, RowStreams.for_rows(6, 0, np.arange(B)))
    first = out["segment_ids"][:, 0]
    shares = np.array([(first == k).mean() for k in (0, 2, 3, 4)])
    assert np.all(np.abs(shares - [1 / 3, 1 / 6, 1 / 6, 1 / 3]) < 0.02), shares
    target = out["loss_mask"] == 1
    s2s = first == 4
    eligible = (S - 3) * np.ones(B) + s2s            # pairs hold S-3 body tokens; single S-2
    eligible[(first == 2) | (first == 3)] = S - 2
    assert abs(target.sum() / eligible.sum() - 0.15) < 0.004
    # the target's closing [SEP] is predicted, as often as the other edge of the picked
    # columns (the first body token): spans cover a row's two ends alike
    last = out["kv_end"][:, -1] - 1
    sep_rate, first_rate = target[np.arange(B), last][s2s].mean(), target[s2s, 1].mean()
    assert 0.05 < sep_rate and abs(sep_rate - first_rate) < 0.035, (sep_rate, first_rate)
    tok, lab = out["tokens"][target], out["labels"][target]
    tol = 4 * np.sqrt(0.16 / tok.size)
    assert abs((tok == SP.mask).mean() - 0.8) < tol and abs((tok == lab).mean() - 0.1) < tol


def test_ngram_shares_of_picks():
    t = make(seq_length=16)
    assert np.allclose(t.length_probs, [0.8, 0.1, 0.1])
    assert np.allclose(make(seq_length=16, max_ngram=4, ngram_rate=0.3).length_probs, [0.7, 0.1, 0.1, 0.1])
    ws = np.ones((2000, 510), bool)
    sid = masking.choose_spans(RowStreams.for_rows(0, 0, np.arange(2000)), ws, length_probs=t.length_probs,
                               budget_tokens=76.5).span_id()
    B, S = sid.shape
    chosen = sid >= 0
    sizes = np.bincount((np.arange(B)[:, None] * S + sid)[chosen])
    sizes = sizes[sizes > 0]
    share = np.bincount(sizes, minlength=4)[1:] / sizes.size
    assert np.all(np.abs(share - [0.8, 0.1, 0.1]) < 0.01), share


def test_seq2seq_target_rows_see_only_left_context():
    g = np.random.default_rng(9)
    B, S = 300, 48
    body = g.integers(SP.first_regular, V, (B, S - 2)).astype(np.int32)
    t = make(seq_length=S, mode_probs=ONLY["seq2seq"], mask_rate=0.5)
    out = t.batch({"tokens": body, "length": g.integers(2, S - 2, B)}, RowStreams.for_rows(10, 0, np.arange(B)))
    tgt_rows = out["segment_ids"] == 5
    i = np.nonzero(tgt_rows)
    assert np.all(out["kv_end"][i] == i[1] + 1) and np.all(out["kv_start"][i] == 0)
    src = out["segment_ids"] == 4
    src_len = src.sum(1)
    r, c = np.nonzero(src)
    assert np.all(out["kv_end"][r, c] == src_len[r]), "source rows see the whole source, no target"


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kw, match", [
    ({"mode_probs": (0.5, 0.5, 0.5, 0.5)}, "mode_probs"), ({"mode_probs": (1.0, 0.0, 0.0)}, "mode_probs"),
    ({"mode_probs": (1.5, -0.5, 0.0, 0.0)}, "mode_probs"), ({"ngram_rate": -0.1}, "ngram_rate"),
    ({"ngram_rate": 1.1}, "ngram_rate"), ({"max_ngram": 0}, "max_ngram"),
    ({"max_ngram": 1, "ngram_rate": 0.2}, "max_ngram"), ({"mask_rate": 2.0}, "mask_rate"),
    ({"seq_length": 3}, "seq_length"), ({"replace_probs": (0.5, 0.5, 0.5)}, "replace_probs"),
])
def test_bad_config(kw, match):
    with pytest.raises(ValueError, match=match):
        UniLMConfig(**kw)


def test_bad_samples():
    rng = 0
    with pytest.raises(KeyError, match="word_start"):
        make(seq_length=8, whole_word=True)(seg([20, 21]), rng)
    with pytest.raises(KeyError, match="fields"):
        make(seq_length=8).batch([seg([20], sentence_start=[1]), seg([21])], RowStreams.for_rows(0, 0, [0, 1]))
    with pytest.raises(ValueError, match="vocab_size"):
        make(seq_length=8)(seg([20, 10_000]), rng)
    assert make(seq_length=8).num_segment_types == 6
