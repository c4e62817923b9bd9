"""Block tables (ptobj.kernels.tiles) and AttentionMask against the dense visibility matrix.

For every tile the tables promise two things the kernels rely on: every visible
(query, key) pair lies in a visited tile (nothing is skipped), and every pair in a
"full" tile is visible for every real row (no mask is needed there). Checked tile by
tile for random intervals and the mask families, in both directions, at several tile
shapes made from one table.
"""

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import interval_masks as masks
from ptobj.kernels import AttentionMask, tiles


def dense(kv_start, kv_end, kv_len):
    j = torch.arange(kv_len)
    return (j >= kv_start[..., None]) & (j < kv_end[..., None])  # [b, s, kv_len]


def check_direction(vis, ranges, group, tile, step, fine, far, whole_only=False):
    """vis [b, own, other]: the side the table has groups of, against the other side.
    ``whole_only``: full ranges may hold only whole groups of the other side (dK/dV)."""
    b, n_own, n_other = vis.shape
    per_tile = tiles.tile_ranges(ranges, tile // group, step, far, fine=fine)
    for bi in range(b):
        for t in range(per_tile.shape[1]):
            lo, mid_lo, mid_hi, hi = per_tile[bi, t].tolist()
            block = vis[bi, t * tile:(t + 1) * tile]  # [rows, other]
            visited = torch.zeros(n_other, dtype=torch.bool)
            if hi > lo:
                assert lo % fine == 0 and lo <= mid_lo <= mid_hi <= hi
                visited[lo:hi] = True
            assert not (block.any(0) & ~visited).any(), f"tile {t}: visible pairs outside [{lo}, {hi})"
            if mid_hi > mid_lo:
                assert mid_lo % fine == 0 and (mid_hi - mid_lo) % step == 0
                assert block[:, mid_lo:mid_hi].all(), f"tile {t}: 'full' [{mid_lo}, {mid_hi}) has masked pairs"
                if whole_only:
                    assert mid_hi <= (n_other // group) * group, f"tile {t}: full range reaches padded rows"


def random_intervals(gen, b, s, kv_len):
    start = torch.randint(-3, kv_len, (b, s), generator=gen)
    end = start + torch.randint(-4, kv_len // 2 + 4, (b, s), generator=gen)
    return start, end


CASES = [("random", 2, 70, 90), ("random", 1, 33, 33), ("causal", 1, 97, 97), ("bidir", 2, 64, 64),
         ("r2l", 1, 81, 81), ("s2s", 1, 77, 77), ("window", 1, 50, 50)]


@pytest.mark.parametrize("kind, b, s, kv_len", CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
@pytest.mark.parametrize("group", [8, 16])
def test_tables_cover_every_visible_pair_and_full_tiles_are_full(kind, b, s, kv_len, group):
    gen = torch.Generator().manual_seed(s + group)
    if kind == "random":
        start, end = random_intervals(gen, b, s, kv_len)
    else:
        seg = np.repeat(np.arange(4), [s // 3, 5, s // 4, s])[:s].astype(np.int32)
        start, end = (t[None].expand(b, s) for t in masks.family(kind, seg))
    st_, en = tiles.clamp_intervals(start, end, kv_len)
    vis = dense(st_, en, kv_len)
    rows = tiles.row_group_ranges(st_, en, group, kv_len)
    keys = tiles.key_group_ranges(rows, s, group, group, kv_len, chunk=3)  # chunks: exercise the loop
    for tile, step, fine in ((group, group, group), (2 * group, group, group), (2 * group, 2 * group, group),
                             (4 * group, 16, 8)):
        check_direction(vis, rows, group, tile, step, fine, kv_len)
        check_direction(vis.transpose(1, 2), keys, group, tile, step, fine, s, whole_only=True)


def test_empty_rows_never_make_a_tile_full():
    s = 32
    start = torch.zeros(1, s, dtype=torch.int32)
    end = torch.full((1, s), s, dtype=torch.int32)
    end[0, 5] = 0  # one row that sees nothing
    rows = tiles.row_group_ranges(*tiles.clamp_intervals(start, end, s), 8, s)
    per_tile = tiles.tile_ranges(rows, 1, 8, s)
    lo, mid_lo, mid_hi, hi = per_tile[0, 0].tolist()
    assert mid_lo == mid_hi and (lo, hi) == (0, s)  # the group holding row 5: every key tile masked
    assert per_tile[0, 1].tolist() == [0, 0, s, s]  # the next group sees everything in full


def test_heaviest_first_orders_units_by_work():
    s = 64
    i = torch.arange(s, dtype=torch.int32)[None]
    rows = tiles.row_group_ranges(*tiles.clamp_intervals(torch.zeros_like(i), i + 1, s), 8, s)
    order = tiles.heaviest_first(rows, 2)  # units of 16 rows; causal: later rows see more keys
    assert order.tolist() == [[3, 2, 1, 0]]


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 3), st.integers(1, 40), st.integers(1, 40), st.integers(0, 2**31 - 1))
def test_mask_layout_round_trips(b, s, kv_len, seed):
    gen = torch.Generator().manual_seed(seed)
    start, end = random_intervals(gen, b, s, kv_len)
    for backend in ("triton", "flex", "reference"):
        mask = AttentionMask.build(start, end, backend=backend, kv_len=kv_len, tiling=(8, 16))
        again = AttentionMask.from_data(mask.data, backend=backend, q_len=s, kv_len=kv_len, tiling=(8, 16))
        want_st, want_en = tiles.clamp_intervals(start, end, kv_len)
        assert torch.equal(again.kv_start, want_st) and torch.equal(again.kv_end, want_en)
        assert again.data.data_ptr() == mask.data.data_ptr()  # views, no copy


def test_flex_tables_match_the_dense_mask_block_by_block():
    s, block = 300, 128
    seg = np.repeat(np.arange(3), [100, 90, 110]).astype(np.int32)
    start, end = masks.causal(seg)
    mask = AttentionMask.build(start, end, backend="flex")
    vis = dense(*tiles.clamp_intervals(start[None], end[None], s), s)[0]
    n = -(-s // block)
    partial = torch.zeros(n, n, dtype=torch.bool)
    full = torch.zeros(n, n, dtype=torch.bool)
    for m in range(n):
        for name, target in (("kv", partial), ("full_kv", full)):
            count = int(mask.field(f"{name}_num")[0, m])
            target[m, mask.field(f"{name}_idx")[0, m, :count].long()] = True
    for m in range(n):
        for k in range(n):
            blk = vis[m * block:(m + 1) * block, k * block:(k + 1) * block]
            if blk.any():
                assert partial[m, k] or full[m, k], (m, k)
            if full[m, k]:
                assert blk.all() and not partial[m, k]
    # the q direction is the exact transpose of the kv direction
    for k in range(n):
        count = int(mask.field("q_num")[0, k])
        assert sorted(mask.field("q_idx")[0, k, :count].tolist()) == torch.nonzero(partial[:, k]).flatten().tolist()


def test_batch_shared_intervals_are_stored_once():
    mask = AttentionMask.build(torch.zeros(10, dtype=torch.int32), torch.arange(1, 11), backend="triton",
                               tiling=(8, 16))
    assert mask.batch == 1 and mask.rows_for(4).shape[0] == 4
    with pytest.raises(ValueError, match="rows of intervals"):
        AttentionMask.build(torch.zeros(2, 10, dtype=torch.int32), torch.ones(2, 10, dtype=torch.int32),
                            backend="reference").rows_for(3)


def test_bad_masks_are_named():
    ok = torch.zeros(6, dtype=torch.int32)
    with pytest.raises(ValueError, match="backend"):
        AttentionMask.build(ok, ok + 1, backend="cuda")
    with pytest.raises(TypeError, match="kv_start"):
        AttentionMask.build(ok.float(), ok + 1)
    with pytest.raises(ValueError, match="shapes differ"):
        AttentionMask.build(ok, torch.ones(7, dtype=torch.int32))
    with pytest.raises(ValueError, match="plain causal"):
        AttentionMask.build(ok, torch.full((6,), 6), backend="sdpa")
    with pytest.raises(ValueError, match="must be int32"):
        AttentionMask.from_data(torch.zeros(1, 5, dtype=torch.int32), backend="reference", q_len=6)
