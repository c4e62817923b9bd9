"""Every objective has one implementation, over a batch of rows, each row drawing from its own
stream: a row's output is the same alone, in any batch, at any place in it, and a single
sample is exactly the batch of one (short, empty and over-long segments, reserved ids)."""

import numpy as np
import pytest

from ptobj.objectives.causal_lm import CausalLM, CausalLMConfig
from ptobj.objectives.compose import MixByWeight
from ptobj.objectives.fim import FIM, FIMConfig
from ptobj.objectives.macbert import MacBERT, MacBERTConfig
from ptobj.objectives.mlm import MLM, MLMConfig
from ptobj.objectives.sample import SpecialTokens, row, stack
from ptobj.objectives.sentence_pairs import NSP, SOP, NSPConfig, SOPConfig
from ptobj.objectives.similar_words import SimilarWords
from ptobj.objectives.spanbert import SpanBERT, SpanBERTConfig
from ptobj.objectives.streams import RowStreams
from ptobj.objectives.unilm import UniLM, UniLMConfig

SP = SpecialTokens()
V = 120
TABLE = SimilarWords.from_neighbours({(20,): [(21,), (22,)], (30, 31): [(32, 33)], (40,): [(41,)]},
                                     extra_words=[(50, 51), (52,)])


def segment(g, max_len):
    n = int(g.integers(0, max_len + 1))
    tokens = g.integers(SP.first_regular, V, n).astype(np.int32)
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


def context(g, S):
    ctx = g.integers(SP.first_regular, V, S + 1).astype(np.int32)
    ctx[g.random(S + 1) < 0.1] = SP.eot
    return {"tokens": ctx}


ENCODERS = [
    *(MLM(MLMConfig(seq_length=s, whole_word=w, ngram_probs=ng, per_span=ps), special=SP, vocab_size=V)
      for s in (3, 24) for w in (False, True) for ng, ps in (((1.0,), False), ((0.5, 0.5), True))),
    *(SpanBERT(SpanBERTConfig(seq_length=s, per_span=ps), special=SP, vocab_size=V) for s in (3, 24) for ps in (True, False)),
    *(MacBERT(MacBERTConfig(seq_length=s, ngram_probs=ng), special=SP, vocab_size=V, similar=tb)
      for s in (3, 24) for ng in ((1.0,), (0.4, 0.3, 0.2, 0.1)) for tb in (TABLE, None)),
    *(SOP(SOPConfig(seq_length=s, masking=m, ngram_probs=ng), special=SP, vocab_size=V, similar=TABLE)
      for s in (5, 24) for m in ("mlm", "macbert", "none") for ng in ((1.0,), (0.4, 0.3, 0.2, 0.1))),
    *(NSP(NSPConfig(seq_length=s, masking=m), special=SP, vocab_size=V) for s in (5, 24) for m in ("mlm", "macbert")),
    UniLM(UniLMConfig(seq_length=24), special=SP, vocab_size=V),
    UniLM(UniLMConfig(seq_length=24, whole_word=True, per_span=True), special=SP, vocab_size=V),
    MixByWeight([(1, MacBERT(MacBERTConfig(seq_length=24), special=SP, vocab_size=V, similar=TABLE)),
                 (1, SOP(SOPConfig(seq_length=24), special=SP, vocab_size=V))],
                fill={"sop_label": ("scalar", -1)}, tag_field="objective_id"),
]
DECODERS = [
    CausalLM(CausalLMConfig(seq_length=16), special=SP, vocab_size=V),
    FIM(FIMConfig(seq_length=16, fim_rate=0.7, split_level="token"), special=SP, vocab_size=V),
]


def check_rows(t, samples, seed, epoch):
    B = len(samples)
    index = np.arange(100, 100 + B) * 7
    keys = RowStreams.for_rows(seed, epoch, index)
    out = t.batch(samples, keys)
    for b, s in enumerate(samples):
        alone = t(s, seed, epoch=epoch, index=int(index[b]))
        got = row(out, b)
        assert got.keys() == alone.keys()
        for k in alone:
            assert np.array_equal(got[k], alone[k]), (repr(t), b, k)
    order = np.random.default_rng(seed).permutation(B)
    shuffled = t.batch([samples[i] for i in order], keys.take(order))
    for k in out:
        assert np.array_equal(shuffled[k], out[k][order]), (repr(t), k)
    half = t.batch(stack(samples[: B // 2 + 1]), keys.take(np.arange(B // 2 + 1)))   # a stacked sub-batch
    for k in out:
        assert np.array_equal(half[k], out[k][: B // 2 + 1]), (repr(t), k)


@pytest.mark.parametrize("t", ENCODERS, ids=lambda t: repr(t)[:60])
def test_encoder_rows_are_their_samples_alone(t):
    for seed in range(6):
        g = np.random.default_rng(seed)
        samples = [segment(g, int(g.choice([4, 30, 60]))) for _ in range(int(g.integers(2, 7)))]
        check_rows(t, samples, seed, epoch=seed % 3)


@pytest.mark.parametrize("t", DECODERS, ids=lambda t: type(t).__name__)
def test_decoder_rows_are_their_samples_alone(t):
    for seed in range(6):
        g = np.random.default_rng(seed)
        check_rows(t, [context(g, 16) for _ in range(5)], seed, epoch=1)
