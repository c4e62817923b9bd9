"""The tests' interval helper (tests/interval_masks.py): torch front-ends over ptobj.objectives.intervals."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import interval_masks as masks
from ptobj.objectives import intervals


def segments(lengths):
    return np.repeat(np.arange(len(lengths)), lengths).astype(np.int32)


def test_literal_packed_causal_and_bidirectional():
    seg = torch.tensor([0, 0, 0, 1, 1])
    start, end = masks.causal(seg)
    assert start.dtype == torch.int32 and end.dtype == torch.int32
    assert start.tolist() == [0, 0, 0, 3, 3] and end.tolist() == [1, 2, 3, 4, 5]
    start, end = masks.bidirectional(seg)
    assert start.tolist() == [0, 0, 0, 3, 3] and end.tolist() == [3, 3, 3, 5, 5]
    start, end = masks.right_to_left(seg)
    assert start.tolist() == [0, 1, 2, 3, 4] and end.tolist() == [3, 3, 3, 5, 5]


def test_prefix_lm_and_sliding_window_literal():
    seg = np.array([0, 0, 0, 0, 1, 1, 1])
    prefix_end = np.array([2, 2, 2, 2, 6, 6, 6])
    start, end = masks.prefix_lm(seg, prefix_end)
    assert start.tolist() == [0, 0, 0, 0, 4, 4, 4]
    assert end.tolist() == [2, 2, 3, 4, 6, 6, 7]
    start, end = masks.sliding_window(np.zeros(5, np.int32), 2)
    assert start.tolist() == [0, 0, 1, 2, 3] and end.tolist() == [1, 2, 3, 4, 5]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(st.integers(1, 6), min_size=1, max_size=4), min_size=1, max_size=3),
       st.integers(1, 4))
def test_batched_rows_equal_numpy_per_row(lengths_per_row, window):
    n = min(sum(lens) for lens in lengths_per_row)
    seg = np.stack([segments(lens)[:n] for lens in lengths_per_row])
    for torch_fn, np_fn in ((masks.causal, intervals.causal), (masks.bidirectional, intervals.bidirectional),
                            (masks.right_to_left, intervals.right_to_left)):
        start, end = torch_fn(torch.from_numpy(seg))
        assert start.shape == seg.shape
        for row, s_row, e_row in zip(seg, start, end):
            s_np, e_np = np_fn(row)
            np.testing.assert_array_equal(s_row.numpy(), s_np)
            np.testing.assert_array_equal(e_row.numpy(), e_np)
    start, end = masks.sliding_window(seg, window)
    for row, s_row, e_row in zip(seg, start, end):
        s_np, e_np = intervals.sliding_window(row, window)
        np.testing.assert_array_equal(s_row.numpy(), s_np)
        np.testing.assert_array_equal(e_row.numpy(), e_np)
    dense = masks.dense(start, end)
    np.testing.assert_array_equal(dense.numpy(), intervals.dense(start.numpy(), end.numpy()))


def test_prefix_end_per_batch_row():
    seg = np.zeros((2, 4), np.int32)
    prefix_end = np.array([[1, 1, 1, 1], [3, 3, 3, 3]])
    start, end = masks.prefix_lm(seg, prefix_end)
    assert end.tolist() == [[1, 2, 3, 4], [3, 3, 3, 4]]


def test_device_and_causal_for_length():
    start, end = masks.causal_for_length(4, batch=2, device="cpu")
    assert start.shape == (2, 4) and start.device.type == "cpu"
    assert end.tolist() == [[1, 2, 3, 4]] * 2 and start.sum() == 0


def test_bad_inputs_name_the_field():
    with pytest.raises(TypeError, match="segment_ids"):
        masks.causal(np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match="segment_ids"):
        masks.causal(np.zeros((1, 2, 3), np.int32))
