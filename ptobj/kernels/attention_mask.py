"""AttentionMask: row intervals plus what one attention backend needs, built once per
micro-batch and shared by every layer.

Everything lives in ONE int32 tensor ``data`` of shape [b, L] (or [1, L] when the
batch shares its intervals): the clamped intervals, then the backend's block tables.
One plain tensor is what megatron hands unchanged from the model to every layer's
core attention as ``attention_mask``; activation recompute saves and replays it, and
pipeline schedules that interleave micro-batches replay the right one. Rebuilding the
``AttentionMask`` around it (``from_data``) only slices views: no device work and no
host synchronisation per layer.

Backends and their tables:

- ``triton``: per group of query rows [lo, hi, full_lo, full_hi) in keys, per group of
  keys [q_lo, q_hi, q_full_lo, q_full_hi) in rows, and both directions' tiles ordered
  heaviest first (see ``ptobj.kernels.tiles``). Group 64 and scheduling unit 128 for compiled
  kernels (every shipped tile is 64 or 128); 16 and 32 under TRITON_INTERPRET=1.
- ``flex``: a FlexAttention BlockMask (partial and full block lists, both directions)
  at 128x128 blocks, derived from the same tables, no [S, S] evaluation.
- ``sdpa``: plain causal attention only (checked once when built); no table.
- ``reference``: the intervals alone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from . import tiles

BACKENDS = ("triton", "flex", "sdpa", "reference")
FLEX_BLOCK = 128


def interpreting() -> bool:
    """True when Triton runs kernels through its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on", "y")


def triton_tiling() -> tuple[int, int]:
    """(group, unit) of the Triton block tables: every kernel tile is a multiple of ``group``
    and divides ``unit``; tiles are scheduled heaviest first in units of ``unit`` rows/keys."""
    return (16, 32) if interpreting() else (64, 128)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _sections(backend: str, q_len: int, kv_len: int, group: int, unit: int) -> dict[str, tuple[int, ...]]:
    """Per batch row: section name -> shape, in storage order."""
    out = {"kv_start": (q_len,), "kv_end": (q_len,)}
    if backend == "triton":
        out.update(q_ranges=(_cdiv(q_len, group), 4), k_ranges=(_cdiv(kv_len, group), 4),
                   q_order=(_cdiv(q_len, unit),), k_order=(_cdiv(kv_len, unit),))
    elif backend == "flex":
        nq, nk = _cdiv(q_len, group), _cdiv(kv_len, group)
        out.update(kv_num=(nq,), kv_idx=(nq, nk), full_kv_num=(nq,), full_kv_idx=(nq, nk),
                   q_num=(nk,), q_idx=(nk, nq), full_q_num=(nk,), full_q_idx=(nk, nq))
    return out


def _as_rows(t, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got {t.dtype}")
    if t.dim() == 1:
        return t[None]
    if t.dim() != 2:
        raise ValueError(f"{name} must have shape [s] or [b, s], got {tuple(t.shape)}")
    return t


def _block_lists(visit: torch.Tensor):
    """bool [b, n, m] -> (count int32 [b, n], indices int32 [b, n, m]: visited first, ascending)."""
    count = visit.sum(-1, dtype=torch.int32)
    order = torch.sort(visit.to(torch.int8), dim=-1, descending=True, stable=True).indices
    return count, order.to(torch.int32)


def _flex_tables(st: torch.Tensor, en: torch.Tensor, q_len: int, kv_len: int, block: int) -> list[torch.Tensor]:
    """FlexAttention's BlockMask tensors from the intervals, kv direction from the row tables
    and the q direction as its exact transpose (what BlockMask.from_kv_blocks computes)."""
    rows = tiles.row_group_ranges(st, en, block, kv_len)
    lo, mid_lo, mid_hi, hi = tiles.tile_ranges(rows, 1, block, kv_len).unbind(-1)  # [b, nq] in keys
    nq, nk = rows.shape[1], _cdiv(kv_len, block)
    n0 = torch.arange(nk, device=st.device) * block  # key block starts
    whole_rows = ((torch.arange(nq, device=st.device) + 1) * block <= q_len)[None, :, None]
    full = (n0 >= mid_lo[..., None]) & (n0 < mid_hi[..., None]) & whole_rows
    partial = (n0 >= lo[..., None]) & (n0 < hi[..., None]) & ~full
    kv_num, kv_idx = _block_lists(partial)
    full_kv_num, full_kv_idx = _block_lists(full)
    q_num, q_idx = _block_lists(partial.transpose(1, 2))
    full_q_num, full_q_idx = _block_lists(full.transpose(1, 2))
    return [kv_num, kv_idx, full_kv_num, full_kv_idx, q_num, q_idx, full_q_num, full_q_idx]


@dataclass(frozen=True)
class AttentionMask:
    """Row intervals (query i sees keys kv_start[b, i] <= j < kv_end[b, i]) prepared for one
    backend. Build with ``AttentionMask.build``; ``data`` is the one tensor to carry around."""

    backend: str
    data: torch.Tensor  # int32 [b, L] or [1, L] (shared by the batch)
    q_len: int
    kv_len: int
    group: int = 0  # triton: block-table group; flex: block size
    unit: int = 0  # triton: scheduling unit

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        width = sum(_prod(shape) for shape in self._layout().values())
        if self.data.dim() != 2 or self.data.shape[1] != width or self.data.dtype != torch.int32:
            raise ValueError(f"AttentionMask data for backend {self.backend!r}, q_len {self.q_len}, kv_len "
                             f"{self.kv_len} must be int32 [b, {width}]; got {self.data.dtype} {tuple(self.data.shape)}")

    def _layout(self) -> dict[str, tuple[int, ...]]:
        return _sections(self.backend, self.q_len, self.kv_len, self.group, self.unit)

    def field(self, name: str) -> torch.Tensor:
        """A view [b or 1, *shape] of one section of ``data``."""
        offset = 0
        for key, shape in self._layout().items():
            size = _prod(shape)
            if key == name:
                return self.data[:, offset:offset + size].view(self.data.shape[0], *shape)
            offset += size
        raise KeyError(f"backend {self.backend!r} has no table {name!r}")

    @property
    def kv_start(self) -> torch.Tensor:
        return self.field("kv_start")

    @property
    def kv_end(self) -> torch.Tensor:
        return self.field("kv_end")

    @property
    def batch(self) -> int:
        """Rows of intervals: 1 when shared by the whole batch."""
        return self.data.shape[0]

    @classmethod
    def build(cls, kv_start: torch.Tensor, kv_end: torch.Tensor, *, backend: str = "auto",
              kv_len: int | None = None, tiling: tuple[int, int] | None = None) -> "AttentionMask":
        """Clamp the intervals to [0, kv_len] and build ``backend``'s tables.

        kv_start, kv_end: integer [b, s], or [s] for intervals the whole batch shares.
        ``backend="auto"``: triton for CUDA tensors, else reference. ``kv_len`` defaults to s.
        ``tiling``: (group, unit) of the triton tables (default ``triton_tiling()``)."""
        st, en = _as_rows(kv_start, "kv_start"), _as_rows(kv_end, "kv_end")
        if st.shape != en.shape:
            raise ValueError(f"kv_start {tuple(kv_start.shape)} and kv_end {tuple(kv_end.shape)} shapes differ")
        if backend == "auto":
            backend = "triton" if st.is_cuda else "reference"
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS} or 'auto', got {backend!r}")
        q_len = st.shape[1]
        kv_len = q_len if kv_len is None else int(kv_len)
        if q_len < 1 or kv_len < 1:
            raise ValueError(f"q_len ({q_len}) and kv_len ({kv_len}) must be >= 1")
        st, en = tiles.clamp_intervals(st, en, kv_len)
        group = unit = 0
        parts = [st, en]
        if backend == "sdpa":
            causal_end = torch.arange(1, q_len + 1, device=st.device, dtype=torch.int32)
            if kv_len != q_len or bool((st != 0).any()) or not torch.equal(en, causal_end.expand_as(en)):
                raise ValueError("backend 'sdpa' serves plain causal attention only (kv_start = 0, "
                                 "kv_end = i + 1, as many keys as queries); use 'triton' or 'flex' for other masks")
        elif backend == "triton":
            group, unit = tiling or triton_tiling()
            if unit % group:
                raise ValueError(f"tiling unit {unit} must be a multiple of group {group}")
            rows = tiles.row_group_ranges(st, en, group, kv_len)
            keys = tiles.key_group_ranges(rows, q_len, group, group, kv_len)
            parts += [rows, keys, tiles.heaviest_first(rows, unit // group),
                      tiles.heaviest_first(keys, unit // group)]
        elif backend == "flex":
            group = FLEX_BLOCK
            parts += _flex_tables(st, en, q_len, kv_len, group)
        data = torch.cat([p.reshape(p.shape[0], -1).to(torch.int32) for p in parts], 1)
        return cls(backend, data, q_len, kv_len, group, unit)

    @staticmethod
    def width(backend: str, q_len: int, kv_len: int, tiling: tuple[int, int] | None = None) -> int:
        """Entries per batch row of ``data`` for these sizes."""
        group, unit = (tiling or triton_tiling()) if backend == "triton" else (FLEX_BLOCK, 0)
        return sum(_prod(shape) for shape in _sections(backend, q_len, kv_len, group, unit).values())

    @classmethod
    def from_data(cls, data: torch.Tensor, *, backend: str, q_len: int, kv_len: int | None = None,
                  tiling: tuple[int, int] | None = None) -> "AttentionMask":
        """Wrap a tensor made by ``build(...).data`` again (views only)."""
        group = unit = 0
        if backend == "triton":
            group, unit = tiling or triton_tiling()
        elif backend == "flex":
            group = FLEX_BLOCK
        return cls(backend, data, q_len, q_len if kv_len is None else kv_len, group, unit)

    def rows_for(self, batch: int) -> torch.Tensor:
        """Check that this mask serves a batch of ``batch`` rows; returns data expanded to it."""
        if self.batch not in (1, batch):
            raise ValueError(f"mask has {self.batch} rows of intervals, the batch has {batch}")
        return self.data.expand(batch, -1)


def _prod(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
