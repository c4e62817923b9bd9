"""The torch reference and the public entry point on CPU, against a per-row oracle."""

import math

import pytest
import torch

from ptobj.kernels import AttentionMask, masked_attention, masked_attention_reference


def attend(q, k, v, start, end, **kw):
    """The public entry point with the reference backend."""
    kv_len = k.shape[0] if kw.get("layout") == "sbhd" else k.shape[1]
    return masked_attention(q, k, v, AttentionMask.build(start, end, backend="reference", kv_len=kv_len), **kw)


def per_row_oracle(q, k, v, kv_start, kv_end, scale):
    """q [b, s, h, d], k/v [b, s_k, h_kv, d]; softmax over each row's visible keys, in float64."""
    b, s, h, d = q.shape
    rep = h // k.shape[2]
    out = torch.zeros(b, s, h, d, dtype=torch.float64)
    lse = torch.full((b, h, s), float("-inf"), dtype=torch.float64)
    for bi in range(b):
        for i in range(s):
            lo, hi = int(kv_start[bi, i]), int(kv_end[bi, i])
            lo, hi = max(lo, 0), min(hi, k.shape[1])
            if hi <= lo:
                continue
            for hh in range(h):
                scores = k[bi, lo:hi, hh // rep].double() @ q[bi, i, hh].double() * scale
                out[bi, i, hh] = torch.softmax(scores, 0) @ v[bi, lo:hi, hh // rep].double()
                lse[bi, hh, i] = torch.logsumexp(scores, 0)
    return out, lse


def random_intervals(b, s, s_k, gen):
    start = torch.randint(-2, s_k, (b, s), generator=gen)
    end = start + torch.randint(-3, s_k // 2 + 3, (b, s), generator=gen)
    return start, end


def test_reference_matches_per_row_oracle_with_gqa_and_empty_rows():
    gen = torch.Generator().manual_seed(0)
    b, s, s_k, h, h_kv, d = 2, 9, 11, 4, 2, 8
    q = torch.randn(b, s, h, d, generator=gen)
    k = torch.randn(b, s_k, h_kv, d, generator=gen)
    v = torch.randn(b, s_k, h_kv, d, generator=gen)
    start, end = random_intervals(b, s, s_k, gen)
    start[0, 3], end[0, 3] = 5, 5  # an empty row
    out, lse = masked_attention_reference(q, k, v, start, end, scale=0.3, return_lse=True)
    want, want_lse = per_row_oracle(q, k, v, start, end, 0.3)
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse.double(), want_lse, rtol=1e-5, atol=1e-5)
    assert torch.all(out[0, 3] == 0)


def test_empty_rows_give_zero_gradients_not_nan():
    q, k, v = (torch.randn(1, 4, 2, 8, requires_grad=True) for _ in range(3))
    start = torch.tensor([0, 2, 0, 1])
    end = torch.tensor([1, 2, 3, 0])  # rows 1 and 3 see nothing
    out = attend(q, k, v, start, end)
    out.sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    assert torch.all(q.grad[0, 1] == 0) and torch.all(q.grad[0, 3] == 0)
    assert torch.all(out[0, [1, 3]] == 0)


def test_sbhd_layout_and_batch_shared_intervals():
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 6, 2, 4, generator=gen) for _ in range(3))
    start, end = torch.zeros(6, dtype=torch.int32), torch.arange(1, 7, dtype=torch.int32)
    bshd = attend(q, k, v, start, end)
    sbhd = attend(*(t.transpose(0, 1) for t in (q, k, v)), start, end, layout="sbhd")
    torch.testing.assert_close(sbhd.transpose(0, 1), bshd)
    causal = torch.nn.functional.scaled_dot_product_attention(
        *(t.transpose(1, 2) for t in (q, k, v)), is_causal=True).transpose(1, 2)
    torch.testing.assert_close(bshd, causal, rtol=1e-5, atol=1e-5)


def test_default_scale_is_inverse_sqrt_head_dim():
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 5, 1, 16, generator=gen) for _ in range(3))
    start, end = torch.zeros(5, dtype=torch.long), torch.full((5,), 5)
    torch.testing.assert_close(attend(q, k, v, start, end), attend(q, k, v, start, end, scale=1 / math.sqrt(16)))
    assert not torch.allclose(attend(q, k, v, start, end), attend(q, k, v, start, end, scale=1.0))


def test_bad_options_are_named():
    q = torch.randn(1, 4, 2, 8)
    start, end = torch.zeros(4, dtype=torch.int32), torch.ones(4, dtype=torch.int32)
    with pytest.raises(ValueError, match="layout"):
        attend(q, q, q, start, end, layout="bhsd")
    with pytest.raises(TypeError, match="AttentionMask"):
        masked_attention(q, q, q, (start, end))


def test_bad_shapes_are_named():
    q = torch.randn(1, 4, 3, 8)
    kv = torch.randn(1, 4, 2, 8)
    ok = torch.zeros(4, dtype=torch.int32)
    with pytest.raises(ValueError, match="multiple"):
        attend(q, kv, kv, ok, ok + 1)
    with pytest.raises(ValueError, match="kv_end"):
        attend(q, q, q, ok, torch.ones(5, dtype=torch.int32))
    with pytest.raises(TypeError, match="kv_start"):
        attend(q, q, q, ok.float(), ok + 1)
    with pytest.raises(ValueError, match="mask is for 5 queries"):
        masked_attention(q, q, q, AttentionMask.build(torch.zeros(5, dtype=torch.int32), torch.ones(5, dtype=torch.int32)))


def test_import_does_not_pull_triton():
    import subprocess
    import sys

    code = ("import sys, torch; from ptobj import kernels; m = kernels.AttentionMask.build(torch.zeros(4, dtype=torch.int32), "
            "torch.arange(1, 5), backend='triton'); assert 'triton' not in sys.modules, 'triton imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
