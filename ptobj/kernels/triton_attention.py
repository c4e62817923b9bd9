"""Fused row-interval attention in Triton: forward, dQ and dK/dV.

Query i of batch row b sees keys j with ``kv_start[b, i] <= j < kv_end[b, i]``. The
kernels never look at the intervals to decide what to visit: an ``AttentionMask``
(``ptobj.kernels.attention_mask``), built once per micro-batch, gives every query tile its
key range split into partial / full / partial parts, every key tile its query range
split the same way, and both tile orders, heaviest first. So each kernel runs three
plain loops, masked / unmasked / masked, with no data-dependent branch inside, and
Triton software-pipelines all three; the intervals are read only for the masked ones.

Backward: ``delta = rowsum(dO * O)``, then dK/dV per key tile (over every query head of
its key/value group) and, by default, dQ per query tile in a separate kernel, which is
deterministic. ``fused_dq=True`` accumulates dQ inside the dK/dV kernel with float32
atomics instead (one matmul less per tile pair, summation order not fixed).

Tiles move through tensor descriptors (TMA on Hopper) over the 4-D [b, s, h, d] view
of q/k/v/o in either layout, so tile bases are coordinates, not 32-bit offsets; the
remaining pointer arithmetic forms its bases in int64.

Internally the log-sum-exp is kept in base 2 and is ``+inf`` for rows that see
nothing, so that ``exp2(s - lse)`` is exactly 0 there: such rows give zero output and
zero gradients.

Order in this file: jit helpers -> kernels -> tile candidates -> launch plans ->
autograd.Function. The torch reference is ``ptobj.kernels.reference``; the public entry
point ``ptobj.kernels.attention.masked_attention``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from ptobj.extras import require

require("train", "torch", "triton", by=__name__)

import torch
import triton
import triton.language as tl
from triton import knobs
from triton.tools.tensor_descriptor import TensorDescriptor

from .attention_mask import AttentionMask

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
# Under TRITON_INTERPRET=1 the kernels run on CPU tensors through numpy, whose bf16 dot
# is wrong in triton 3.9: operands are widened to fp32 there.
INTERPRET = bool(knobs.runtime.interpret)


# ----------------------------------------------------------------------------- jit helpers


@triton.jit
def _dot(a, b, UPCAST: tl.constexpr):
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b)


@triton.jit
def _dot_acc(a, b, acc, UPCAST: tl.constexpr):
    """acc + a @ b, accumulated in place (no second accumulator-sized result)."""
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc)


@triton.jit
def _row_offset(row, stride):
    """Element offset of ``row``, in int64: row * stride passes 2^31 on long sequences."""
    return row.to(tl.int64) * stride


@triton.jit
def _load_tile(desc, b, row0, h, ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    """[ROWS, BLOCK_D] from a [b, s, h, d] descriptor; rows/columns outside read as 0.
    For tiles loaded inside loops: the pipeliner keeps them in shared memory."""
    return desc.load([b, row0, h, 0]).reshape(ROWS, BLOCK_D)


@triton.jit
def _load_rows(X, stride_b, stride_s, stride_h, b, row0, h, n_rows, HEAD_DIM: tl.constexpr,
               ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    """[ROWS, BLOCK_D] of a [b, s, h, d] tensor by pointers, int64 offsets; rows past ``n_rows``
    and columns past HEAD_DIM read as 0. For the one tile a program keeps for its whole
    life: loaded this way (not through a reshaped descriptor tile) it stays a shared-memory
    matmul operand instead of taking registers."""
    rows = row0 + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_D)
    base = X + _row_offset(b, stride_b) + _row_offset(h, stride_h)
    ptrs = base + _row_offset(rows, stride_s)[:, None] + cols[None, :]
    return tl.load(ptrs, mask=(rows < n_rows)[:, None] & (cols < HEAD_DIM)[None, :], other=0.0)


@triton.jit
def _store_tile(desc, b, row0, h, x, ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    desc.store([b, row0, h, 0], x.to(desc.dtype).reshape(1, ROWS, 1, BLOCK_D))


@triton.jit
def _tile_start(ORDER, order_row, pid, BLOCK: tl.constexpr, UNIT: tl.constexpr):
    """First row/key of program ``pid``'s tile: units in the mask's heaviest-first order,
    UNIT // BLOCK consecutive tiles per unit."""
    PER_UNIT: tl.constexpr = UNIT // BLOCK
    unit = tl.load(ORDER + order_row + pid // PER_UNIT)
    return unit * UNIT + (pid % PER_UNIT) * BLOCK


@triton.jit
def _tile_ranges(RANGES, ranges_row, first_group, n_groups, far, GROUPS: tl.constexpr, FINE: tl.constexpr,
                 STEP: tl.constexpr):
    """[lo, mid_lo, mid_hi, hi) of a tile made of GROUPS table groups, over the other side:
    partial tiles of FINE in [lo, mid_lo) and [mid_hi, hi), full tiles of STEP in
    [mid_lo, mid_hi). Groups past the table are neutral; a tile with nothing to visit gets
    empty loops. (``ptobj.kernels.tiles.tile_ranges`` is the same rule in torch.)"""
    g = first_group + tl.arange(0, GROUPS)
    ok = g < n_groups
    base = RANGES + ranges_row + g * 4
    lo = tl.min(tl.load(base, mask=ok, other=far), 0)
    hi = tl.max(tl.load(base + 1, mask=ok, other=0), 0)
    full_lo = tl.max(tl.load(base + 2, mask=ok, other=0), 0)
    full_hi = tl.min(tl.load(base + 3, mask=ok, other=far), 0)
    lo = (lo // FINE) * FINE
    full_lo = tl.cdiv(full_lo, FINE) * FINE
    full_hi = full_lo + ((full_hi - full_lo) // STEP) * STEP
    has_full = (full_hi > full_lo) & (hi > lo)
    mid_lo = tl.where(has_full, full_lo, hi)
    mid_hi = tl.where(has_full, full_hi, hi)
    return lo, mid_lo, mid_hi, hi


@triton.jit
def _query_tile(Q_RANGES, Q_ORDER, stride_mask_b, S_Q, S_K, H, GROUP: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, FINE: tl.constexpr, TABLE_GROUP: tl.constexpr, UNIT: tl.constexpr):
    """This program's (batch x head index, batch row, head, kv head, mask row offset, first query row) and its key
    ranges [lo, mid_lo, mid_hi, hi): the prologue of the forward and dQ kernels."""
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    mask_row = b.to(tl.int64) * stride_mask_b
    m0 = _tile_start(Q_ORDER, mask_row, pid, BLOCK_M, UNIT)
    lo, mid_lo, mid_hi, hi = _tile_ranges(Q_RANGES, mask_row, m0 // TABLE_GROUP, tl.cdiv(S_Q, TABLE_GROUP), S_K,
                                          BLOCK_M // TABLE_GROUP, FINE, BLOCK_N)
    return bh, b, h, h // GROUP, mask_row, m0, lo, mid_lo, mid_hi, hi


@triton.jit
def _row_intervals(KV_START, KV_END, interval_row, offs, n_rows):
    """kv_start / kv_end of rows ``offs``; rows past ``n_rows`` read as empty [0, 0)."""
    ok = offs < n_rows
    st = tl.load(KV_START + interval_row + offs, mask=ok, other=0)
    en = tl.load(KV_END + interval_row + offs, mask=ok, other=0)
    return st, en


@triton.jit
def _visible(offs_m, offs_n, KV_START, KV_END, interval_row, S_Q):
    """[rows, keys] booleans: key offs_n[j] inside row offs_m[i]'s interval."""
    st, en = _row_intervals(KV_START, KV_END, interval_row, offs_m, S_Q)
    return (offs_n[None, :] >= st[:, None]) & (offs_n[None, :] < en[:, None])


# ----------------------------------------------------------------------------- forward


@triton.jit
def _fwd_loop(acc, m_i, l_i, q, k_desc, v_desc, b, hk, KV_START, KV_END, mask_row, offs_m, S_Q, n_lo, n_hi,
              qk_scale, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, MASKED: tl.constexpr,
              UPCAST_DOT: tl.constexpr):
    offs_n0 = tl.arange(0, BLOCK_N)
    for n in range(n_lo, n_hi, BLOCK_N):
        k = _load_tile(k_desc, b, n, hk, BLOCK_N, BLOCK_D)
        v = _load_tile(v_desc, b, n, hk, BLOCK_N, BLOCK_D)
        s = _dot(q, tl.trans(k), UPCAST_DOT) * qk_scale
        if MASKED:
            s = tl.where(_visible(offs_m, n + offs_n0, KV_START, KV_END, mask_row, S_Q), s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows that saw nothing yet
        else:
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_use = m_new
        p = tl.math.exp2(s - m_use[:, None])
        alpha = tl.math.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = _dot_acc(p.to(v.dtype), v, acc * alpha[:, None], UPCAST_DOT)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def _fwd_kernel(Q, stride_qb, stride_qs, stride_qh, k_desc, v_desc, kp_desc, vp_desc, o_desc, LSE,
                KV_START, KV_END, Q_RANGES, Q_ORDER, stride_mask_b, S_Q, S_K, H, qk_scale, S_BUCKET,
                GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT: tl.constexpr, TABLE_GROUP: tl.constexpr,
                UNIT: tl.constexpr, UPCAST_DOT: tl.constexpr):
    """One program per (query tile, batch row, head), tiles in the mask's heaviest-first order.
    Partial key tiles are BLOCK_N // SPLIT wide (kp_desc / vp_desc), full ones BLOCK_N."""
    FINE: tl.constexpr = BLOCK_N // SPLIT
    bh, b, h, hk, mask_row, m0, lo, mid_lo, mid_hi, hi = _query_tile(Q_RANGES, Q_ORDER, stride_mask_b, S_Q, S_K, H,
                                                                      GROUP, BLOCK_M, BLOCK_N, FINE, TABLE_GROUP, UNIT)
    offs_m = m0 + tl.arange(0, BLOCK_M)
    q = _load_rows(Q, stride_qb, stride_qs, stride_qh, b, m0, h, S_Q, HEAD_DIM, BLOCK_M, BLOCK_D)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    acc, m_i, l_i = _fwd_loop(acc, m_i, l_i, q, kp_desc, vp_desc, b, hk, KV_START, KV_END, mask_row, offs_m, S_Q,
                              lo, mid_lo, qk_scale, FINE, BLOCK_D, True, UPCAST_DOT)
    acc, m_i, l_i = _fwd_loop(acc, m_i, l_i, q, k_desc, v_desc, b, hk, KV_START, KV_END, mask_row, offs_m, S_Q,
                              mid_lo, mid_hi, qk_scale, BLOCK_N, BLOCK_D, False, UPCAST_DOT)
    acc, m_i, l_i = _fwd_loop(acc, m_i, l_i, q, kp_desc, vp_desc, b, hk, KV_START, KV_END, mask_row, offs_m, S_Q,
                              mid_hi, hi, qk_scale, FINE, BLOCK_D, True, UPCAST_DOT)

    seen = l_i > 0.0
    l_safe = tl.where(seen, l_i, 1.0)
    _store_tile(o_desc, b, m0, h, acc / l_safe[:, None], BLOCK_M, BLOCK_D)
    lse = tl.where(seen, m_i + tl.math.log2(l_safe), float("inf"))
    tl.store(LSE + _row_offset(bh, S_Q) + offs_m, lse, mask=offs_m < S_Q)


# ----------------------------------------------------------------------------- backward


@triton.jit
def _delta_kernel(o_desc, do_desc, DELTA, S_Q, H, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr):
    """delta[b, h, i] = sum_d dO * O, float32."""
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    m0 = pid * BLOCK_M
    o = _load_tile(o_desc, b, m0, h, BLOCK_M, BLOCK_D).to(tl.float32)
    do = _load_tile(do_desc, b, m0, h, BLOCK_M, BLOCK_D).to(tl.float32)
    offs_m = m0 + tl.arange(0, BLOCK_M)
    tl.store(DELTA + _row_offset(bh, S_Q) + offs_m, tl.sum(o * do, 1), mask=offs_m < S_Q)


@triton.jit
def _dq_loop(dq, q, do, lse, delta, k_desc, v_desc, b, hk, KV_START, KV_END, mask_row, offs_m, S_Q, n_lo, n_hi,
             qk_scale, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, MASKED: tl.constexpr,
             UPCAST_DOT: tl.constexpr):
    offs_n0 = tl.arange(0, BLOCK_N)
    for n in range(n_lo, n_hi, BLOCK_N):
        k = _load_tile(k_desc, b, n, hk, BLOCK_N, BLOCK_D)
        v = _load_tile(v_desc, b, n, hk, BLOCK_N, BLOCK_D)
        s = _dot(q, tl.trans(k), UPCAST_DOT) * qk_scale
        p = tl.math.exp2(s - lse[:, None])
        if MASKED:
            p = tl.where(_visible(offs_m, n + offs_n0, KV_START, KV_END, mask_row, S_Q), p, 0.0)
        dp = _dot(do, tl.trans(v), UPCAST_DOT)
        ds = p * (dp - delta[:, None])
        dq = _dot_acc(ds.to(k.dtype), k, dq, UPCAST_DOT)
    return dq


@triton.jit
def _dq_kernel(Q, stride_qb, stride_qs, stride_qh, DO, stride_dob, stride_dos, stride_doh,
               k_desc, v_desc, kp_desc, vp_desc, dq_desc, LSE, DELTA, KV_START, KV_END,
               Q_RANGES, Q_ORDER, stride_mask_b, S_Q, S_K, H, qk_scale, sm_scale, S_BUCKET,
               GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT: tl.constexpr, TABLE_GROUP: tl.constexpr,
               UNIT: tl.constexpr, UPCAST_DOT: tl.constexpr):
    """dQ of one query tile: the forward's loops again, three matmuls per key tile."""
    FINE: tl.constexpr = BLOCK_N // SPLIT
    bh, b, h, hk, mask_row, m0, lo, mid_lo, mid_hi, hi = _query_tile(Q_RANGES, Q_ORDER, stride_mask_b, S_Q, S_K, H,
                                                                      GROUP, BLOCK_M, BLOCK_N, FINE, TABLE_GROUP, UNIT)
    offs_m = m0 + tl.arange(0, BLOCK_M)
    row_ok = offs_m < S_Q
    lse = tl.load(LSE + _row_offset(bh, S_Q) + offs_m, mask=row_ok, other=float("inf"))
    delta = tl.load(DELTA + _row_offset(bh, S_Q) + offs_m, mask=row_ok, other=0.0)
    q = _load_rows(Q, stride_qb, stride_qs, stride_qh, b, m0, h, S_Q, HEAD_DIM, BLOCK_M, BLOCK_D)
    do = _load_rows(DO, stride_dob, stride_dos, stride_doh, b, m0, h, S_Q, HEAD_DIM, BLOCK_M, BLOCK_D)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    dq = _dq_loop(dq, q, do, lse, delta, kp_desc, vp_desc, b, hk, KV_START, KV_END, mask_row, offs_m, S_Q,
                  lo, mid_lo, qk_scale, FINE, BLOCK_D, True, UPCAST_DOT)
    dq = _dq_loop(dq, q, do, lse, delta, k_desc, v_desc, b, hk, KV_START, KV_END, mask_row, offs_m, S_Q,
                  mid_lo, mid_hi, qk_scale, BLOCK_N, BLOCK_D, False, UPCAST_DOT)
    dq = _dq_loop(dq, q, do, lse, delta, kp_desc, vp_desc, b, hk, KV_START, KV_END, mask_row, offs_m, S_Q,
                  mid_hi, hi, qk_scale, FINE, BLOCK_D, True, UPCAST_DOT)
    _store_tile(dq_desc, b, m0, h, dq * sm_scale, BLOCK_M, BLOCK_D)


@triton.jit
def _dkdv_loop(dk, dv, k, v, offs_n, q_desc, do_desc, DQ_ACC, LSE_BH, DELTA_BH, KV_START, KV_END, mask_row,
               b, h, m_lo, m_hi, S_Q, qk_scale,
               HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, MASKED: tl.constexpr,
               FUSED_DQ: tl.constexpr, UPCAST_DOT: tl.constexpr):
    offs_m0 = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    for m in range(m_lo, m_hi, BLOCK_M):
        offs_m = m + offs_m0
        q = _load_tile(q_desc, b, m, h, BLOCK_M, BLOCK_D)
        do = _load_tile(do_desc, b, m, h, BLOCK_M, BLOCK_D)
        if MASKED:
            row_ok = offs_m < S_Q
            lse = tl.load(LSE_BH + offs_m, mask=row_ok, other=float("inf"))
            delta = tl.load(DELTA_BH + offs_m, mask=row_ok, other=0.0)
        else:
            lse = tl.load(LSE_BH + offs_m)
            delta = tl.load(DELTA_BH + offs_m)
        s_t = _dot(k, tl.trans(q), UPCAST_DOT) * qk_scale  # [BLOCK_N, BLOCK_M]
        p_t = tl.math.exp2(s_t - lse[None, :])
        if MASKED:
            st, en = _row_intervals(KV_START, KV_END, mask_row, offs_m, S_Q)
            p_t = tl.where((offs_n[:, None] >= st[None, :]) & (offs_n[:, None] < en[None, :]), p_t, 0.0)
        dv = _dot_acc(p_t.to(do.dtype), do, dv, UPCAST_DOT)
        dp_t = _dot(v, tl.trans(do), UPCAST_DOT)
        ds_t = (p_t * (dp_t - delta[None, :])).to(q.dtype)
        dk = _dot_acc(ds_t, q, dk, UPCAST_DOT)
        if FUSED_DQ:
            dq = _dot(tl.trans(ds_t), k, UPCAST_DOT)  # [BLOCK_M, BLOCK_D]
            ptrs = DQ_ACC + offs_m[:, None] * HEAD_DIM + offs_d[None, :]
            tl.atomic_add(ptrs, dq, mask=(offs_m < S_Q)[:, None] & (offs_d < HEAD_DIM)[None, :], sem="relaxed")
    return dk, dv


@triton.jit
def _dkdv_kernel(K, stride_kb, stride_ks, stride_kh, V, stride_vb, stride_vs, stride_vh,
                 q_desc, qp_desc, do_desc, dop_desc, dk_desc, dv_desc, LSE, DELTA, DQ_ACC,
                 KV_START, KV_END, K_RANGES, K_ORDER,
                 stride_mask_b, S_Q, S_K, H, H_KV, qk_scale, sm_scale, S_BUCKET,
                 GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT: tl.constexpr, TABLE_GROUP: tl.constexpr,
                 UNIT: tl.constexpr, FUSED_DQ: tl.constexpr, UPCAST_DOT: tl.constexpr):
    """dK, dV of one key tile of one key/value head, summed over the GROUP query heads that
    share it, over the query tiles the mask says can see it (partial ones BLOCK_M // SPLIT
    rows, through qp_desc / dop_desc). With FUSED_DQ also adds each tile pair's dQ into the
    float32 DQ_ACC [b, h, s, HEAD_DIM] with atomics."""
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H_KV
    hk = bh % H_KV
    FINE: tl.constexpr = BLOCK_M // SPLIT
    mask_row = b.to(tl.int64) * stride_mask_b
    n0 = _tile_start(K_ORDER, mask_row, pid, BLOCK_N, UNIT)
    m_lo, mid_lo, mid_hi, m_hi = _tile_ranges(K_RANGES, mask_row, n0 // TABLE_GROUP, tl.cdiv(S_K, TABLE_GROUP),
                                              S_Q, BLOCK_N // TABLE_GROUP, FINE, BLOCK_M)
    offs_n = n0 + tl.arange(0, BLOCK_N)
    k = _load_rows(K, stride_kb, stride_ks, stride_kh, b, n0, hk, S_K, HEAD_DIM, BLOCK_N, BLOCK_D)
    v = _load_rows(V, stride_vb, stride_vs, stride_vh, b, n0, hk, S_K, HEAD_DIM, BLOCK_N, BLOCK_D)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    for g in range(GROUP):
        h = hk * GROUP + g
        row = _row_offset(b * H + h, S_Q)
        dq_bh = DQ_ACC + row * HEAD_DIM
        dk, dv = _dkdv_loop(dk, dv, k, v, offs_n, qp_desc, dop_desc, dq_bh, LSE + row, DELTA + row, KV_START,
                            KV_END, mask_row, b, h, m_lo, mid_lo, S_Q, qk_scale,
                            HEAD_DIM, FINE, BLOCK_D, True, FUSED_DQ, UPCAST_DOT)
        dk, dv = _dkdv_loop(dk, dv, k, v, offs_n, q_desc, do_desc, dq_bh, LSE + row, DELTA + row, KV_START,
                            KV_END, mask_row, b, h, mid_lo, mid_hi, S_Q, qk_scale,
                            HEAD_DIM, BLOCK_M, BLOCK_D, False, FUSED_DQ, UPCAST_DOT)
        dk, dv = _dkdv_loop(dk, dv, k, v, offs_n, qp_desc, dop_desc, dq_bh, LSE + row, DELTA + row, KV_START,
                            KV_END, mask_row, b, h, mid_hi, m_hi, S_Q, qk_scale,
                            HEAD_DIM, FINE, BLOCK_D, True, FUSED_DQ, UPCAST_DOT)
    _store_tile(dk_desc, b, n0, hk, dk * sm_scale, BLOCK_N, BLOCK_D)
    _store_tile(dv_desc, b, n0, hk, dv, BLOCK_N, BLOCK_D)


# ----------------------------------------------------------------------------- tile candidates


@dataclass(frozen=True)
class Tile:
    """One launch configuration: query tile rows, key tile rows, warps, pipeline stages, and
    ``split``: partial (masked) tiles are 1/split of the tile along the loop (fewer live
    registers where the mask is computed, which is what lets 128-wide tiles fit)."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    split: int = 1

    def __str__(self) -> str:
        return f"{self.block_m},{self.block_n},{self.num_warps},{self.num_stages}" + (
            f",/{self.split}" if self.split > 1 else "")

    def fits(self, kernel: str, group: int, unit: int) -> bool:
        """The tile a program owns (query rows for fwd/dq, keys for dK/dV) must be a whole
        number of block-table groups and divide the scheduling unit; the tile it loops over
        only needs to be a multiple of 16."""
        own, loop = (self.block_n, self.block_m) if kernel.startswith("dkdv") else (self.block_m, self.block_n)
        return own % group == 0 and unit % own == 0 and loop % (16 * self.split) == 0


# Shipped candidates per kernel and head-dim class (64: d <= 64, 128: d <= 128). Every one
# compiles for sm_90 without register spills and within shared memory (bench/kernel_compile.py,
# tests/test_kernels_compile.py); the autotuner picks among them on the GPU. "dkdv_dq": dK/dV
# with fused dQ. At d=128 a 128-key dK/dV tile fits only with 32-row query tiles. Checked
# against triton 3.9 (what a CPU install picks) and 3.6 (the GPU image's).
CANDIDATES: dict[str, dict[int, list[Tile]]] = {
    "fwd": {64: [Tile(128, 128, 8, 3), Tile(128, 64, 4, 3)],
            128: [Tile(128, 128, 8, 2, split=2), Tile(128, 64, 8, 3)]},
    "dq": {64: [Tile(128, 128, 8, 2), Tile(128, 64, 8, 3)],
           128: [Tile(128, 128, 8, 2, split=2), Tile(128, 64, 8, 2)]},
    "dkdv": {64: [Tile(64, 128, 8, 3), Tile(64, 64, 4, 3)],
             128: [Tile(32, 128, 8, 3), Tile(64, 64, 8, 3)]},
    "dkdv_dq": {64: [Tile(64, 128, 8, 2), Tile(64, 64, 4, 3)],
                128: [Tile(32, 128, 8, 2), Tile(64, 64, 8, 2)]},
}
INTERPRET_TILE = Tile(16, 16, 4, 1)
DELTA_ROWS = 64


def head_dim_class(d: int) -> int:
    return 64 if d <= 64 else 128


# descriptor argument -> the tile dimension it moves: query rows, key rows, or partial ones
_DESC_ROWS = {"q_desc": "M", "o_desc": "M", "do_desc": "M", "dq_desc": "M", "qp_desc": "M/", "dop_desc": "M/",
              "k_desc": "N", "v_desc": "N", "dk_desc": "N", "dv_desc": "N", "kp_desc": "N/", "vp_desc": "N/"}


def _set_block_shapes(nargs: dict) -> None:
    """Point every tensor descriptor at its tile shape for this launch's BLOCK_M / BLOCK_N / SPLIT."""
    split = nargs.get("SPLIT", 1)
    for name, dim in _DESC_ROWS.items():
        if name in nargs:
            rows = nargs["BLOCK_" + dim[0]] // (split if dim.endswith("/") else 1)
            nargs[name].block_shape = [1, rows, 1, nargs["BLOCK_D"]]


def _configs(kernel: str) -> list:
    configs = []
    for cls, tiles in CANDIDATES[kernel].items():
        for tile in tiles:
            c = triton.Config({"BLOCK_M": tile.block_m, "BLOCK_N": tile.block_n, "SPLIT": tile.split},
                              num_warps=tile.num_warps, num_stages=tile.num_stages, pre_hook=_set_block_shapes)
            c.head_dim_class, c.tile, c.kernel = cls, tile, kernel
            configs.append(c)
    return configs


def _prune(configs, named_args, **kwargs):
    """Only this head dim's candidates whose tiles fit the mask's tables."""
    args = {**named_args, **kwargs}
    cls = head_dim_class(args["HEAD_DIM"])
    group, unit = args["TABLE_GROUP"], args["UNIT"]
    kept = [c for c in configs if c.head_dim_class == cls and c.tile.fits(c.kernel, group, unit)]
    if not kept:
        raise ValueError(f"no shipped tile fits head dim {args['HEAD_DIM']} and block tables ({group}, {unit})")
    return kept


# Keys: head dim, group size, a power-of-two bucket of the sequence length (never exact
# lengths, so varied document layouts do not retune) and the block-table tiling.
_TUNE_KEY = ["HEAD_DIM", "GROUP", "S_BUCKET", "TABLE_GROUP", "UNIT"]
_KERNELS = {"fwd": _fwd_kernel, "dq": _dq_kernel, "dkdv": _dkdv_kernel, "dkdv_dq": _dkdv_kernel}
_AUTOTUNED = {} if INTERPRET else {
    name: triton.autotune(_configs(name), key=_TUNE_KEY, prune_configs_by={"early_config_prune": _prune},
                          reset_to_zero=["DQ_ACC"] if name == "dkdv_dq" else None)(fn)
    for name, fn in _KERNELS.items()}


# ----------------------------------------------------------------------------- launch plans

_DTYPES = (torch.float16, torch.bfloat16)


@dataclass
class Launch:
    """One kernel launch, described before it runs: the autograd functions run it, and
    bench/kernel_compile.py compiles it for sm_90 with each candidate tile instead."""

    kernel: str  # a key of CANDIDATES, or "delta"
    grid: object  # callable(meta) -> grid
    args: dict = field(default_factory=dict)

    @property
    def fn(self):
        return _delta_kernel if self.kernel == "delta" else _KERNELS[self.kernel]

    def candidates(self) -> list[Tile]:
        if self.kernel == "delta":
            return [Tile(DELTA_ROWS, DELTA_ROWS, 4, 1)]
        return CANDIDATES[self.kernel][head_dim_class(self.args["HEAD_DIM"])]

    def kwargs(self, tile: Tile) -> dict:
        """Arguments plus launch options for one explicit tile, descriptors set to it."""
        kw = {name: dataclasses.replace(a) if isinstance(a, TensorDescriptor) else a for name, a in self.args.items()}
        kw.update(BLOCK_M=tile.block_m, num_warps=tile.num_warps, num_stages=tile.num_stages)
        if self.kernel != "delta":
            kw.update(BLOCK_N=tile.block_n, SPLIT=tile.split)
        _set_block_shapes(kw)
        return kw

    def run(self, tile: Tile | None = None) -> None:
        if tile is None and not INTERPRET and self.kernel != "delta":
            _AUTOTUNED[self.kernel][self.grid](**self.args)
            return
        if tile is None:
            tile = INTERPRET_TILE if self.kernel != "delta" else Tile(16 if INTERPRET else DELTA_ROWS, 0, 4, 1)
        if self.kernel != "delta" and not tile.fits(self.kernel, self.args["TABLE_GROUP"], self.args["UNIT"]):
            raise ValueError(f"tile {tile} does not fit block tables ({self.args['TABLE_GROUP']}, "
                             f"{self.args['UNIT']})")
        kw = self.kwargs(tile)
        self.fn[self.grid(kw)](**kw)


def _check_inputs(q, k, v, mask: AttentionMask):
    """q: [b, s, h, d]; k, v: [b, s_k, h_kv, d] (any strides); a triton AttentionMask."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D, got shape {tuple(t.shape)}")
        if t.dtype not in _DTYPES:
            raise TypeError(f"{name} must be float16 or bfloat16 for the triton backend, got {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    b, s, h, d = q.shape
    if k.shape != v.shape or k.shape[0] != b or k.shape[3] != d:
        raise ValueError(f"k {tuple(k.shape)} / v {tuple(v.shape)} do not match q {tuple(q.shape)}")
    if h % k.shape[2]:
        raise ValueError(f"q heads ({h}) must be a multiple of k/v heads ({k.shape[2]})")
    if d > 128 or d % 8:
        raise ValueError(f"the triton backend needs a head dim that is a multiple of 8 up to 128, got {d} "
                         "(backend 'flex' serves larger ones)")
    if mask.backend != "triton":
        raise ValueError(f"the triton kernels need an AttentionMask built for 'triton', got {mask.backend!r}")
    if (mask.q_len, mask.kv_len) != (s, k.shape[1]):
        raise ValueError(f"mask is for {mask.q_len} queries x {mask.kv_len} keys; q/k have {s} x {k.shape[1]}")
    if not (q.device == k.device == v.device == mask.data.device):
        raise ValueError("q, k, v and the mask must be on one device")


def _tma_ready(t: torch.Tensor) -> torch.Tensor:
    """A [b, s, h, d] tensor a descriptor can address: last dim contiguous, 16-byte aligned
    base and positive 16-byte aligned strides (views of megatron's fused QKV are; a broadcast
    gradient, stride 0, is not); else a contiguous copy."""
    size = t.element_size()
    ok = (t.stride(-1) == 1 and t.data_ptr() % 16 == 0
          and all(st > 0 and (st * size) % 16 == 0 for st in t.stride()[:-1]))
    return t if ok else t.contiguous()


def _descriptor(t: torch.Tensor) -> TensorDescriptor:
    block_d = _block_d(t.shape[3])
    return TensorDescriptor(t, list(t.shape), list(t.stride()), [1, 16, 1, block_d])


def _rows_args(name: str, t: torch.Tensor) -> dict:
    """Pointer and strides of a [b, s, h, d] tensor for ``_load_rows``."""
    return {name.upper(): t, f"stride_{name}b": t.stride(0), f"stride_{name}s": t.stride(1),
            f"stride_{name}h": t.stride(2)}


def _block_d(d: int) -> int:
    return max(16, triton.next_power_of_2(d))


def _seq_bucket(s: int) -> int:
    return max(512, triton.next_power_of_2(s))


def _mask_args(mask: AttentionMask, batch: int, direction: str) -> dict:
    data = mask.rows_for(batch)
    args = dict(KV_START=mask.kv_start, KV_END=mask.kv_end, stride_mask_b=data.stride(0))
    if direction == "q":
        args.update(Q_RANGES=mask.field("q_ranges"), Q_ORDER=mask.field("q_order"))
    else:
        args.update(K_RANGES=mask.field("k_ranges"), K_ORDER=mask.field("k_order"))
    return args


def _grid(n: int, unit: int, block: str, programs: int):
    return lambda meta: (triton.cdiv(n, unit) * (unit // meta[block]), programs)


def forward_launch(q, k, v, out, lse, mask: AttentionMask, scale: float) -> Launch:
    b, s, h, d = q.shape
    args = dict(**_rows_args("q", q), k_desc=_descriptor(k), v_desc=_descriptor(v), kp_desc=_descriptor(k),
                vp_desc=_descriptor(v), o_desc=_descriptor(out),
                LSE=lse, **_mask_args(mask, b, "q"), S_Q=s, S_K=k.shape[1], H=h, qk_scale=scale * LOG2E,
                S_BUCKET=_seq_bucket(s), GROUP=h // k.shape[2], HEAD_DIM=d, BLOCK_D=_block_d(d),
                TABLE_GROUP=mask.group, UNIT=mask.unit, UPCAST_DOT=INTERPRET)
    return Launch("fwd", _grid(s, mask.unit, "BLOCK_M", b * h), args)


def backward_launches(do, q, k, v, out, lse, delta, dq, dk, dv, dq_acc, mask: AttentionMask, scale: float,
                      fused_dq: bool) -> list[Launch]:
    """delta, then dK/dV (with dQ when ``fused_dq``), then dQ unless fused."""
    b, s, h, d = q.shape
    s_k, h_kv = k.shape[1], k.shape[2]
    descs = {name: _descriptor(t) for name, t in (("q_desc", q), ("k_desc", k), ("v_desc", v), ("o_desc", out),
                                                  ("do_desc", do), ("dk_desc", dk), ("dv_desc", dv))}
    common = dict(S_Q=s, S_K=s_k, H=h, qk_scale=scale * LOG2E, S_BUCKET=_seq_bucket(s), GROUP=h // h_kv,
                  HEAD_DIM=d, BLOCK_D=_block_d(d), TABLE_GROUP=mask.group, UNIT=mask.unit, UPCAST_DOT=INTERPRET)
    launches = [Launch("delta", lambda meta: (triton.cdiv(s, meta["BLOCK_M"]), b * h),
                       dict(o_desc=descs["o_desc"], do_desc=descs["do_desc"], DELTA=delta, S_Q=s, H=h,
                            BLOCK_D=_block_d(d)))]
    kv_args = dict(**_rows_args("k", k), **_rows_args("v", v), q_desc=descs["q_desc"], qp_desc=_descriptor(q),
                   do_desc=descs["do_desc"], dop_desc=_descriptor(do), dk_desc=descs["dk_desc"],
                   dv_desc=descs["dv_desc"], LSE=lse, DELTA=delta,
                   DQ_ACC=dq_acc, **_mask_args(mask, b, "k"), H_KV=h_kv, sm_scale=scale, FUSED_DQ=fused_dq, **common)
    launches.append(Launch("dkdv_dq" if fused_dq else "dkdv", _grid(s_k, mask.unit, "BLOCK_N", b * h_kv), kv_args))
    if not fused_dq:
        q_args = dict(**_rows_args("q", q), **_rows_args("do", do), k_desc=descs["k_desc"], v_desc=descs["v_desc"],
                      kp_desc=_descriptor(k), vp_desc=_descriptor(v), dq_desc=_descriptor(dq), LSE=lse, DELTA=delta,
                      **_mask_args(mask, b, "q"), sm_scale=scale, **common)
        launches.append(Launch("dq", _grid(s, mask.unit, "BLOCK_M", b * h), q_args))
    return launches


def attention_forward(q, k, v, mask: AttentionMask, scale: float, tiles: dict | None = None):
    """Returns (out like q, lse2 float32 [b, h, s] in base 2, +inf on rows that see nothing)."""
    _check_inputs(q, k, v, mask)
    q, k, v = (_tma_ready(t) for t in (q, k, v))
    out = torch.empty_like(q)
    lse = torch.empty((q.shape[0], q.shape[2], q.shape[1]), device=q.device, dtype=torch.float32)
    forward_launch(q, k, v, out, lse, mask, scale).run((tiles or {}).get("fwd"))
    return out, lse


def attention_backward(do, q, k, v, out, lse, mask: AttentionMask, scale: float, fused_dq: bool = False,
                       tiles: dict | None = None):
    """Returns dq, dk, dv shaped and laid out like q, k, v."""
    do = _tma_ready(do)
    q, k, v, out = (_tma_ready(t) for t in (q, k, v, out))
    b, s, h, d = q.shape
    delta = torch.empty((b, h, s), device=q.device, dtype=torch.float32)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    dq_acc = (torch.zeros((b, h, s, d), device=q.device, dtype=torch.float32) if fused_dq
              else torch.empty(1, device=q.device, dtype=torch.float32))
    for launch in backward_launches(do, q, k, v, out, lse, delta, dq, dk, dv, dq_acc, mask, scale, fused_dq):
        launch.run((tiles or {}).get(launch.kernel))
    if fused_dq:
        dq.copy_((dq_acc * scale).transpose(1, 2))
    return dq, dk, dv


# ----------------------------------------------------------------------------- autograd


class IntervalAttention(torch.autograd.Function):
    """q [b, s, h, d], k/v [b, s_k, h_kv, d] (views of any layout) and a triton AttentionMask.
    Returns (out, lse2); lse2 is not differentiable."""

    @staticmethod
    def forward(ctx, q, k, v, mask, scale, fused_dq, tiles):
        out, lse = attention_forward(q, k, v, mask, scale, tiles)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.mask, ctx.scale, ctx.fused_dq, ctx.tiles = mask, scale, fused_dq, tiles
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = attention_backward(dout, q, k, v, out, lse, ctx.mask, ctx.scale, ctx.fused_dq, ctx.tiles)
        return dq, dk, dv, None, None, None, None


def attention(q, k, v, mask: AttentionMask, scale: float, *, fused_dq: bool = False, tiles: dict | None = None):
    """Autograd-aware triton attention on [b, s, h, d] views; returns (out, lse2).
    ``tiles``: explicit Tile per kernel name ("fwd", "dq", "dkdv", "dkdv_dq", "delta") instead of
    autotuning (the interpreter's default is 16x16)."""
    return IntervalAttention.apply(q, k, v, mask, scale, fused_dq, tiles)


def lse2_to_natural(lse2: torch.Tensor) -> torch.Tensor:
    """Base-2 internal log-sum-exp -> natural log, -inf for rows that see nothing."""
    return torch.where(torch.isinf(lse2), float("-inf"), lse2 * LN2)


def default_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)


# ----------------------------------------------------------------------------- compile gate


@dataclass
class CompileCase:
    kernel: str
    head_dim: int
    config: str
    fn: object
    args: tuple
    kwargs: dict


def compile_cases(head_dim: int, *, batch: int = 4, seq: int = 4096, heads: int = 16, kv_heads: int | None = None,
                  dtype=torch.bfloat16, fused_dq: bool | None = None) -> list[CompileCase]:
    """Every shipped candidate of every kernel at one shape, as launches would pass them
    (megatron's sbhd layout viewed as [b, s, h, d], meta tensors): for bench/kernel_compile.py."""
    kv_heads = kv_heads or heads
    meta = lambda *shape, dt=dtype: torch.empty(*shape, device="meta", dtype=dt)  # noqa: E731
    q = meta(seq, batch, heads, head_dim).transpose(0, 1)
    k = meta(seq, batch, kv_heads, head_dim).transpose(0, 1)
    width = AttentionMask.width("triton", seq, seq, (64, 128))
    mask = AttentionMask.from_data(meta(batch, width, dt=torch.int32), backend="triton", q_len=seq, kv_len=seq,
                                   tiling=(64, 128))
    lse = meta(batch, heads, seq, dt=torch.float32)
    launches = [forward_launch(q, k, k, q, lse, mask, 0.125)]
    for fused in ((False, True) if fused_dq is None else (fused_dq,)):
        dq_acc = meta(batch, heads, seq, head_dim, dt=torch.float32)
        launches += backward_launches(q, q, k, k, q, lse, lse, q, k, k, dq_acc, mask, 0.125, fused)
    cases, seen = [], set()
    for launch in launches:
        for tile in launch.candidates():
            key = (launch.kernel, str(tile))
            if key in seen:
                continue
            seen.add(key)
            kw = launch.kwargs(tile)
            cases.append(CompileCase(launch.kernel, head_dim, str(tile), launch.fn, (), kw))
    return cases
