"""The FlexAttention and SDPA backends against the reference, through the one API.

On CPU FlexAttention runs its eager path (forward only: it has no CPU backward); the
``gpu`` cases run it compiled, forward and backward. That the compiled function is
built once per shape, not once per mask, is checked with dynamo's compile counter.
"""

import numpy as np
import pytest
import torch

import interval_masks as masks
from ptobj.kernels import AttentionMask, flex, masked_attention, masked_attention_reference

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"


def doc_segments(lengths):
    return np.repeat(np.arange(len(lengths)), lengths).astype(np.int32)


def families(seg):
    starts = np.flatnonzero(np.r_[True, seg[1:] != seg[:-1]])
    ends = np.r_[starts[1:], len(seg)]
    src_end = np.repeat(starts + np.maximum(1, (0.4 * (ends - starts)).astype(int)), ends - starts)
    return {"causal": masks.causal(seg), "bidir": masks.bidirectional(seg), "r2l": masks.right_to_left(seg),
            "s2s": masks.prefix_lm(seg, src_end), "window": masks.sliding_window(seg, 13)}


@pytest.mark.parametrize("kind", ["causal", "bidir", "r2l", "s2s", "window", "empty-rows"])
def test_flex_forward_matches_reference(kind):
    seg = doc_segments([100, 37, 120, 6])  # 263 tokens: three 128-blocks, the last one ragged
    s = len(seg)
    if kind == "empty-rows":
        kv_start, kv_end = masks.causal(seg)
        kv_end[40:60] = kv_start[40:60]
    else:
        kv_start, kv_end = families(seg)[kind]
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, s, 4, 16, generator=gen)
    k, v = (torch.randn(2, s, 2, 16, generator=gen) for _ in range(2))
    mask = AttentionMask.build(kv_start, kv_end, backend="flex")
    out, lse = masked_attention(q, k, v, mask, return_lse=True)
    want, want_lse = masked_attention_reference(q, k, v, kv_start, kv_end, return_lse=True)
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-4)
    seen = torch.isfinite(want_lse)
    torch.testing.assert_close(lse[seen], want_lse[seen], rtol=1e-4, atol=1e-4)
    if kind == "empty-rows":
        assert torch.all(out[:, 40:60] == 0)


def test_flex_compiles_once_per_shape_not_once_per_mask():
    from torch._dynamo.testing import CompileCounter

    counter = CompileCounter()
    compiled = torch.compile(flex._attend, backend=counter, dynamic=False, fullgraph=True)
    q = torch.randn(1, 2, 200, 16)
    for lengths in ([200], [50, 150], [10, 90, 100]):
        kv_start, kv_end = masks.causal(doc_segments(lengths))
        mask = AttentionMask.build(kv_start, kv_end, backend="flex")
        out = compiled(q, q, q, mask.data, 200, 200, 0.25, False, False)
        want = masked_attention_reference(*(t.transpose(1, 2) for t in (q, q, q)), kv_start, kv_end, scale=0.25)
        torch.testing.assert_close(out.transpose(1, 2), want, rtol=1e-4, atol=1e-4)
    assert counter.frame_count == 1
    q2 = torch.randn(1, 2, 130, 16)
    kv_start, kv_end = masks.causal(doc_segments([130]))
    compiled(q2, q2, q2, AttentionMask.build(kv_start, kv_end, backend="flex").data, 130, 130, 0.25, False, False)
    assert counter.frame_count == 2


def test_sdpa_backend_serves_plain_causal_with_gradients():
    s = 40
    kv_start, kv_end = masks.causal(np.zeros(s, np.int32))
    mask = AttentionMask.build(kv_start, kv_end, backend="sdpa")
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(s, 2, 4, 8, generator=gen, requires_grad=True)  # sbhd, GQA 2:1
    k, v = (torch.randn(s, 2, 2, 8, generator=gen, requires_grad=True) for _ in range(2))
    out = masked_attention(q, k, v, mask, layout="sbhd")
    want = masked_attention_reference(q, k, v, kv_start, kv_end, layout="sbhd")
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    want_grads = torch.autograd.grad(want.sum(), (q, k, v))
    for a, b in zip(grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="return_lse"):
        masked_attention(q, k, v, mask, layout="sbhd", return_lse=True)
    with pytest.raises(ValueError, match="plain causal"):
        AttentionMask.build(*masks.causal(doc_segments([20, 20])), backend="sdpa")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("kind", ["causal", "bidir", "r2l", "s2s", "window"])
def test_gpu_flex_forward_and_backward(kind):
    seg = doc_segments([700, 37, 1200, 160])
    s = len(seg)
    kv_start, kv_end = (t.to(DEVICE) for t in families(seg)[kind])
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    q, k, v, do = (torch.randn(2, s, 8, 64, device=DEVICE, generator=gen, dtype=torch.bfloat16)
                   for _ in range(4))
    mask = AttentionMask.build(kv_start, kv_end, backend="flex")
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = masked_attention(*leaves, mask)
    out.backward(do)
    ref_leaves = [t.float().requires_grad_() for t in (q, k, v)]
    ref = masked_attention_reference(*ref_leaves, kv_start, kv_end)
    ref.backward(do.float())
    for got, want in [(out, ref)] + [(a.grad, b.grad) for a, b in zip(leaves, ref_leaves)]:
        assert (got.float() - want).abs().max().item() < 0.05 * want.abs().max().item() + 0.02
