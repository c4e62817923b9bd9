"""The Triton kernels, forward and backward, against the float32 torch reference.

Without a GPU the kernels run through Triton's interpreter (TRITON_INTERPRET=1, set in
conftest before triton is imported), at tiny shapes with 16-row block tables, so several
tiles, full tiles, partial tiles, skipped tiles and the heaviest-first order all occur.
With a GPU the same cases run compiled, plus bigger ones marked ``gpu`` (every shipped
tile, S = 1 / 127 / 4097, GQA 8:1, int64 offsets), which ``bench/gpu_check.sh`` runs.

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

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

import interval_masks as masks  # noqa: E402
from ptobj.kernels import AttentionMask, masked_attention, masked_attention_reference, tiles  # noqa: E402
from ptobj.kernels import triton_attention  # noqa: E402
from ptobj.kernels.triton_attention import Tile  # noqa: E402

DEVICE = "cuda" if HAS_CUDA else "cpu"
if not HAS_CUDA and not triton_attention.INTERPRET:  # nothing below could run: fail, never skip
    raise RuntimeError("no GPU and triton was imported without TRITON_INTERPRET=1")
FLOOR = {torch.float16: 2e-3, torch.bfloat16: 1e-2}
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")


def doc_segments(lengths, s):
    seg = np.repeat(np.arange(len(lengths)), lengths)[:s]
    return np.pad(seg, (0, s - len(seg)), mode="edge").astype(np.int32)


def max_err(a, b):
    return (a.float() - b.float()).abs().max().item()


def ours(q, k, v, kv_start, kv_end, *, scale, layout, tiles=None, fused=False, tiling=None):
    """Our kernels through the public entry point, or with explicit tiles."""
    s_k = k.shape[0 if layout == "sbhd" else 1]
    mask = AttentionMask.build(kv_start, kv_end, backend="triton", kv_len=s_k, tiling=tiling)
    if tiles is None:
        return masked_attention(q, k, v, mask, scale=scale, layout=layout, return_lse=True,
                                deterministic=not fused)
    qb, kb, vb = (t.transpose(0, 1) if layout == "sbhd" else t for t in (q, k, v))
    scale = triton_attention.default_scale(q.shape[-1]) if scale is None else scale
    out, lse2 = triton_attention.attention(qb, kb, vb, mask, scale, fused_dq=fused, tiles=tiles)
    out = out.transpose(0, 1) if layout == "sbhd" else out
    return out, triton_attention.lse2_to_natural(lse2)


def run_case(b, s, h, h_kv, d, kv_start, kv_end, dtype, layout="bshd", s_k=None, scale=None, seed=0, **kw):
    """Compare output, log-sum-exp and dq/dk/dv with the reference; returns our tensors."""
    s_k = s if s_k is None else s_k
    gen = torch.Generator().manual_seed(seed)
    shape_q, shape_kv = (b, s, h, d), (b, s_k, h_kv, d)
    if layout == "sbhd":
        shape_q, shape_kv = (s, b, h, d), (s_k, b, h_kv, d)
    q32, k32, v32 = (torch.randn(shp, generator=gen) for shp in (shape_q, shape_kv, shape_kv))
    do32 = torch.randn(shape_q, generator=gen)
    kv_start, kv_end = kv_start.to(DEVICE), kv_end.to(DEVICE)

    def grads(fn, dt, **fkw):
        q, k, v = (t.to(DEVICE, dt).clone().requires_grad_() for t in (q32, k32, v32))
        out, lse = fn(q, k, v, kv_start, kv_end, scale=scale, layout=layout, **fkw)
        out.backward(do32.to(DEVICE, dt))
        return [out, lse, q.grad, k.grad, v.grad]

    kernel = grads(ours, dtype, **kw)
    exact = grads(masked_attention_reference, torch.float32, return_lse=True)
    low = grads(masked_attention_reference, dtype, compute_dtype=dtype, return_lse=True)
    for name, got, ref, ref_low in zip(["out", "lse", "dq", "dk", "dv"], kernel, exact, low):
        assert got.shape == ref.shape, name
        if name != "lse":
            assert got.dtype == dtype, name
        finite = torch.isfinite(ref)
        assert torch.equal(torch.isfinite(got), finite), f"{name}: non-finite entries differ"
        err = max_err(got[finite], ref[finite]) if finite.any() else 0.0
        err_low = max_err(ref_low[finite], ref[finite]) if finite.any() else 0.0
        bound = 2 * err_low + FLOOR[dtype]
        assert err <= bound, f"{name}: kernel err {err:.3g} > bound {bound:.3g} (torch {dtype} err {err_low:.3g})"
    return kernel


FAMILIES = list(masks.FAMILIES)
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
    kv_start, kv_end = masks.family(kind, seg, window=11)
    run_case(b, s, h, h_kv, d, kv_start, kv_end, dtype, layout)


# Tiles bigger than the 16-row table group (groups combined per tile), two tiles per
# scheduling unit, half-width partial tiles, and the fused-dQ dK/dV kernel.
TILE_SETS = {
    "wide": dict(fwd=Tile(32, 16, 4, 1), dq=Tile(32, 32, 4, 1, split=2), dkdv=Tile(32, 32, 4, 1),
                 dkdv_dq=Tile(32, 32, 4, 1, split=2)),
    "mixed": dict(fwd=Tile(16, 32, 4, 1, split=2), dq=Tile(16, 16, 4, 1), dkdv=Tile(32, 16, 4, 1, split=2),
                  dkdv_dq=Tile(16, 16, 4, 1)),
}


@pytest.mark.parametrize("fused", [False, True], ids=["split-dq", "fused-dq"])
@pytest.mark.parametrize("tile_set", sorted(TILE_SETS))
def test_tile_shapes_and_fused_dq(tile_set, fused):
    s = 75
    seg = doc_segments([37, 5, 33], s)
    kv_start, kv_end = masks.family("s2s" if fused else "causal", seg, window=11)
    run_case(2, s, 4, 2, 32, kv_start, kv_end, torch.bfloat16, "sbhd", tiles=TILE_SETS[tile_set], fused=fused)


def test_random_intervals_empty_rows_and_longer_keys():
    """Arbitrary intervals (not one family), out-of-range bounds, empty rows, s_k != s."""
    b, s, s_k = 2, 37, 50
    gen = torch.Generator().manual_seed(3)
    kv_start = torch.randint(-3, s_k, (b, s), generator=gen)
    kv_end = kv_start + torch.randint(-4, 30, (b, s), generator=gen)
    kv_start[:, :5], kv_end[:, :5] = 7, 7  # a run of empty rows
    out, lse, dq = run_case(b, s, 2, 1, 32, kv_start, kv_end, torch.bfloat16, s_k=s_k, scale=0.2, seed=1)[:3]
    empty = (kv_end.clamp(max=s_k) <= kv_start.clamp(min=0)).to(DEVICE)
    assert empty.any()
    assert torch.all(out[empty] == 0) and torch.all(dq[empty] == 0)
    assert torch.all(torch.isneginf(lse.transpose(1, 2)[empty]))


def test_every_row_empty_gives_zeros_without_nan():
    kv = torch.full((40,), 5, dtype=torch.int32)
    q, k, v = (torch.randn(1, 40, 2, 16, device=DEVICE, dtype=torch.float16, requires_grad=True)
               for _ in range(3))
    out = masked_attention(q, k, v, AttentionMask.build(kv, kv, backend="triton"))
    out.float().sum().backward()
    assert torch.all(out == 0)
    for t in (q, k, v):
        assert torch.all(t.grad == 0)


def test_head_dim_not_a_power_of_two():
    seg = doc_segments([30, 20], 50)
    kv_start, kv_end = masks.causal(seg)
    run_case(1, 50, 2, 1, 48, kv_start, kv_end, torch.float16)


def test_two_runs_are_bitwise_identical():
    seg = doc_segments([20, 25], 45)
    kv_start, kv_end = masks.causal(seg)
    first = run_case(1, 45, 2, 2, 16, kv_start, kv_end, torch.bfloat16)
    second = run_case(1, 45, 2, 2, 16, kv_start, kv_end, torch.bfloat16)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_unaligned_views_are_copied_for_the_descriptors():
    """A q that starts one element into its storage cannot feed a tensor descriptor."""
    s, h, d = 24, 2, 16
    kv_start, kv_end = masks.causal(doc_segments([24], s))
    base = torch.randn(1 + s * h * d, device=DEVICE, dtype=torch.float16)
    q = base[1:].view(1, s, h, d)
    k, v = (torch.randn(1, s, h, d, device=DEVICE, dtype=torch.float16) for _ in range(2))
    mask = AttentionMask.build(kv_start.to(DEVICE), kv_end.to(DEVICE), backend="triton")
    got = masked_attention(q, k, v, mask)
    want = masked_attention_reference(q.float(), k.float(), v.float(), kv_start, kv_end)
    assert max_err(got, want) < 5e-3


def test_launcher_rejects_what_it_cannot_run():
    q = torch.randn(1, 8, 2, 16, device=DEVICE)
    kv = torch.zeros(8, dtype=torch.int32)
    mask = AttentionMask.build(kv, kv + 1, backend="triton")
    with pytest.raises(TypeError, match="float16 or bfloat16"):
        masked_attention(q, q, q, mask)
    half = torch.randn(1, 8, 2, 12, device=DEVICE, dtype=torch.float16)
    with pytest.raises(ValueError, match="multiple of 8"):
        masked_attention(half, half, half, mask)
    with pytest.raises(ValueError, match="built for 'triton'"):
        triton_attention.attention(q.half(), q.half(), q.half(), AttentionMask.build(kv, kv + 1), 0.1)
    q = q.to(torch.bfloat16)
    k = torch.empty_like(q, device="meta")  # a second device on any machine
    with pytest.raises(ValueError, match="one device"):
        masked_attention(q, k, k, mask)


# ----------------------------------------------------------------------------- jit helpers


@triton.jit
def _offset_probe(OUT, row, stride):
    tl.store(OUT, triton_attention._row_offset(row, stride))


def test_row_offsets_are_int64_past_two_to_the_31():
    """sbhd rows are B*H*D elements apart: row * stride passes 2^31 long before S does."""
    out = torch.zeros(1, dtype=torch.int64, device=DEVICE)
    row, stride = 1_050_624, 2048  # S of the gpu test below, its sbhd row stride (B=1, H=16, D=128)
    _offset_probe[(1,)](out, row, stride)
    assert int(out) == row * stride > 2**31


@triton.jit
def _tile_ranges_probe(OUT, RANGES, n_groups, far, GROUPS: tl.constexpr, FINE: tl.constexpr, STEP: tl.constexpr):
    t = tl.program_id(0)
    lo, mid_lo, mid_hi, hi = triton_attention._tile_ranges(RANGES, 0, t * GROUPS, n_groups, far, GROUPS, FINE, STEP)
    tl.store(OUT + t * 4, lo)
    tl.store(OUT + t * 4 + 1, mid_lo)
    tl.store(OUT + t * 4 + 2, mid_hi)
    tl.store(OUT + t * 4 + 3, hi)


@pytest.mark.parametrize("groups, fine, step", [(1, 16, 16), (2, 16, 32), (4, 8, 32)])
def test_kernel_tile_rule_equals_the_torch_one(groups, fine, step):
    """The kernels' ``_tile_ranges`` and ``ptobj.kernels.tiles.tile_ranges`` (used by Flex and the
    table tests) are one rule."""
    gen = torch.Generator().manual_seed(groups)
    s = 90
    kv_start = torch.randint(-3, s, (1, s), generator=gen)
    kv_end = kv_start + torch.randint(-4, 50, (1, s), generator=gen)
    rows = tiles.row_group_ranges(*tiles.clamp_intervals(kv_start, kv_end, s), 8, s)
    want = tiles.tile_ranges(rows, groups, step, s, fine=fine)[0]
    out = torch.full(want.shape, -1, dtype=torch.int32, device=DEVICE)
    _tile_ranges_probe[(want.shape[0],)](out, rows.to(DEVICE).contiguous(), rows.shape[1], s, groups, fine, step)
    assert torch.equal(out.cpu(), want)


# ----------------------------------------------------------------------------- GPU


def first_tiles(d):
    """The first shipped tile of every kernel: GPU cases pin them (no autotuning, few compiles);
    test_gpu_every_shipped_tile covers the others."""
    return {name: per[triton_attention.head_dim_class(d)][0] for name, per in triton_attention.CANDIDATES.items()}


@gpu
@needs_cuda
@pytest.mark.parametrize("kind", FAMILIES)
@pytest.mark.parametrize("s", [1, 127, 4097])
@pytest.mark.parametrize("d, dtype, layout", [(64, torch.bfloat16, "bshd"), (128, torch.float16, "sbhd"),
                                              (128, torch.bfloat16, "bshd")])
def test_gpu_mask_families(kind, s, d, dtype, layout):
    seg = doc_segments([s // 3 + 1, 17, s // 2, s], s)
    kv_start, kv_end = masks.family(kind, seg, window=11)
    run_case(1 if s > 1000 else 2, s, 8, 1 if d == 128 else 8, d, kv_start, kv_end, dtype, layout,
             tiles=first_tiles(d))


@gpu
@needs_cuda
@pytest.mark.parametrize("d", [64, 128])
def test_gpu_every_shipped_tile(d):
    """Each candidate the autotuner may pick, on its own, dense and fused dQ alike."""
    s = 1031
    seg = doc_segments([300, 17, 500, 214], s)
    kv_start, kv_end = masks.family("s2s", seg, window=11)
    cls = triton_attention.head_dim_class(d)
    for name in ("fwd", "dq", "dkdv", "dkdv_dq"):
        for tile in triton_attention.CANDIDATES[name][cls][1:]:
            run_case(2, s, 8, 2, d, kv_start, kv_end, torch.bfloat16, "sbhd", tiles={**first_tiles(d), name: tile},
                     fused=name == "dkdv_dq")
    for fused in (False, True):
        run_case(2, s, 8, 2, d, kv_start, kv_end, torch.bfloat16, "sbhd", tiles=first_tiles(d), fused=fused)


@gpu
@needs_cuda
def test_gpu_random_intervals_empty_rows_gqa_8_to_1_and_determinism():
    b, s = 2, 777
    gen = torch.Generator().manual_seed(5)
    kv_start = torch.randint(-3, s, (b, s), generator=gen)
    kv_end = kv_start + torch.randint(-50, 400, (b, s), generator=gen)
    first = run_case(b, s, 16, 2, 64, kv_start, kv_end, torch.bfloat16, tiles=first_tiles(64))
    second = run_case(b, s, 16, 2, 64, kv_start, kv_end, torch.bfloat16, tiles=first_tiles(64))
    for a, b_ in zip(first, second):
        assert torch.equal(a, b_)
    empty = (kv_end.clamp(max=s) <= kv_start.clamp(min=0)).to(DEVICE)
    assert empty.any() and torch.all(first[0][empty] == 0) and torch.all(first[2][empty] == 0)
    assert torch.isfinite(first[3]).all() and torch.isfinite(first[4]).all()


@gpu
@needs_cuda
def test_gpu_offsets_past_two_to_the_31():
    """sbhd with S*B*H*D > 2^31 (about 4.3 GB per tensor): the last document's rows, keys
    and gradients against the reference on that document alone."""
    h, d, doc = 16, 128, 1024
    s = 2**20 + 2048
    assert s * h * d > 2**31
    seg = np.repeat(np.arange(s // doc + 1), doc)[:s].astype(np.int32)
    kv_start, kv_end = masks.causal(seg, device=DEVICE)
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    q, k, v, do = (torch.randn(s, 1, h, d, device=DEVICE, dtype=torch.bfloat16, generator=gen) for _ in range(4))
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    mask = AttentionMask.build(kv_start, kv_end, backend="triton")
    qb, kb, vb = (t.transpose(0, 1) for t in (q, k, v))
    out = triton_attention.attention(qb, kb, vb, mask, d ** -0.5, tiles=first_tiles(d))[0].transpose(0, 1)
    out.backward(do)
    last = slice(s - doc, s)
    tail = [t[last].detach().float().requires_grad_() for t in (q, k, v)]
    ref = masked_attention_reference(*tail, kv_start[last] - (s - doc), kv_end[last] - (s - doc), layout="sbhd")
    ref.backward(do[last].float())
    for got, want in ((out[last], ref), (q.grad[last], tail[0].grad), (k.grad[last], tail[1].grad),
                      (v.grad[last], tail[2].grad)):
        assert torch.isfinite(got).all()
        assert max_err(got, want) < 0.05 * want.abs().max().item() + 0.02
