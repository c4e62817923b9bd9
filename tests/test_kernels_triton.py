"""The Triton kernel, forward and backward, against the float32 torch reference.

Without a GPU the kernels run through Triton's interpreter (TRITON_INTERPRET=1, set
here before triton is imported), at tiny shapes and 16x16 tiles so that several tiles,
fully visible tiles, partly masked tiles and skipped tiles all occur. With a GPU the
same cases run compiled, plus bigger ones marked ``gpu``.

Error bound, as flash-attention's tests do: the kernel's error against the float32
reference may be at most twice what torch itself gets computing in the same low
precision, plus a small absolute floor.
"""

import os

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from kernels import masked_attention, masked_attention_reference, masks  # noqa: E402
from kernels import triton_attention  # noqa: E402

DEVICE = "cuda" if HAS_CUDA else "cpu"
if not HAS_CUDA and not triton_attention.INTERPRET:  # nothing below could run: fail, never skip
    raise RuntimeError("no GPU and triton was imported without TRITON_INTERPRET=1")
FLOOR = {torch.float16: 2e-3, torch.bfloat16: 1e-2}


def doc_segments(lengths, s):
    seg = np.repeat(np.arange(len(lengths)), lengths)[:s]
    return np.pad(seg, (0, s - len(seg)), mode="edge").astype(np.int32)


def max_err(a, b):
    return (a.float() - b.float()).abs().max().item()


def run_case(b, s, h, h_kv, d, kv_start, kv_end, dtype, layout="bshd", s_k=None, scale=None, seed=0):
    """Compare output, log-sum-exp and dq/dk/dv with the reference; returns the errors."""
    s_k = s if s_k is None else s_k
    gen = torch.Generator().manual_seed(seed)
    shape_q, shape_kv = (b, s, h, d), (b, s_k, h_kv, d)
    if layout == "sbhd":
        shape_q, shape_kv = (s, b, h, d), (s_k, b, h_kv, d)
    q32, k32, v32 = (torch.randn(shp, generator=gen) for shp in (shape_q, shape_kv, shape_kv))
    do32 = torch.randn(shape_q, generator=gen)
    kv_start, kv_end = kv_start.to(DEVICE), kv_end.to(DEVICE)

    def grads(fn, dt, **kw):
        q, k, v = (t.to(DEVICE, dt).clone().requires_grad_() for t in (q32, k32, v32))
        out, lse = fn(q, k, v, kv_start, kv_end, scale=scale, layout=layout, return_lse=True, **kw)
        out.backward(do32.to(DEVICE, dt))
        return [out, lse, q.grad, k.grad, v.grad]

    kernel = grads(masked_attention, dtype, backend="triton")
    exact = grads(masked_attention_reference, torch.float32)
    low = grads(masked_attention_reference, dtype, compute_dtype=dtype)
    names = ["out", "lse", "dq", "dk", "dv"]
    errors = {}
    for name, got, ref, ref_low in zip(names, kernel, exact, low):
        assert got.shape == ref.shape, name
        if name != "lse":
            assert got.dtype == dtype, name
        finite = torch.isfinite(ref)
        assert torch.equal(torch.isfinite(got), finite), f"{name}: non-finite entries differ"
        err = max_err(got[finite], ref[finite]) if finite.any() else 0.0
        err_low = max_err(ref_low[finite], ref[finite]) if finite.any() else 0.0
        bound = 2 * err_low + FLOOR[dtype]
        assert err <= bound, f"{name}: kernel err {err:.3g} > bound {bound:.3g} (torch {dtype} err {err_low:.3g})"
        errors[name] = (err, err_low)
    return kernel, errors


def family(kind, seg, s):
    if kind == "causal":
        return masks.causal(seg)
    if kind == "bidir":
        return masks.bidirectional(seg)
    if kind == "r2l":
        return masks.right_to_left(seg)
    if kind == "s2s":
        starts = np.flatnonzero(np.r_[True, seg[1:] != seg[:-1]])
        ends = np.r_[starts[1:], s]
        src_end = starts + np.maximum(1, (0.4 * (ends - starts)).astype(int))
        return masks.prefix_lm(seg, np.repeat(src_end, ends - starts))
    if kind == "window":
        return masks.sliding_window(seg, 11)
    raise ValueError(kind)


CASES = [  # kind, b, s, h, h_kv, d, dtype, layout
    ("causal", 1, 53, 4, 2, 32, torch.bfloat16, "bshd"),
    ("bidir", 1, 70, 2, 2, 64, torch.float16, "sbhd"),
    ("r2l", 1, 80, 2, 1, 16, torch.bfloat16, "bshd"),
    ("s2s", 2, 45, 2, 2, 32, torch.float16, "sbhd"),
    ("window", 1, 61, 2, 2, 16, torch.bfloat16, "bshd"),
]


@pytest.mark.parametrize("kind, b, s, h, h_kv, d, dtype, layout", CASES, ids=[c[0] for c in CASES])
def test_mask_families_packed_documents(kind, b, s, h, h_kv, d, dtype, layout):
    seg = doc_segments([19, 7, 30, 40], s)
    kv_start, kv_end = family(kind, seg, s)
    run_case(b, s, h, h_kv, d, kv_start, kv_end, dtype, layout)


def test_random_intervals_empty_rows_and_longer_keys():
    """Arbitrary intervals (not one family), out-of-range bounds, empty rows, s_k != s."""
    b, s, s_k = 2, 37, 50
    gen = torch.Generator().manual_seed(3)
    kv_start = torch.randint(-3, s_k, (b, s), generator=gen)
    kv_end = kv_start + torch.randint(-4, 30, (b, s), generator=gen)
    kv_start[:, :5], kv_end[:, :5] = 7, 7  # a run of empty rows
    kernel, _ = run_case(b, s, 2, 1, 32, kv_start, kv_end, torch.bfloat16, s_k=s_k, scale=0.2, seed=1)
    out, lse, dq = kernel[:3]
    empty = (kv_end.clamp(max=s_k) <= kv_start.clamp(min=0)).to(DEVICE)
    assert empty.any()
    assert torch.all(out[empty] == 0) and torch.all(dq[empty] == 0)
    assert torch.all(torch.isneginf(lse.transpose(1, 2)[empty]))


def test_every_row_empty_gives_zeros_without_nan():
    kv = torch.full((40,), 5, dtype=torch.int32)
    q, k, v = (torch.randn(1, 40, 2, 16, device=DEVICE, dtype=torch.float16, requires_grad=True)
               for _ in range(3))
    out = masked_attention(q, k, v, kv, kv, backend="triton")
    out.float().sum().backward()
    assert torch.all(out == 0)
    for t in (q, k, v):
        assert torch.all(t.grad == 0)


def test_head_dim_not_a_power_of_two():
    seg = doc_segments([30, 20], 50)
    kv_start, kv_end = masks.causal(seg)
    run_case(1, 50, 2, 1, 48, kv_start, kv_end, torch.float16)


def test_query_ranges_per_key_group_cover_exactly_the_rows_that_see_each_group():
    gen = torch.Generator().manual_seed(4)
    s, s_k, g = 70, 90, triton_attention.ROW_GROUP
    kv_start = torch.randint(-2, s_k, (3, s), generator=gen, dtype=torch.int32)
    kv_end = kv_start + torch.randint(-5, 40, (3, s), generator=gen, dtype=torch.int32)
    first, last = triton_attention.query_ranges_per_key_group(kv_start, kv_end, s_k)
    visible = masks.dense(kv_start, kv_end, s_k)  # [b, s, s_k]
    for bi in range(3):
        for kg in range(first.shape[1]):
            rows = torch.nonzero(visible[bi, :, kg * g:(kg + 1) * g].any(1)).flatten()
            if len(rows) == 0:
                assert first[bi, kg] >= last[bi, kg]
                continue
            assert first[bi, kg] <= rows.min() and rows.max() < last[bi, kg]
            assert first[bi, kg] % g == 0 and rows.min() - first[bi, kg] < g


def test_launcher_rejects_float32_and_mismatched_devices():
    q = torch.randn(1, 8, 2, 16, device=DEVICE)
    kv = torch.zeros(8, dtype=torch.int32)
    with pytest.raises(TypeError, match="float16 or bfloat16"):
        masked_attention(q, q, q, kv, kv + 1, backend="triton")
    q = q.to(torch.bfloat16)
    k = torch.empty_like(q, device="meta")  # a second device on any machine
    with pytest.raises(ValueError, match="one device"):
        masked_attention(q, k, k, kv, kv + 1, backend="triton")


gpu = pytest.mark.gpu


@gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("kind", ["causal", "bidir", "r2l", "s2s", "window"])
@pytest.mark.parametrize("d, dtype", [(64, torch.bfloat16), (128, torch.float16), (128, torch.bfloat16)])
def test_gpu_mask_families_bigger_shapes(kind, d, dtype):
    s = 1031
    seg = doc_segments([300, 17, 500, 214], s)
    kv_start, kv_end = family(kind, seg, s)
    run_case(2, s, 8, 2, d, kv_start, kv_end, dtype, layout="sbhd" if d == 128 else "bshd")


@gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_gpu_random_intervals_with_empty_rows():
    b, s = 2, 777
    gen = torch.Generator().manual_seed(5)
    kv_start = torch.randint(-3, s, (b, s), generator=gen)
    kv_end = kv_start + torch.randint(-50, 400, (b, s), generator=gen)
    run_case(b, s, 4, 4, 64, kv_start, kv_end, torch.bfloat16)
