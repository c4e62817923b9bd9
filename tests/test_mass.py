"""MASS in one decoder stack: literal layout, fragment length and place, 80/10/10, mask, rows."""

from __future__ import annotations

import numpy as np
import pytest

from ptobj.objectives import registry
from ptobj.objectives.mass import MASS, MASSConfig, fragment_length, input_length
from ptobj.objectives.sample import SpecialTokens, stack
from ptobj.objectives.streams import RowStreams

V = 4000
SP = SpecialTokens()
M, SEP, EOT, PAD = SP.mask, SP.sep, SP.eot, SP.pad


def build(S: int, **kw) -> MASS:
    return MASS(MASSConfig(seq_length=S, **kw), special=SP, vocab_size=V)


def split_row(out: dict) -> tuple[list[int], list[int]]:
    """(source, target) of one output row: the source up to [SEP], the target after it up to EOT."""
    seq = out["tokens"].tolist() + [int(out["labels"][-1])]
    sep = seq.index(SEP)
    end = sep + 1 + seq[sep + 1:].index(EOT)
    return seq[:sep], seq[sep + 1:end]


def fragment_start(text: list[int], target: list[int]) -> int:
    """Where the target stands in the text (the texts here have distinct tokens)."""
    return text.index(target[0])


def test_literal_rows():
    t = build(12, replace_probs=(1.0, 0.0, 0.0))
    assert t.width == 7 and int(fragment_length(6, t.config)) == 3
    text = [100, 101, 102, 103, 104, 105]
    seen = {}
    for i in range(200):
        out = t({"tokens": np.array(text, np.int32)}, 3, index=i)
        seen.setdefault(fragment_start(text, split_row(out)[1]), out)
    assert sorted(seen) == [0, 1, 2, 3]               # every place of a 3-token fragment in 6 tokens
    out = seen[1]
    x = [100, M, M, M, 104, 105, SEP, 101, 102, 103, EOT, PAD, PAD]
    assert out["tokens"].tolist() == x[:12]
    assert out["labels"].tolist() == x[1:]
    assert out["loss_mask"].tolist() == [0] * 6 + [1] * 4 + [0] * 2     # [SEP] -> 101 ... 103 -> EOT
    assert out["kv_start"].tolist() == [0] * 12
    assert out["kv_end"].tolist() == [7] * 7 + [8, 9, 10] + [0, 0]      # source bidirectional, target causal
    assert out["segment_ids"].tolist() == [0] * 7 + [1] * 3 + [0, 0]
    assert out["position_ids"].tolist() == list(range(12))
    assert seen[3]["tokens"].tolist()[:6] == [100, 101, 102, M, M, M]    # a fragment at the end


def test_input_length_is_the_longest_that_fits():
    for S in (3, 12, 40, 512, 2048):
        c = MASSConfig(seq_length=S)
        n = input_length(c)
        fits = lambda m: m + int(fragment_length(m, c)) + 2 <= S + 1   # noqa: E731
        assert fits(n) and not any(fits(m) for m in range(n + 1, S + 2))
    assert input_length(MASSConfig(seq_length=512)) == 340


def test_fragment_is_about_half_and_its_start_is_uniform():
    t = build(256)
    rng = np.random.default_rng(0)
    B = 4000
    m = rng.integers(1, t.width + 1, B)
    text = np.zeros((B, t.width), np.int32)
    for b in range(B):                                   # distinct tokens per row, to find the fragment
        text[b, :m[b]] = rng.permutation(np.arange(SP.first_regular, V))[:m[b]]
    out = t.batch({"tokens": text, "length": m}, RowStreams.for_rows(5, 0, np.arange(B)))
    share, place, masked = [], [], 0
    for b in range(B):
        source, target = split_row({k: v[b] for k, v in out.items()})
        assert len(source) == m[b]
        u, k = fragment_start(text[b].tolist(), target), len(target)
        assert target == text[b, u:u + k].tolist()                        # the fragment, in order
        assert source[:u] + source[u + k:] == text[b, :u].tolist() + text[b, u + k:m[b]].tolist()
        share.append(k / m[b])
        masked += k
        if m[b] > k:
            place.append(u / (m[b] - k))                                  # 0 = first place, 1 = last
    assert masked / m.sum() == pytest.approx(0.5, abs=0.01)                # half of the tokens
    assert all(abs(s - 0.5) <= 0.5 / mm + 1e-9 for s, mm in zip(share, m))   # within rounding of half
    place = np.array(place)
    assert place.mean() == pytest.approx(0.5, abs=0.02)
    counts = np.histogram(place, bins=4, range=(0, 1 + 1e-9))[0]
    assert counts.min() > 0.8 * len(place) / 4                            # no part of the segment avoided


def test_fragment_corruption_is_80_10_10_per_token():
    t = build(512)
    B = 64
    rng = np.random.default_rng(1)
    text = np.stack([rng.permutation(np.arange(SP.first_regular, V))[:t.width] for _ in range(B)]).astype(np.int32)
    out = t.batch({"tokens": text}, RowStreams.for_rows(7, 0, np.arange(B)))
    actions = []
    for b in range(B):
        source, target = split_row({k: v[b] for k, v in out.items()})
        u = fragment_start(text[b].tolist(), target)
        got = np.array(source[u:u + len(target)])
        orig = np.array(target)
        actions += np.where(got == M, 0, np.where(got == orig, 2, 1)).tolist()
        random = got[(got != M) & (got != orig)]
        assert ((random >= SP.first_regular) & (random < V)).all()         # random ids are regular
    rates = np.bincount(actions, minlength=3) / len(actions)             # 64 * 170 fragment tokens
    np.testing.assert_allclose(rates, [0.8, 0.1, 0.1], atol=0.015)


def test_row_does_not_depend_on_its_batch():
    t = build(40)
    rng = np.random.default_rng(4)
    rows = [rng.integers(SP.first_regular, V, n).astype(np.int32) for n in (25, 9, 17, 1, 25)]
    batch = t.batch(stack([{"tokens": r} for r in rows]), RowStreams.for_rows(9, 2, [10, 11, 12, 13, 14]))
    for b, r in enumerate(rows):
        alone = t({"tokens": r}, 9, epoch=2, index=10 + b)
        for k in alone:
            np.testing.assert_array_equal(batch[k][b], alone[k], err_msg=f"row {b}, field {k}")
    other = t({"tokens": rows[0]}, 9, epoch=2, index=99)
    assert not np.array_equal(other["tokens"], batch["tokens"][0])       # the key decides, not the text


def test_longer_input_is_cut_to_the_declared_length():
    t = build(40)
    text = np.arange(100, 100 + t.width + 5, dtype=np.int32)
    source, target = split_row(t({"tokens": text}, 1))
    assert len(source) == t.width and len(target) == int(fragment_length(t.width, t.config))


@pytest.mark.parametrize("field,value", [("seq_length", 2), ("fragment_share", 0.0), ("fragment_share", 1.5),
                                         ("replace_probs", (0.8, 0.1, 0.2))])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        MASSConfig(**{field: value})


def test_declaration():
    task = registry.task("mass")
    c = MASSConfig(seq_length=128)
    assert task.model == "decoder" and task.sampler_for(c) == "segment" and task.input_length(c) == input_length(c)
    assert task.losses_for(c) == {"lm": "token"} and task.sentinels_for(c) == 0
    plan = registry.plan(registry.parse({"name": "mass"}, defaults={"seq_length": 128}))
    assert (plan.model, plan.sampler, plan.input_length) == ("decoder", "segment", 84)
