"""The per-sample fast paths (``t(sample, rng)`` and ``choose_span_set`` on one row) must
give exactly what the vectorised code gives for a batch of one: same fields, same draws
(the generator ends in the same state). ``masking.ONE_ROW_FAST_PATH = False`` switches
every fast path off, which gives the reference."""

import numpy as np
import pytest

from objectives import masking
from objectives.macbert import MacBERT, MacBERTConfig
from objectives.mlm import MLM, MLMConfig
from objectives.sample import SpecialTokens
from objectives.sentence_pairs import NSP, NSPConfig, SOP, SOPConfig
from objectives.similar_words import SimilarWords
from objectives.spanbert import SpanBERT, SpanBERTConfig
from objectives.unilm import UniLM, UniLMConfig

SP = SpecialTokens()
V = 120
TABLE = SimilarWords.from_neighbours({(20,): [(21,), (22,)], (30, 31): [(32, 33)], (40,): [(41,)]},
                                     extra_words=[(50, 51), (52,)])


def both(fn, seed, monkeypatch):
    """fn(rng) with the fast paths on and off: ((out, next draw), (out, next draw))."""
    res = []
    for fast in (True, False):
        monkeypatch.setattr(masking, "ONE_ROW_FAST_PATH", fast)
        rng = np.random.default_rng(seed)
        out = fn(rng)
        res.append((out, rng.random()))
    return res


def random_segment(g, max_len):
    n = int(g.integers(0, max_len + 1))
    tokens = g.integers(SP.first_regular, V, n).astype(g.choice([np.int32, np.int64]))
    if n and g.random() < 0.3:                     # reserved ids (unk included) in the input
        k = g.integers(0, n, max(1, n // 6))
        tokens[k] = g.choice([SP.unk, SP.mask, SP.cls, SP.sep, SP.eot, SP.pad], k.size)
    if n and g.random() < 0.3:                     # words from the table
        tokens[: min(n, 4)] = [20, 30, 31, 40][: min(n, 4)]
    ws = g.random(n) < g.choice([0.4, 0.8, 1.0])
    ss = ws & (g.random(n) < 0.2)
    r = int(g.integers(0, max_len + 1))
    return {"tokens": tokens, "word_start": ws, "sentence_start": ss,
            "random_tokens": g.integers(SP.first_regular, V, r).astype(np.int32),
            "random_word_start": g.random(r) < 0.7}


def test_choose_span_set_one_row_matches_vectorised(monkeypatch):
    laws = [(1.0,), (0.4, 0.3, 0.2, 0.1), masking.geometric_length_probs(0.2, 10)]
    for seed in range(600):
        g = np.random.default_rng(seed)
        S = int(g.integers(0, 70))
        ws = g.random(S) < g.choice([0.3, 0.7, 1.0])
        kw = {"length_probs": laws[seed % 3]}
        mode = (seed // 3) % 3
        if mode == 1:
            kw["lengths"] = int(g.integers(0, S + 1))
        elif mode == 2:
            kw["eligible"] = g.random(S) < 0.85
        key = "budget_tokens" if g.random() < 0.5 else "budget_words"
        kw[key] = float(g.random() * S * 0.4)
        (fast, a), (ref, b) = both(lambda rng: masking.choose_span_set(rng, ws, **kw), seed, monkeypatch)
        assert a == b, f"seed {seed}: different number of draws"
        assert np.array_equal(fast.start, ref.start) and np.array_equal(fast.end, ref.end), f"seed {seed}"


TRANSFORMS = [
    *(MLM(MLMConfig(seq_length=s, whole_word=w, ngram_probs=ng, per_span=ps), special=SP, vocab_size=V)
      for s in (3, 5, 24) for w in (False, True) for ng, ps in (((1.0,), False), ((0.5, 0.5), True))),
    *(SpanBERT(SpanBERTConfig(seq_length=s, per_span=ps), special=SP, vocab_size=V)
      for s in (3, 24) for ps in (True, False)),
    *(MacBERT(MacBERTConfig(seq_length=s, ngram_probs=ng), special=SP, vocab_size=V, similar=tb)
      for s in (3, 24) for ng in ((1.0,), (0.4, 0.3, 0.2, 0.1)) for tb in (TABLE, None)),
    *(SOP(SOPConfig(seq_length=s, masking=m, ngram_probs=ng), special=SP, vocab_size=V, similar=TABLE)
      for s in (5, 24) for m in ("mlm", "macbert", "none") for ng in ((1.0,), (0.4, 0.3, 0.2, 0.1))),
    *(NSP(NSPConfig(seq_length=s, masking=m), special=SP, vocab_size=V) for s in (5, 24) for m in ("mlm", "macbert")),
    UniLM(UniLMConfig(seq_length=24), special=SP, vocab_size=V),
]


@pytest.mark.parametrize("t", TRANSFORMS, ids=repr)
def test_per_sample_call_matches_batch_of_one(t, monkeypatch):
    for seed in range(40):
        sample = random_segment(np.random.default_rng(seed), 30)
        (fast, a), (ref, b) = both(lambda rng: t(sample, rng), seed, monkeypatch)
        assert a == b, f"seed {seed}: different number of draws"
        assert fast.keys() == ref.keys()
        for k in ref:
            assert fast[k].dtype == ref[k].dtype and fast[k].shape == ref[k].shape, (seed, k)
            assert np.array_equal(fast[k], ref[k]), (seed, k)
