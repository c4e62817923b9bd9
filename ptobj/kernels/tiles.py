"""Block metadata from row intervals: which key tiles each query tile must visit, and
which query tiles each key tile must visit, each split into partial and full parts.

Query i sees keys ``kv_start[b, i] <= j < kv_end[b, i]``. For a group of ``group``
consecutive rows the four numbers ``[lo, hi, full_lo, full_hi)`` say: keys in
``[lo, hi)`` are seen by some row (the hull of the rows' intervals), keys in
``[full_lo, full_hi)`` by every row (their intersection). A kernel tile made of
several groups takes the min/max of its groups and rounds to its own tile size, so
one table serves every tile shape that is a multiple of ``group``. Key tiles between
the hull and the intersection are "partial" (masked), the ones inside the intersection
"full" (no mask), the rest are never visited. Where the visible keys of a tile are not
one contiguous range the hull still covers them; the gaps run as partial tiles.

The same four numbers per group of keys (in query rows) drive the dK/dV direction:
``[q_lo, q_hi)`` the rows that see any key of the group, ``[q_full_lo, q_full_hi)`` a
run of row groups in which every row sees every key of the group.

All of it is O(S) except the per-key-group row ranges, O((S / group)^2) booleans,
computed in chunks; it runs once per micro-batch and every layer reuses it.
"""

from __future__ import annotations

import torch


def clamp_intervals(kv_start: torch.Tensor, kv_end: torch.Tensor, kv_len: int):
    """int32 [b, s] intervals inside [0, kv_len]; an empty row becomes start == end."""
    st = kv_start.clamp(0, kv_len).to(torch.int32)
    en = torch.maximum(kv_end.clamp(0, kv_len).to(torch.int32), st)
    return st, en


def _pad_groups(x: torch.Tensor, group: int, value: int) -> torch.Tensor:
    """[b, s] -> [b, ceil(s / group), group], the tail filled with ``value``."""
    b, s = x.shape
    n = -(-s // group)
    return torch.nn.functional.pad(x, (0, n * group - s), value=value).view(b, n, group)


def row_group_ranges(st: torch.Tensor, en: torch.Tensor, group: int, kv_len: int) -> torch.Tensor:
    """int32 [b, ceil(s / group), 4]: per group of query rows [lo, hi, full_lo, full_hi) in keys.

    lo / hi: the hull of the non-empty rows' intervals (kv_len / 0 if all are empty);
    full_lo / full_hi: the intersection of every row's interval (an empty row empties it).
    Rows past the end of the sequence are ignored (they are never stored)."""
    nonempty = en > st
    lo = _pad_groups(torch.where(nonempty, st, kv_len), group, kv_len).amin(-1)
    hi = _pad_groups(torch.where(nonempty, en, 0), group, 0).amax(-1)
    full_lo = _pad_groups(torch.where(nonempty, st, kv_len), group, 0).amax(-1)
    full_hi = _pad_groups(torch.where(nonempty, en, 0), group, kv_len).amin(-1)
    return torch.stack([lo, hi, full_lo, full_hi], -1).to(torch.int32)


def key_group_ranges(rows: torch.Tensor, q_len: int, row_group: int, key_group: int, kv_len: int,
                     chunk: int = 512) -> torch.Tensor:
    """int32 [b, ceil(kv_len / key_group), 4]: per group of keys [q_lo, q_hi, q_full_lo, q_full_hi)
    in query rows, from ``rows = row_group_ranges(..., row_group, kv_len)``.

    [q_lo, q_hi): the row groups that reach the key group (q_len / 0 if none);
    [q_full_lo, q_full_hi): the first run of row groups in which every row sees every key of
    the group (q_len / 0 if none). A row group that runs past ``q_len`` is never full, so a
    full query tile holds real rows only."""
    b, n_r, _ = rows.shape
    n_k = -(-kv_len // key_group)
    dev = rows.device
    lo, hi, full_lo, full_hi = (rows[..., i, None] for i in range(4))  # [b, n_r, 1]
    r = torch.arange(n_r, device=dev)
    whole = ((r + 1) * row_group <= q_len)[None, :, None]
    out = []
    for c0 in range(0, n_k, chunk):
        g0 = torch.arange(c0, min(n_k, c0 + chunk), device=dev) * key_group
        g1 = (g0 + key_group).clamp(max=kv_len)
        touch = (lo < g1) & (hi > g0)  # [b, n_r, c]
        full = whole & (full_lo <= g0) & (full_hi >= g1) & (full_lo < full_hi)
        first = touch.to(torch.int8).argmax(1)
        last = n_r - 1 - touch.flip(1).to(torch.int8).argmax(1)
        any_touch = touch.any(1)
        q_lo = torch.where(any_touch, first * row_group, q_len)
        q_hi = torch.where(any_touch, ((last + 1) * row_group).clamp(max=q_len), 0)
        f = full.to(torch.int8).argmax(1)  # first full row group
        after = ~full & (r[None, :, None] >= f[:, None])
        f_end = torch.where(after.any(1), after.to(torch.int8).argmax(1), n_r)
        any_full = full.any(1)
        q_full_lo = torch.where(any_full, f * row_group, q_len)
        q_full_hi = torch.where(any_full, f_end * row_group, 0)
        out.append(torch.stack([q_lo, q_hi, q_full_lo, q_full_hi], -1))
    if not out:
        return torch.zeros(b, 0, 4, dtype=torch.int32, device=dev)
    return torch.cat(out, 1).to(torch.int32)


def heaviest_first(ranges: torch.Tensor, groups_per_unit: int) -> torch.Tensor:
    """int32 [b, n_units]: unit indices (``groups_per_unit`` consecutive groups) ordered by
    descending work, work being the summed hull length of their groups. Kernels launch
    their tiles in this order, so the longest tiles start first and short ones fill the tail."""
    span = (ranges[..., 1] - ranges[..., 0]).clamp(min=0).to(torch.int64)
    work = _pad_groups(span, groups_per_unit, 0).sum(-1)
    return torch.argsort(work, dim=1, descending=True, stable=True).to(torch.int32)


def tile_ranges(ranges: torch.Tensor, groups_per_tile: int, step: int, far: int, fine: int | None = None) -> torch.Tensor:
    """The kernels' rule (``_tile_ranges`` in ptobj/kernels/triton_attention.py), in torch, for the
    tests and the Flex block mask: per tile of ``groups_per_tile`` table groups, int32
    [b, n_tiles, 4] = [lo, mid_lo, mid_hi, hi) over the other side: partial tiles of ``fine``
    (default ``step``) in [lo, mid_lo) and [mid_hi, hi), full tiles of ``step`` in
    [mid_lo, mid_hi). ``far``: the other side's length (an empty group's lowest start)."""
    fine = step if fine is None else fine
    lo = _pad_groups(ranges[..., 0], groups_per_tile, far).amin(-1)
    hi = _pad_groups(ranges[..., 1], groups_per_tile, 0).amax(-1)
    full_lo = _pad_groups(ranges[..., 2], groups_per_tile, 0).amax(-1)
    full_hi = _pad_groups(ranges[..., 3], groups_per_tile, far).amin(-1)
    lo = lo // fine * fine
    full_lo = -(-full_lo // fine) * fine
    full_hi = full_lo + torch.div(full_hi - full_lo, step, rounding_mode="trunc") * step
    has_full = (full_hi > full_lo) & (hi > lo)
    mid_lo = torch.where(has_full, full_lo, hi)
    mid_hi = torch.where(has_full, full_hi, hi)
    return torch.stack([lo, mid_lo, mid_hi, hi], -1).to(torch.int32)
