"""Row-interval masks against dense masks built the obvious way, pair by pair."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from ptobj.objectives import intervals


def segments_strategy():
    return st.lists(st.integers(1, 7), min_size=1, max_size=6).map(
        lambda lens: np.repeat(np.arange(len(lens)), lens).astype(np.int32)
    )


def obvious(seg, rule):
    n = len(seg)
    m = np.zeros((n, n), bool)
    for i in range(n):
        for j in range(n):
            m[i, j] = seg[i] == seg[j] and rule(i, j)
    return m


@settings(max_examples=60, deadline=None)
@given(segments_strategy())
def test_families_match_dense(seg):
    checks = {
        intervals.causal: lambda i, j: j <= i,
        intervals.bidirectional: lambda i, j: True,
        intervals.right_to_left: lambda i, j: j >= i,
    }
    for fn, rule in checks.items():
        start, end = fn(seg)
        assert start.dtype == np.int32 and end.dtype == np.int32
        np.testing.assert_array_equal(intervals.dense(start, end), obvious(seg, rule), err_msg=fn.__name__)


@settings(max_examples=60, deadline=None)
@given(segments_strategy(), st.integers(1, 5))
def test_sliding_window_matches_dense(seg, window):
    start, end = intervals.sliding_window(seg, window)
    np.testing.assert_array_equal(intervals.dense(start, end), obvious(seg, lambda i, j: i - window < j <= i))


def test_prefix_lm_literal():
    # one document of 5 tokens, source = first 2: source rows see the source, target rows are causal
    seg = np.zeros(5, np.int32)
    start, end = intervals.prefix_lm(seg, np.full(5, 2))
    assert start.tolist() == [0, 0, 0, 0, 0]
    assert end.tolist() == [2, 2, 3, 4, 5]


def test_sliding_window_rejects_zero():
    with pytest.raises(ValueError, match="window"):
        intervals.sliding_window(np.zeros(3, np.int32), 0)


def test_empty_row_is_empty_in_dense():
    m = intervals.dense(np.array([2, 0]), np.array([2, 1]))
    assert not m[0].any() and m[1].tolist() == [True, False]
