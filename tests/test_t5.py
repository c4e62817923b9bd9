"""T5 span corruption in one decoder stack: literal layout, invariants, rates, mask."""

from __future__ import annotations

import numpy as np
import pytest

from ptobj.objectives import registry
from ptobj.objectives.sample import SpecialTokens, stack
from ptobj.objectives.streams import RowStreams
from ptobj.objectives.t5 import T5Config, T5SpanCorruption, input_length, noise_counts, sentinels_needed

V = 4000
SP = SpecialTokens().with_sentinels(V, 40)


def build(S: int, **kw) -> T5SpanCorruption:
    return T5SpanCorruption(T5Config(seq_length=S, **kw), special=SP, vocab_size=V)


def split_row(out: dict) -> tuple[list[int], list[int]]:
    """(source, target) of one output row: the source up to [SEP], the target after it up to EOT."""
    seq = out["tokens"].tolist() + [int(out["labels"][-1])]
    sep = seq.index(SP.sep)
    end = sep + 1 + seq[sep + 1:].index(SP.eot)
    return seq[:sep], seq[sep + 1:end]


def reassemble(source: list[int], target: list[int]) -> list[int]:
    """Put each sentinel's span back where the sentinel stands in the source."""
    spans, cur = {}, None
    for t in target:
        if t >= SP.sentinel_base:
            cur = t
            spans[cur] = []
        else:
            spans[cur].append(t)
    out = []
    for t in source:
        out.extend(spans[t] if t >= SP.sentinel_base else [t])
    return out


def test_literal_layout():
    t = build(40)
    assert t.width == 35 and tuple(noise_counts(35, t.config)) == (5, 2)
    text = np.arange(100, 135, dtype=np.int32)
    out = t({"tokens": text}, 3)
    source, target = split_row(out)
    s0, s1 = SP.sentinel_base, SP.sentinel_base + 1
    # two noise spans, replaced by <extra_id_0>, <extra_id_1> in order; the text ends in noise
    assert [x for x in source if SP.is_special(x)] == [s0, s1] and source[-1] == s1
    assert target[0] == s0 and target.count(s0) == 1 and target.count(s1) == 1
    assert len(target) == 5 + 2 and len(source) == 35 - 5 + 2
    assert reassemble(source, target) == text.tolist()
    # the full row: source [SEP] target [EOT] fills seq_length + 1 ids exactly
    assert out["loss_mask"].sum() == len(target) + 1
    assert int(out["labels"][-1]) == SP.eot


@pytest.mark.parametrize("S", [16, 64, 200])
def test_every_row_reassembles_and_spans_alternate(S):
    t = build(S)
    rng = np.random.default_rng(S)
    n = t.width
    for i in range(50):
        text = rng.integers(SP.first_regular, V, n).astype(np.int32)
        source, target = split_row(t({"tokens": text}, 7, index=i))
        assert reassemble(source, target) == text.tolist()
        sentinels = [x for x in source if x >= SP.sentinel_base]
        assert sentinels == list(range(SP.sentinel_base, SP.sentinel_base + len(sentinels)))
        # never two sentinels side by side (a non-noise run between spans) and none first
        assert source[0] < SP.sentinel_base
        assert all(not (a >= SP.sentinel_base and b >= SP.sentinel_base) for a, b in zip(source, source[1:]))


def test_input_length_is_the_longest_that_fits():
    for S in (8, 40, 512, 2048):
        c = T5Config(seq_length=S)
        n = input_length(c)
        fits = lambda m: m + 2 * int(noise_counts(m, c)[1]) + 2 <= S + 1   # noqa: E731
        assert fits(n) and not any(fits(m) for m in range(n + 1, S + 2))
    assert sentinels_needed(T5Config(seq_length=512)) == 23


def test_noise_density_and_mean_span_length_hold():
    t = build(512)
    B = 64
    text = np.random.default_rng(0).integers(SP.first_regular, V, (B, t.width)).astype(np.int32)
    out = t.batch({"tokens": text}, RowStreams.for_rows(11, 0, np.arange(B)))
    noise, spans = 0, 0
    lengths = []
    for b in range(B):
        _, target = split_row({k: v[b] for k, v in out.items()})
        is_sentinel = np.array(target) >= SP.sentinel_base
        noise += int((~is_sentinel).sum())
        spans += int(is_sentinel.sum())
        lengths += np.diff(np.flatnonzero(np.concatenate([is_sentinel, [True]]))).tolist()
    assert noise / (B * t.width) == pytest.approx(0.15, abs=0.002)
    assert np.mean(np.array(lengths) - 1) == pytest.approx(3.0, abs=0.1)
    assert max(lengths) - 1 > 6          # span lengths vary: a random composition, not fixed runs


def test_mask_is_prefix_lm_and_loss_covers_the_target_only():
    t = build(64)
    out = t({"tokens": np.arange(100, 100 + t.width, dtype=np.int32)}, 1)
    sep = int(np.flatnonzero(out["tokens"] == SP.sep)[0])
    i = np.arange(64)
    src = i <= sep
    assert (out["kv_start"] == 0).all()
    assert (out["kv_end"][src] == sep + 1).all()                  # the source sees the whole source
    assert (out["kv_end"][~src] == i[~src] + 1).all()             # the target sees what came before
    assert (out["loss_mask"][src[:]] == (i == sep)[src]).all()    # from [SEP] on (it predicts <extra_id_0>)
    assert (out["loss_mask"][~src] == 1).all()


def test_short_rows_pad_and_pads_see_nothing():
    t = build(64)
    out = t({"tokens": np.arange(100, 120, dtype=np.int32)}, 2)
    source, target = split_row(out)
    assert reassemble(source, target) == list(range(100, 120))
    L = len(source) + len(target) + 2
    assert out["tokens"][L - 1] == SP.eot and (out["tokens"][L:] == SP.pad).all()
    assert (out["loss_mask"][L - 1:] == 0).all() and out["loss_mask"][L - 2] == 1
    assert (out["kv_end"][L - 1:] <= out["kv_start"][L - 1:]).all()


def test_row_does_not_depend_on_its_batch():
    t = build(64)
    rng = np.random.default_rng(4)
    rows = [rng.integers(SP.first_regular, V, t.width).astype(np.int32) for _ in range(5)]
    batch = t.batch(stack([{"tokens": r} for r in rows]), RowStreams.for_rows(9, 2, [10, 11, 12, 13, 14]))
    alone = t({"tokens": rows[3]}, 9, epoch=2, index=13)
    for k in alone:
        np.testing.assert_array_equal(batch[k][3], alone[k])


def test_too_few_sentinels_is_an_error_naming_the_setting():
    with pytest.raises(ValueError, match=r"23 sentinel ids wanted, these special tokens reserve 5"):
        T5SpanCorruption(T5Config(seq_length=512), special=SpecialTokens().with_sentinels(V, 5), vocab_size=V)
    t = registry.build("t5", {"seq_length": 512}, vocab_size=V)   # without special tokens: the declared ones
    assert t.sentinel_ids.tolist() == list(range(V, V + 23))


def test_declaration():
    task = registry.task("t5")
    c = T5Config(seq_length=128)
    assert task.model == "decoder" and task.sampler == "packed" and task.input_length(c) == input_length(c)
    assert task.sentinels_for(c) == sentinels_needed(c) == int(noise_counts(input_length(c), c)[1])


def test_padding_is_never_noise_and_a_one_token_row_passes_through():
    """A right-padded batch equals its rows alone (padding columns once counted as noise and wrote
    padding over the last span of the target); a row of one token has no noise."""
    from ptobj.objectives import RowStreams, build
    from ptobj.objectives.sample import SpecialTokens

    t = build("t5", {"seq_length": 32}, special=SpecialTokens().with_sentinels(30000, 1), vocab_size=30001)
    a, b = {"tokens": np.arange(100, 120, dtype=np.int32)}, {"tokens": np.arange(200, 225, dtype=np.int32)}
    out = t.batch([a, b], RowStreams.for_rows(1, 0, [0, 1]))
    for i, s in enumerate((a, b)):
        alone = t(s, 1, index=i)
        assert all(np.array_equal(out[k][i], alone[k]) for k in alone)
    target = alone["tokens"][alone["tokens"].tolist().index(4) + 1:]          # after [SEP]
    assert 0 not in target[: int(alone["loss_mask"].sum())]                   # no padding inside the target
    one = t({"tokens": np.array([150], np.int32)}, 3)
    assert one["tokens"][:3].tolist() == [150, 4, 1]                          # source [SEP] [EOT]: no span
