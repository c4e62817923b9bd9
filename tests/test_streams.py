"""Counter-based row streams and the batch form of samples (ptobj.objectives.streams, ptobj.objectives.sample)."""

import numpy as np
import pytest

from ptobj.objectives import streams
from ptobj.objectives.sample import Transform, lengths, row, stack
from ptobj.objectives.streams import RowStreams, site

A, B = site("test.a"), site("test.b")


def test_a_rows_draws_do_not_depend_on_its_batch_or_draw_count():
    idx = np.array([7, 3, 1000, 0, 3])
    many = RowStreams.for_rows(11, 2, idx)
    wide = many.uniform(A, 40)
    for b, i in enumerate(idx):
        alone = RowStreams.for_rows(11, 2, int(i))
        np.testing.assert_array_equal(alone.uniform(A, 7)[0], wide[b, :7])   # fewer draws: a prefix
        np.testing.assert_array_equal(many.take([b]).uniform(A, 40)[0], wide[b])
    # the same key in two rows gives the same numbers; a different key does not
    np.testing.assert_array_equal(wide[1], wide[4])
    assert not np.array_equal(wide[0], wide[1])
    # draws at given counters equal the dense form
    rows = np.array([0, 2, 2, 4])
    cols = np.array([5, 0, 39, 12])
    np.testing.assert_array_equal(many.uniform_at(A, rows, cols), wide[rows, cols])


def test_keys_are_seed_epoch_index_and_purpose():
    s = RowStreams.for_rows(5, 3, [0, 1])
    assert int(s.keys[0]) == streams.key("transform", 5, 3, 0)
    assert int(s.keys[1]) == streams.key("transform", 5, 3, 1)
    assert int(RowStreams.of(5, epoch=3, index=1).keys[0]) == streams.key("transform", 5, 3, 1)
    # the same words under another purpose, or a shorter key that is a prefix, give another key
    assert streams.key("sampler.order", 5, 3) != streams.key("transform", 5, 3, 0)
    assert streams.key("sampler.order", 5, 3, 0) != streams.key("transform", 5, 3, 0)
    assert len({streams.key(p, 5, 3, 0) for p in streams.PURPOSES}) == len(streams.PURPOSES)
    a = streams.generator("sampler.order", 5, 3).random(4)
    b = np.random.default_rng([5, 3, 0]).random(4)
    assert not np.array_equal(a, b)
    with pytest.raises(KeyError, match="purpose"):
        streams.key("nobody", 1)
    other_seed = RowStreams.for_rows(6, 3, [0, 1]).uniform(A, 4)
    other_epoch = RowStreams.for_rows(5, 4, [0, 1]).uniform(A, 4)
    base = s.uniform(A, 4)
    assert not np.array_equal(base, other_seed) and not np.array_equal(base, other_epoch)


def test_uniforms_look_uniform_and_independent():
    s = RowStreams.for_rows(0, 0, np.arange(2000))
    u = s.uniform(A, 64)
    n = u.size
    assert u.min() >= 0.0 and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 5 * np.sqrt(1 / 12 / n)
    assert abs(u.var() - 1 / 12) < 0.005
    counts = np.bincount((u * 64).astype(int).ravel(), minlength=64)
    chi2 = ((counts - n / 64) ** 2 / (n / 64)).sum()
    assert chi2 < 63 + 6 * np.sqrt(2 * 63)              # 63 degrees of freedom, ~6 sigma
    def corr(x, y):
        return abs(np.corrcoef(x.ravel(), y.ravel())[0, 1])
    bound = 5 / np.sqrt(n / 2)
    assert corr(u[:, :-1], u[:, 1:]) < bound             # successive counters
    assert corr(u[:-1], u[1:]) < bound                   # neighbouring indices
    assert corr(u, s.uniform(B, 64)) < bound             # two sites
    assert corr(u, s.child(0).uniform(A, 64)) < bound    # a derived stream


def test_child_split_take_and_integers():
    s = RowStreams.for_rows(1, 0, np.arange(3))
    two = s.split(2)
    assert len(two) == 6
    np.testing.assert_array_equal(two.keys[0::2], s.child(0).keys)
    np.testing.assert_array_equal(two.keys[1::2], s.child(1).keys)
    assert len(set(two.keys.tolist()) | set(s.keys.tolist())) == 9
    ints = s.integers_at(A, np.repeat(np.arange(3), 500), np.tile(np.arange(500), 3), 16, 20)
    assert ints.min() == 16 and ints.max() == 19
    with pytest.raises(ValueError, match="empty"):
        s.integers_at(A, 0, 0, 5, 5)


def test_a_generator_is_refused_with_a_clear_message():
    with pytest.raises(TypeError, match="seed"):
        RowStreams.of(np.random.default_rng(0))
    with pytest.raises(ValueError, match="index"):
        RowStreams.for_rows(0, 0, -1)


def test_stack_and_row_round_trip():
    s1 = {"tokens": np.array([20, 21, 22], np.int32), "word_start": np.array([1, 0, 1], bool),
          "random_tokens": np.array([30], np.int32), "random_word_start": np.array([1], bool),
          "label": np.asarray(1, np.int32)}
    s2 = {"tokens": np.array([23], np.int32), "word_start": np.array([1], bool),
          "random_tokens": np.array([31, 32], np.int32), "random_word_start": np.array([1, 1], bool),
          "label": np.asarray(0, np.int32)}
    b = stack([s1, s2])
    assert b["tokens"].shape == (2, 3) and b["random_tokens"].shape == (2, 2)
    assert b["length"].tolist() == [3, 1] and b["random_length"].tolist() == [1, 2]
    assert b["label"].tolist() == [1, 0]
    assert lengths(b).tolist() == [3, 1] and lengths(b, "random_").tolist() == [1, 2]
    for i, s in enumerate((s1, s2)):
        back = row(b, i)
        assert back.keys() == s.keys()
        for k in s:
            np.testing.assert_array_equal(back[k], s[k])
    full = {"tokens": np.zeros((2, 5), np.int32)}
    assert lengths(full).tolist() == [5, 5]
    with pytest.raises(ValueError, match="word_start"):
        stack([{"tokens": np.zeros(3, np.int32), "word_start": np.zeros(2, bool)}])
    with pytest.raises(KeyError, match="fields"):
        stack([s1, {"tokens": np.zeros(1, np.int32)}])


class Noise(Transform):
    """A toy transform: adds its row's first draw to every token."""

    reads, writes = ("tokens",), ("tokens", "noise")

    def apply(self, batch, streams):
        u = streams.uniform(A, 1)[:, 0]
        return {"tokens": batch["tokens"], "noise": u}


def test_transform_base_one_sample_is_the_batch_of_one():
    t = Noise()
    samples = [{"tokens": np.arange(n, dtype=np.int32)} for n in (1, 4, 2)]
    out = t.batch(samples, RowStreams.for_rows(3, 1, [10, 11, 12]))
    for i, s in enumerate(samples):
        one = t(s, 3, epoch=1, index=10 + i)
        assert float(one["noise"]) == out["noise"][i]
    with pytest.raises(TypeError, match="RowStreams"):
        t.batch(samples, np.random.default_rng(0))
    with pytest.raises(ValueError, match="3 rows but 2 streams"):
        t.batch(samples, RowStreams.for_rows(3, 1, [0, 1]))
    with pytest.raises(TypeError, match="seed"):
        t(samples[0], np.random.default_rng(0))
    with pytest.raises(KeyError, match="tokens"):
        t.batch([{"x": np.zeros(1)}], RowStreams.for_rows(0, 0, [0]))


# ---- the key space: distinct keys, distinct draws, over the whole documented range -------------
EDGES = [0, 1, 2, 5, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**32 + 1, 2**32 + 5, 2**53 + 1, 2**62, 2**63 - 2, 2**63 - 1]


def test_distinct_row_keys_give_distinct_first_draws_across_the_range():
    epoch, index = (a.ravel().astype(np.uint64) for a in np.meshgrid(EDGES, EDGES, indexing="ij"))
    seen = {}
    for purpose in streams.PURPOSES:
        for seed in EDGES:
            rows = RowStreams.for_rows(seed, epoch, index, purpose=purpose)
            first = rows.bits(site("key.space"), np.arange(len(rows)), 0)
            for (e, i), word in zip(zip(epoch.tolist(), index.tolist()), first.tolist()):
                assert word not in seen, f"{(purpose, seed, e, i)} draws as {seen[word]}"
                seen[word] = (purpose, seed, e, i)
    assert len(seen) == len(streams.PURPOSES) * len(EDGES) ** 3


def test_distinct_generator_keys_give_distinct_first_draws_across_the_range():
    """Every way the package keys a generator (purpose, seed[, epoch]), one word or two."""
    seen = {}
    keys = [(p, s) for p in streams.PURPOSES for s in EDGES] + \
           [(p, s, e) for p in streams.PURPOSES for s in EDGES for e in EDGES]
    for k in keys:
        word = int(streams.generator(*k).bit_generator.random_raw())
        assert word not in seen, f"generator{k} draws as generator{seen[word]}"
        seen[word] = k
    # the collision numpy's own seeding makes: seed 2**32 + s at epoch 0 read as seed s at epoch 1
    a = streams.generator("sampler.order", 2**32 + 5, 0).permutation(50)
    b = streams.generator("sampler.order", 5, 1).permutation(50)
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("bad", [-1, 2**64, -(2**63)])
def test_key_words_outside_the_range_are_refused(bad):
    with pytest.raises(ValueError, match=r"must lie in \[0, 2\*\*64\)"):
        streams.generator("sampler.order", bad, 0)
    with pytest.raises(ValueError, match=r"must lie in \[0, 2\*\*64\)"):
        RowStreams.for_rows(bad, 0, 0)
    with pytest.raises(TypeError):
        streams.generator("sampler.order", 1.5)


def test_rows_broadcast_against_counters():
    rows = RowStreams.for_rows(3, 0, np.arange(4))
    grid = rows.uniform_at(site("x"), np.arange(4)[:, None], np.arange(3)[None, :])
    assert grid.shape == (4, 3)
    assert np.array_equal(grid, rows.uniform(site("x"), 3))              # the same numbers, drawn either way
    assert np.array_equal(rows.bits(site("x"), np.array([[2], [0]]), np.array([[5, 1]])),
                          np.stack([rows.bits(site("x"), [2, 2], [5, 1]), rows.bits(site("x"), [0, 0], [5, 1])]))
