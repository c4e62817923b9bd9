import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from ptobj.objectives import intervals
from ptobj.objectives.causal_lm import CausalLM, CausalLMConfig
from ptobj.objectives.sample import CONTRACT_FIELDS, SpecialTokens

SP = SpecialTokens()
EOT, PAD, FIM_PAD = SP.eot, SP.pad, SP.fim_pad
V = 64


def run(ctx, **cfg):
    ctx = np.asarray(ctx, np.int32)
    t = CausalLM(CausalLMConfig(seq_length=len(ctx) - 1, **cfg), special=SP, vocab_size=V)
    return t({"tokens": ctx}, 0)


def test_literal_two_documents():
    # doc A = 20 21 22 <EOT>, doc B = 30 31 <EOT>, then the start of doc C
    out = run([20, 21, 22, EOT, 30, 31, EOT, 40])
    assert out["tokens"].tolist() == [20, 21, 22, EOT, 30, 31, EOT]
    assert out["labels"].tolist() == [21, 22, EOT, 30, 31, EOT, 40]
    assert out["segment_ids"].tolist() == [0, 0, 0, 0, 1, 1, 1]  # an EOT belongs to its document
    assert out["position_ids"].tolist() == [0, 1, 2, 3, 0, 1, 2]
    assert out["kv_start"].tolist() == [0, 0, 0, 0, 4, 4, 4]
    assert out["kv_end"].tolist() == [1, 2, 3, 4, 5, 6, 7]
    assert out["loss_mask"].tolist() == [1.0] * 7
    assert set(CONTRACT_FIELDS) <= set(out)
    assert all(out[f].shape == (7,) for f in CONTRACT_FIELDS)
    assert out["tokens"].dtype == np.int32 and out["loss_mask"].dtype == np.float32


def test_literal_plain_causal_without_document_masking():
    out = run([20, 21, EOT, 30, 31], document_masking=False)
    assert out["segment_ids"].tolist() == [0, 0, 0, 0]
    assert out["position_ids"].tolist() == [0, 1, 2, 3]
    assert out["kv_start"].tolist() == [0, 0, 0, 0]
    assert out["kv_end"].tolist() == [1, 2, 3, 4]


def test_position_reset_can_be_chosen_separately():
    out = run([20, 21, EOT, 30, 31], document_masking=False, reset_position_ids=True)
    assert out["position_ids"].tolist() == [0, 1, 2, 0]
    assert out["kv_start"].tolist() == [0, 0, 0, 0]


def test_eod_mask_loss_and_pads_out_of_loss():
    out = run([20, EOT, 30, PAD, PAD], eod_mask_loss=True)
    # positions: 20->EOT (kept), EOT->30 (masked: input is EOT), 30->PAD, PAD->PAD
    assert out["loss_mask"].tolist() == [1.0, 0.0, 0.0, 0.0]
    # the pad run is a segment of its own: no real token attends to it
    assert out["segment_ids"].tolist() == [0, 0, 1, 2]
    out = run([20, 21, FIM_PAD, FIM_PAD])
    assert out["loss_mask"].tolist() == [1.0, 0.0, 0.0]


def test_key_is_optional_and_unused():
    ctx = np.array([20, 21, EOT, 30, 31], np.int32)
    t = CausalLM(CausalLMConfig(seq_length=4), special=SP, vocab_size=V)
    a, b = t({"tokens": ctx}), t({"tokens": ctx}, 5)
    assert all(np.array_equal(a[k], b[k]) for k in CONTRACT_FIELDS)


@pytest.mark.parametrize(
    "cfg",
    [dict(seq_length=0), dict(seq_length=2.5), dict(seq_length=True), dict(seq_length=4, document_masking=1),
     dict(seq_length=4, reset_position_ids="yes")],
)
def test_bad_config(cfg):
    with pytest.raises(ValueError, match="CausalLMConfig"):
        CausalLMConfig(**cfg)


def test_bad_input():
    t = CausalLM(CausalLMConfig(seq_length=4), special=SP, vocab_size=V)
    with pytest.raises(ValueError, match="seq_length \\+ 1 = 5"):
        t({"tokens": np.arange(20, 24, dtype=np.int32)})
    with pytest.raises(ValueError, match="outside"):
        t({"tokens": np.array([20, 21, 22, 23, V], np.int32)})
    with pytest.raises(ValueError, match="integer"):
        t({"tokens": np.zeros(5, np.float32)})
    with pytest.raises(KeyError, match="tokens"):
        t({"ids": np.zeros(5, np.int32)})


contexts = st.lists(st.sampled_from([EOT, 20, 21, 22, 23]), min_size=2, max_size=40)


@settings(max_examples=150, deadline=None)
@given(contexts, st.booleans())
def test_properties(ctx, masking):
    ctx = np.array(ctx, np.int32)
    out = run(ctx, document_masking=masking)
    assert np.array_equal(out["tokens"], ctx[:-1]) and np.array_equal(out["labels"], ctx[1:])
    seg = out["segment_ids"]
    n = len(seg)
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    if masking:
        # brute force: j <= i and no EOT strictly between j and i's documents
        expect_seg = np.array([np.count_nonzero(ctx[:k] == EOT) for k in range(n)])
        assert np.array_equal(seg, expect_seg)
        reference = (j <= i) & (expect_seg[:, None] == expect_seg[None, :])
        first = np.array([np.flatnonzero(expect_seg == s)[0] for s in expect_seg])
        assert np.array_equal(out["position_ids"], np.arange(n) - first)
    else:
        reference = j <= i
        assert np.array_equal(out["position_ids"], np.arange(n))
    assert np.array_equal(intervals.dense(out["kv_start"], out["kv_end"]), reference)
