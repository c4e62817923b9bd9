"""Fused row-interval attention in Triton, forward and backward (FA2 split).

Query i of batch row b sees keys j with ``kv_start[b, i] <= j < kv_end[b, i]``.
Per query tile the kernels bound the key loop by the tile's smallest start and
largest end, skip key tiles no row of the tile can see, and run key tiles that
every row sees in full without any mask arithmetic. Nothing of size [S, S] is
ever built. Rows that see nothing give zero output and zero gradients.

Order in this file: jit kernels -> launchers (shape/dtype checks) -> autograd.Function.
The plain torch reference lives in ``kernels.reference``; the public entry point,
which picks a backend, in ``kernels.attention``.

Internally the log-sum-exp is kept in base 2 (``exp2`` is cheaper than ``exp``)
and is ``+inf`` for rows that see nothing, so that ``exp2(s - lse)`` is exactly 0.
"""

from __future__ import annotations

import math

from objectives.extras import require

require("train", "torch", "triton", by=__name__)

import torch
import triton
import triton.language as tl
from triton import knobs

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
# Granularity (rows) of the per-key-block query ranges computed for the backward pass.
ROW_GROUP = 16
# Under TRITON_INTERPRET=1 the kernels run on CPU tensors through numpy, whose
# bf16 dot is wrong in triton 3.9: operands are widened to fp32 there.
INTERPRET = bool(knobs.runtime.interpret)
INTERPRET_BLOCK = 16


# ----------------------------------------------------------------------------- jit helpers


@triton.jit
def _dot(a, b, UPCAST: tl.constexpr):
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b)


@triton.jit
def _load_rows(base, offs, n_rows, offs_d, HEAD_DIM: tl.constexpr, CHECK_ROWS: tl.constexpr,
               EVEN_D: tl.constexpr):
    """Load a [rows, BLOCK_D] tile whose rows start at ``base + offs`` (pointer offsets)."""
    ptrs = base + offs[:, None] + offs_d[None, :]
    if CHECK_ROWS:
        if EVEN_D:
            return tl.load(ptrs, mask=(offs < n_rows)[:, None], other=0.0)
        return tl.load(ptrs, mask=(offs < n_rows)[:, None] & (offs_d < HEAD_DIM)[None, :], other=0.0)
    if EVEN_D:
        return tl.load(ptrs)
    return tl.load(ptrs, mask=(offs_d < HEAD_DIM)[None, :], other=0.0)


@triton.jit
def _load_intervals(start_ptr, end_ptr, stride_is, offs_m, S_Q, S_K):
    """Row intervals clamped to [0, S_K]; rows past S_Q read as empty [0, 0)."""
    in_rows = offs_m < S_Q
    st = tl.load(start_ptr + offs_m * stride_is, mask=in_rows, other=0)
    en = tl.load(end_ptr + offs_m * stride_is, mask=in_rows, other=0)
    return tl.maximum(st, 0), tl.minimum(en, S_K)


@triton.jit
def _full_range(lo, hi, st, en, BLOCK_N: tl.constexpr):
    """Split [lo rounded down, hi) into masked / fully-visible / masked key ranges.
    Returns (mid_lo, mid_hi): tiles in [mid_lo, mid_hi) are seen by every row."""
    f_lo = tl.cdiv(tl.max(st, 0), BLOCK_N) * BLOCK_N
    f_hi = (tl.min(en, 0) // BLOCK_N) * BLOCK_N
    has_full = f_hi > f_lo
    mid_lo = tl.where(has_full, f_lo, hi)
    mid_hi = tl.where(has_full, f_hi, hi)
    return mid_lo, mid_hi


# ----------------------------------------------------------------------------- forward


@triton.jit
def _fwd_step(acc, m_i, l_i, q, k_base, v_base, stride_ks, stride_vs, st, en, n, offs_n0, offs_d,
              S_K, qk_scale, HEAD_DIM: tl.constexpr, EVEN_D: tl.constexpr, MASKED: tl.constexpr,
              UPCAST_DOT: tl.constexpr):
    offs_n = n + offs_n0
    k = _load_rows(k_base, offs_n * stride_ks, S_K * stride_ks, offs_d, HEAD_DIM, MASKED, EVEN_D)
    v = _load_rows(v_base, offs_n * stride_vs, S_K * stride_vs, offs_d, HEAD_DIM, MASKED, EVEN_D)
    s = _dot(q, tl.trans(k), UPCAST_DOT) * qk_scale
    if MASKED:
        vis = (offs_n[None, :] >= st[:, None]) & (offs_n[None, :] < en[:, None])
        s = tl.where(vis, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    if MASKED:
        m_new_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    else:
        m_new_safe = m_new
    p = tl.math.exp2(s - m_new_safe[:, None])
    alpha = tl.math.exp2(m_i - m_new_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, UPCAST_DOT)
    return acc, m_new, l_i


@triton.jit
def _fwd_loop(acc, m_i, l_i, q, k_base, v_base, stride_ks, stride_vs, st, en, n_lo, n_hi, offs_n0,
              offs_d, S_K, qk_scale, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
              EVEN_D: tl.constexpr, MASKED: tl.constexpr, UPCAST_DOT: tl.constexpr):
    for n in range(n_lo, n_hi, BLOCK_N):
        if MASKED:
            # Skip key tiles that no row of this query tile can see.
            hit = (st < n + BLOCK_N) & (en > n) & (en > st)
            if tl.max(hit.to(tl.int32), 0) > 0:
                acc, m_i, l_i = _fwd_step(acc, m_i, l_i, q, k_base, v_base, stride_ks, stride_vs,
                                          st, en, n, offs_n0, offs_d, S_K, qk_scale, HEAD_DIM,
                                          EVEN_D, True, UPCAST_DOT)
        else:
            acc, m_i, l_i = _fwd_step(acc, m_i, l_i, q, k_base, v_base, stride_ks, stride_vs,
                                      st, en, n, offs_n0, offs_d, S_K, qk_scale, HEAD_DIM,
                                      EVEN_D, False, UPCAST_DOT)
    return acc, m_i, l_i


@triton.jit
def _fwd_kernel(Q, K, V, O, LSE, KV_START, KV_END,
                stride_qb, stride_qs, stride_qh,
                stride_kb, stride_ks, stride_kh,
                stride_vb, stride_vs, stride_vh,
                stride_ob, stride_os, stride_oh,
                stride_ib, stride_is,
                S_Q, S_K, H, qk_scale, S_BUCKET,
                GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, UPCAST_DOT: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    hk = h // GROUP
    EVEN_D: tl.constexpr = BLOCK_D == HEAD_DIM
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)

    st, en = _load_intervals(KV_START + b * stride_ib, KV_END + b * stride_ib, stride_is, offs_m, S_Q, S_K)
    nonempty = en > st
    lo = tl.min(tl.where(nonempty, st, S_K), 0)
    hi = tl.max(tl.where(nonempty, en, 0), 0)
    lo = (lo // BLOCK_N) * BLOCK_N
    mid_lo, mid_hi = _full_range(lo, hi, st, en, BLOCK_N)

    q = _load_rows(Q + b * stride_qb + h * stride_qh, offs_m * stride_qs, S_Q * stride_qs, offs_d,
                   HEAD_DIM, True, EVEN_D)
    k_base = K + b * stride_kb + hk * stride_kh
    v_base = V + b * stride_vb + hk * stride_vh
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    acc, m_i, l_i = _fwd_loop(acc, m_i, l_i, q, k_base, v_base, stride_ks, stride_vs, st, en, lo,
                              mid_lo, offs_n0, offs_d, S_K, qk_scale, BLOCK_N, HEAD_DIM, EVEN_D,
                              True, UPCAST_DOT)
    acc, m_i, l_i = _fwd_loop(acc, m_i, l_i, q, k_base, v_base, stride_ks, stride_vs, st, en, mid_lo,
                              mid_hi, offs_n0, offs_d, S_K, qk_scale, BLOCK_N, HEAD_DIM, EVEN_D,
                              False, UPCAST_DOT)
    acc, m_i, l_i = _fwd_loop(acc, m_i, l_i, q, k_base, v_base, stride_ks, stride_vs, st, en, mid_hi,
                              hi, offs_n0, offs_d, S_K, qk_scale, BLOCK_N, HEAD_DIM, EVEN_D,
                              True, UPCAST_DOT)

    seen = l_i > 0.0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    lse = tl.where(seen, m_i + tl.math.log2(tl.where(seen, l_i, 1.0)), float("inf"))
    row_ok = offs_m < S_Q
    o_ptrs = O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_os + offs_d[None, :]
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=row_ok[:, None] & (offs_d < HEAD_DIM)[None, :])
    tl.store(LSE + pid_bh.to(tl.int64) * S_Q + offs_m, lse, mask=row_ok)


# ----------------------------------------------------------------------------- backward


@triton.jit
def _bwd_delta_kernel(O, DO, DELTA, stride_ob, stride_os, stride_oh, stride_db, stride_ds, stride_dh,
                      S_Q, H, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr):
    """delta[b, h, i] = sum_d dO * O (float32)."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m < S_Q)[:, None] & (offs_d < HEAD_DIM)[None, :]
    o = tl.load(O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_os + offs_d[None, :],
                mask=mask, other=0.0).to(tl.float32)
    do = tl.load(DO + b * stride_db + h * stride_dh + offs_m[:, None] * stride_ds + offs_d[None, :],
                 mask=mask, other=0.0).to(tl.float32)
    tl.store(DELTA + pid_bh.to(tl.int64) * S_Q + offs_m, tl.sum(o * do, 1), mask=offs_m < S_Q)


@triton.jit
def _dq_step(dq, q, do, lse, delta, k_base, v_base, stride_ks, stride_vs, st, en, n, offs_n0, offs_d,
             S_K, qk_scale, HEAD_DIM: tl.constexpr, EVEN_D: tl.constexpr, MASKED: tl.constexpr,
             UPCAST_DOT: tl.constexpr):
    offs_n = n + offs_n0
    k = _load_rows(k_base, offs_n * stride_ks, S_K * stride_ks, offs_d, HEAD_DIM, MASKED, EVEN_D)
    v = _load_rows(v_base, offs_n * stride_vs, S_K * stride_vs, offs_d, HEAD_DIM, MASKED, EVEN_D)
    s = _dot(q, tl.trans(k), UPCAST_DOT) * qk_scale
    p = tl.math.exp2(s - lse[:, None])
    if MASKED:
        vis = (offs_n[None, :] >= st[:, None]) & (offs_n[None, :] < en[:, None])
        p = tl.where(vis, p, 0.0)
    dp = _dot(do, tl.trans(v), UPCAST_DOT)
    ds = p * (dp - delta[:, None])
    return dq + _dot(ds.to(k.dtype), k, UPCAST_DOT)


@triton.jit
def _dq_loop(dq, q, do, lse, delta, k_base, v_base, stride_ks, stride_vs, st, en, n_lo, n_hi, offs_n0,
             offs_d, S_K, qk_scale, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
             EVEN_D: tl.constexpr, MASKED: tl.constexpr, UPCAST_DOT: tl.constexpr):
    for n in range(n_lo, n_hi, BLOCK_N):
        if MASKED:
            hit = (st < n + BLOCK_N) & (en > n) & (en > st)
            if tl.max(hit.to(tl.int32), 0) > 0:
                dq = _dq_step(dq, q, do, lse, delta, k_base, v_base, stride_ks, stride_vs, st, en, n,
                              offs_n0, offs_d, S_K, qk_scale, HEAD_DIM, EVEN_D, True, UPCAST_DOT)
        else:
            dq = _dq_step(dq, q, do, lse, delta, k_base, v_base, stride_ks, stride_vs, st, en, n,
                          offs_n0, offs_d, S_K, qk_scale, HEAD_DIM, EVEN_D, False, UPCAST_DOT)
    return dq


@triton.jit
def _bwd_dq_kernel(Q, K, V, DO, DQ, LSE, DELTA, KV_START, KV_END,
                   stride_qb, stride_qs, stride_qh,
                   stride_kb, stride_ks, stride_kh,
                   stride_vb, stride_vs, stride_vh,
                   stride_dob, stride_dos, stride_doh,
                   stride_dqb, stride_dqs, stride_dqh,
                   stride_ib, stride_is,
                   S_Q, S_K, H, qk_scale, sm_scale, S_BUCKET,
                   GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, UPCAST_DOT: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    hk = h // GROUP
    EVEN_D: tl.constexpr = BLOCK_D == HEAD_DIM
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)

    st, en = _load_intervals(KV_START + b * stride_ib, KV_END + b * stride_ib, stride_is, offs_m, S_Q, S_K)
    nonempty = en > st
    lo = tl.min(tl.where(nonempty, st, S_K), 0)
    hi = tl.max(tl.where(nonempty, en, 0), 0)
    lo = (lo // BLOCK_N) * BLOCK_N
    mid_lo, mid_hi = _full_range(lo, hi, st, en, BLOCK_N)

    row_ok = offs_m < S_Q
    q = _load_rows(Q + b * stride_qb + h * stride_qh, offs_m * stride_qs, S_Q * stride_qs, offs_d,
                   HEAD_DIM, True, EVEN_D)
    do = _load_rows(DO + b * stride_dob + h * stride_doh, offs_m * stride_dos, S_Q * stride_dos, offs_d,
                    HEAD_DIM, True, EVEN_D)
    lse = tl.load(LSE + pid_bh.to(tl.int64) * S_Q + offs_m, mask=row_ok, other=float("inf"))
    delta = tl.load(DELTA + pid_bh.to(tl.int64) * S_Q + offs_m, mask=row_ok, other=0.0)
    k_base = K + b * stride_kb + hk * stride_kh
    v_base = V + b * stride_vb + hk * stride_vh
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    dq = _dq_loop(dq, q, do, lse, delta, k_base, v_base, stride_ks, stride_vs, st, en, lo, mid_lo,
                  offs_n0, offs_d, S_K, qk_scale, BLOCK_N, HEAD_DIM, EVEN_D, True, UPCAST_DOT)
    dq = _dq_loop(dq, q, do, lse, delta, k_base, v_base, stride_ks, stride_vs, st, en, mid_lo, mid_hi,
                  offs_n0, offs_d, S_K, qk_scale, BLOCK_N, HEAD_DIM, EVEN_D, False, UPCAST_DOT)
    dq = _dq_loop(dq, q, do, lse, delta, k_base, v_base, stride_ks, stride_vs, st, en, mid_hi, hi,
                  offs_n0, offs_d, S_K, qk_scale, BLOCK_N, HEAD_DIM, EVEN_D, True, UPCAST_DOT)
    dq = dq * sm_scale
    dq_ptrs = DQ + b * stride_dqb + h * stride_dqh + offs_m[:, None] * stride_dqs + offs_d[None, :]
    tl.store(dq_ptrs, dq.to(DQ.dtype.element_ty), mask=row_ok[:, None] & (offs_d < HEAD_DIM)[None, :])


@triton.jit
def _dkdv_step(dk, dv, k, v, q_base, do_base, stride_qs, stride_dos, LSE_BH, DELTA_BH, st, en, m, n,
               offs_m0, offs_n, offs_d, S_Q, qk_scale, HEAD_DIM: tl.constexpr, EVEN_D: tl.constexpr,
               MASKED: tl.constexpr, UPCAST_DOT: tl.constexpr):
    offs_m = m + offs_m0
    q = _load_rows(q_base, offs_m * stride_qs, S_Q * stride_qs, offs_d, HEAD_DIM, MASKED, EVEN_D)
    do = _load_rows(do_base, offs_m * stride_dos, S_Q * stride_dos, offs_d, HEAD_DIM, MASKED, EVEN_D)
    if MASKED:
        lse = tl.load(LSE_BH + offs_m, mask=offs_m < S_Q, other=float("inf"))
        delta = tl.load(DELTA_BH + offs_m, mask=offs_m < S_Q, other=0.0)
    else:
        lse = tl.load(LSE_BH + offs_m)
        delta = tl.load(DELTA_BH + offs_m)
    s_t = _dot(k, tl.trans(q), UPCAST_DOT) * qk_scale  # [BLOCK_N, BLOCK_M]
    p_t = tl.math.exp2(s_t - lse[None, :])
    if MASKED:
        vis_t = (offs_n[:, None] >= st[None, :]) & (offs_n[:, None] < en[None, :])
        p_t = tl.where(vis_t, p_t, 0.0)
    dv += _dot(p_t.to(do.dtype), do, UPCAST_DOT)
    dp_t = _dot(v, tl.trans(do), UPCAST_DOT)
    ds_t = p_t * (dp_t - delta[None, :])
    dk += _dot(ds_t.to(q.dtype), q, UPCAST_DOT)
    return dk, dv


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, DO, DK, DV, LSE, DELTA, KV_START, KV_END, Q_FIRST, Q_LAST,
                     stride_qb, stride_qs, stride_qh,
                     stride_kb, stride_ks, stride_kh,
                     stride_vb, stride_vs, stride_vh,
                     stride_dob, stride_dos, stride_doh,
                     stride_dkb, stride_dks, stride_dkh,
                     stride_dvb, stride_dvs, stride_dvh,
                     stride_ib, stride_is, stride_rb,
                     S_Q, S_K, H, H_KV, N_KGROUPS, qk_scale, sm_scale, S_BUCKET,
                     GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, ROW_GROUP: tl.constexpr,
                     UPCAST_DOT: tl.constexpr):
    """One program per (key tile, batch, kv head): accumulates dK, dV over the query rows
    of every q head of its group, visiting only the q tiles that can see this key tile."""
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H_KV).to(tl.int64)
    hk = (pid_bh % H_KV).to(tl.int64)
    EVEN_D: tl.constexpr = BLOCK_D == HEAD_DIM
    n = pid_n * BLOCK_N
    offs_n = n + tl.arange(0, BLOCK_N)
    offs_m0 = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)

    # Query rows that can reach this key tile, from per-16-key-group ranges.
    kg = n // ROW_GROUP + tl.arange(0, BLOCK_N // ROW_GROUP)
    kg_ok = kg < N_KGROUPS
    q_first = tl.min(tl.load(Q_FIRST + b * stride_rb + kg, mask=kg_ok, other=S_Q), 0)
    q_last = tl.max(tl.load(Q_LAST + b * stride_rb + kg, mask=kg_ok, other=0), 0)
    q_first = (q_first // BLOCK_M) * BLOCK_M

    k = _load_rows(K + b * stride_kb + hk * stride_kh, offs_n * stride_ks, S_K * stride_ks, offs_d,
                   HEAD_DIM, True, EVEN_D)
    v = _load_rows(V + b * stride_vb + hk * stride_vh, offs_n * stride_vs, S_K * stride_vs, offs_d,
                   HEAD_DIM, True, EVEN_D)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    for g in range(GROUP):
        h = hk * GROUP + g
        q_base = Q + b * stride_qb + h * stride_qh
        do_base = DO + b * stride_dob + h * stride_doh
        lse_bh = LSE + (b * H + h) * S_Q
        delta_bh = DELTA + (b * H + h) * S_Q
        for m in range(q_first, q_last, BLOCK_M):
            st, en = _load_intervals(KV_START + b * stride_ib, KV_END + b * stride_ib, stride_is,
                                     m + offs_m0, S_Q, S_K)
            full = (tl.max(st, 0) <= n) & (n + BLOCK_N <= tl.min(en, 0))
            hit = tl.max(((st < n + BLOCK_N) & (en > n) & (en > st)).to(tl.int32), 0) > 0
            if full:
                dk, dv = _dkdv_step(dk, dv, k, v, q_base, do_base, stride_qs, stride_dos, lse_bh,
                                    delta_bh, st, en, m, n, offs_m0, offs_n, offs_d, S_Q, qk_scale,
                                    HEAD_DIM, EVEN_D, False, UPCAST_DOT)
            elif hit:
                dk, dv = _dkdv_step(dk, dv, k, v, q_base, do_base, stride_qs, stride_dos, lse_bh,
                                    delta_bh, st, en, m, n, offs_m0, offs_n, offs_d, S_Q, qk_scale,
                                    HEAD_DIM, EVEN_D, True, UPCAST_DOT)
    dk = dk * sm_scale
    mask = (offs_n < S_K)[:, None] & (offs_d < HEAD_DIM)[None, :]
    tl.store(DK + b * stride_dkb + hk * stride_dkh + offs_n[:, None] * stride_dks + offs_d[None, :],
             dk.to(DK.dtype.element_ty), mask=mask)
    tl.store(DV + b * stride_dvb + hk * stride_dvh + offs_n[:, None] * stride_dvs + offs_d[None, :],
             dv.to(DV.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- tuning


def _head_dim_class(d: int) -> int:
    return 64 if d <= 64 else 128 if d <= 128 else 256


# Chosen from sm_90 compiles (cuobjdump register/stack use): no register spills where
# possible, a few tile shapes per head-dim class so autotuning stays short.
_FWD_TABLE = {64: [(128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 3), (64, 32, 4, 2)],
              128: [(128, 64, 8, 3), (128, 64, 8, 2), (64, 64, 4, 3), (64, 32, 4, 2)],
              256: [(64, 32, 4, 2), (64, 64, 8, 2)]}
_DQ_TABLE = {64: [(128, 64, 8, 2), (64, 64, 4, 3), (128, 128, 8, 2), (64, 32, 4, 2)],
             128: [(128, 64, 8, 2), (64, 64, 8, 2), (128, 32, 8, 2), (64, 32, 4, 3)],
             256: [(64, 32, 4, 2), (64, 64, 8, 2)]}
_DKDV_TABLE = {64: [(32, 128, 8, 2), (64, 128, 8, 2), (64, 64, 4, 3), (32, 64, 4, 2)],
               128: [(64, 64, 4, 2), (32, 64, 8, 2), (16, 128, 8, 2), (16, 64, 4, 2)],
               256: [(16, 64, 4, 2), (32, 64, 8, 2)]}


def _table_configs(table):
    configs = []
    for cls, rows in table.items():
        for m, n, w, st in rows:
            c = triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=st)
            c.head_dim_class = cls
            configs.append(c)
    return configs


def _prune_by_head_dim(configs, named_args, **kwargs):
    """Only the tiles listed for this head dim's class: keeps compile counts small."""
    d = kwargs.get("HEAD_DIM", named_args.get("HEAD_DIM", 128))
    kept = [c for c in configs if getattr(c, "head_dim_class", None) == _head_dim_class(d)]
    return kept or configs[:1]


_FWD_CONFIGS = _table_configs(_FWD_TABLE)
_DQ_CONFIGS = _table_configs(_DQ_TABLE)
_DKDV_CONFIGS = _table_configs(_DKDV_TABLE)
# Keys: head dim, kv-group size and a power-of-two bucket of the sequence length, never exact
# lengths, so a run with many document layouts compiles each kernel a handful of times.
_TUNE_KEY = ["HEAD_DIM", "GROUP", "S_BUCKET"]
_PRUNE = {"early_config_prune": _prune_by_head_dim}

if INTERPRET:
    _fwd = _fwd_kernel
    _bwd_dq = _bwd_dq_kernel
    _bwd_dkdv = _bwd_dkdv_kernel
else:
    _fwd = triton.autotune(_FWD_CONFIGS, key=_TUNE_KEY, prune_configs_by=_PRUNE)(_fwd_kernel)
    _bwd_dq = triton.autotune(_DQ_CONFIGS, key=_TUNE_KEY, prune_configs_by=_PRUNE)(_bwd_dq_kernel)
    _bwd_dkdv = triton.autotune(_DKDV_CONFIGS, key=_TUNE_KEY, prune_configs_by=_PRUNE)(_bwd_dkdv_kernel)


def _fixed_blocks() -> dict:
    return {"BLOCK_M": INTERPRET_BLOCK, "BLOCK_N": INTERPRET_BLOCK} if INTERPRET else {}


def _seq_bucket(s: int) -> int:
    return max(512, triton.next_power_of_2(s))


# ----------------------------------------------------------------------------- launchers

_DTYPES = (torch.float16, torch.bfloat16)


def _check_inputs(q, k, v, kv_start, kv_end):
    """q: [b, s, h, d]; k, v: [b, s_k, h_kv, d] (any strides); kv_start/kv_end: [b, s] int."""
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
    if d > 256:
        raise ValueError(f"head dim {d} > 256 is not supported")
    for name, t in (("kv_start", kv_start), ("kv_end", kv_end)):
        if t.shape != (b, s):
            raise ValueError(f"{name} must have shape {(b, s)}, got {tuple(t.shape)}")
        if t.dtype != torch.int32:
            raise TypeError(f"{name} must be int32 here, got {t.dtype}")
    if not (q.device == k.device == v.device == kv_start.device == kv_end.device):
        raise ValueError("q, k, v, kv_start, kv_end must be on one device")


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _strides3(t: torch.Tensor):
    return t.stride(0), t.stride(1), t.stride(2)


def attention_forward(q, k, v, kv_start, kv_end, scale: float):
    """Returns (out like q, lse2 float32 [b, h, s] in base 2, +inf on rows that see nothing)."""
    _check_inputs(q, k, v, kv_start, kv_end)
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    b, s, h, d = q.shape
    s_k, h_kv = k.shape[1], k.shape[2]
    out = torch.empty_like(q)
    lse = torch.empty((b, h, s), device=q.device, dtype=torch.float32)
    grid = lambda meta: (triton.cdiv(s, meta["BLOCK_M"]), b * h)  # noqa: E731
    _fwd[grid](q, k, v, out, lse, kv_start, kv_end,
               *_strides3(q), *_strides3(k), *_strides3(v), *_strides3(out),
               kv_start.stride(0), kv_start.stride(1),
               s, s_k, h, scale * LOG2E, _seq_bucket(s),
               GROUP=h // h_kv, HEAD_DIM=d, BLOCK_D=max(16, triton.next_power_of_2(d)),
               UPCAST_DOT=INTERPRET, **_fixed_blocks())
    return out, lse


def query_ranges_per_key_group(kv_start, kv_end, s_k: int, group: int = ROW_GROUP):
    """Per batch row and per ``group`` keys: [first, last) query rows that see any of them,
    in ``group``-row granularity. O(S^2 / group^2) booleans, a few tiny torch ops."""
    b, s = kv_start.shape
    if b > 1 and kv_start.stride(0) == 0 and kv_end.stride(0) == 0:
        first, last = query_ranges_per_key_group(kv_start[:1], kv_end[:1], s_k, group)
        return first.expand(b, -1), last.expand(b, -1)
    st = kv_start.clamp(min=0)
    en = kv_end.clamp(max=s_k)
    nonempty = en > st
    n_q, n_k = triton.cdiv(s, group), triton.cdiv(s_k, group)
    pad = n_q * group - s
    lo = torch.nn.functional.pad(torch.where(nonempty, st, s_k), (0, pad), value=s_k)
    hi = torch.nn.functional.pad(torch.where(nonempty, en, 0), (0, pad), value=0)
    lo = lo.view(b, n_q, group).amin(-1)
    hi = hi.view(b, n_q, group).amax(-1)
    k0 = torch.arange(n_k, device=st.device, dtype=torch.int32) * group
    touches = (lo[:, :, None] < k0 + group) & (hi[:, :, None] > k0)  # [b, n_q, n_k]
    any_row = touches.any(1)
    t = touches.to(torch.int8)
    first = t.argmax(1)
    last = n_q - t.flip(1).argmax(1)
    first = torch.where(any_row, first * group, 0).to(torch.int32).contiguous()
    last = torch.where(any_row, (last * group).clamp(max=s), 0).to(torch.int32).contiguous()
    return first, last


def attention_backward(do, q, k, v, out, lse, kv_start, kv_end, scale: float):
    """Returns dq, dk, dv shaped and laid out like q, k, v."""
    do = _last_dim_contiguous(do)
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    b, s, h, d = q.shape
    s_k, h_kv = k.shape[1], k.shape[2]
    block_d = max(16, triton.next_power_of_2(d))
    delta = torch.empty((b, h, s), device=q.device, dtype=torch.float32)
    bm = 64
    _bwd_delta_kernel[(triton.cdiv(s, bm), b * h)](
        out, do, delta, *_strides3(out), *_strides3(do), s, h,
        HEAD_DIM=d, BLOCK_D=block_d, BLOCK_M=bm)

    dq = torch.empty_like(q)
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    common = dict(GROUP=h // h_kv, HEAD_DIM=d, BLOCK_D=block_d, UPCAST_DOT=INTERPRET, **_fixed_blocks())
    grid_q = lambda meta: (triton.cdiv(s, meta["BLOCK_M"]), b * h)  # noqa: E731
    _bwd_dq[grid_q](q, k, v, do, dq, lse, delta, kv_start, kv_end,
                    *_strides3(q), *_strides3(k), *_strides3(v), *_strides3(do), *_strides3(dq),
                    kv_start.stride(0), kv_start.stride(1),
                    s, s_k, h, scale * LOG2E, scale, _seq_bucket(s), **common)

    q_first, q_last = query_ranges_per_key_group(kv_start, kv_end, s_k)
    grid_k = lambda meta: (triton.cdiv(s_k, meta["BLOCK_N"]), b * h_kv)  # noqa: E731
    _bwd_dkdv[grid_k](q, k, v, do, dk, dv, lse, delta, kv_start, kv_end, q_first, q_last,
                      *_strides3(q), *_strides3(k), *_strides3(v), *_strides3(do), *_strides3(dk),
                      *_strides3(dv), kv_start.stride(0), kv_start.stride(1), q_first.stride(0),
                      s, s_k, h, h_kv, q_first.shape[1], scale * LOG2E, scale, _seq_bucket(s),
                      ROW_GROUP=ROW_GROUP, **common)
    return dq, dk, dv


# ----------------------------------------------------------------------------- autograd


class IntervalAttention(torch.autograd.Function):
    """q [b, s, h, d], k/v [b, s_k, h_kv, d] (views of any layout), kv_start/kv_end int32 [b, s].
    Returns (out, lse2); lse2 is not differentiable."""

    @staticmethod
    def forward(ctx, q, k, v, kv_start, kv_end, scale):
        out, lse = attention_forward(q, k, v, kv_start, kv_end, scale)
        ctx.save_for_backward(q, k, v, out, lse, kv_start, kv_end)
        ctx.scale = scale
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse, kv_start, kv_end = ctx.saved_tensors
        dq, dk, dv = attention_backward(dout, q, k, v, out, lse, kv_start, kv_end, ctx.scale)
        return dq, dk, dv, None, None, None


def lse2_to_natural(lse2: torch.Tensor) -> torch.Tensor:
    """Base-2 internal log-sum-exp -> natural log, -inf for rows that see nothing."""
    return torch.where(torch.isinf(lse2), float("-inf"), lse2 * LN2)


def default_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)
