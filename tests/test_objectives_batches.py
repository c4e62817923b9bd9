"""Every registered objective, on right-padded batches: ``t.batch`` equals the per-sample calls
row by row, whatever the other rows are (hypothesis).

Rows come in every length that matters: empty, one token, short, exactly the objective's input
length, one more, and far longer. A packed-context objective refuses a row that is not a whole
context; then the batch holding it is refused too (the property: a batch is refused exactly when
one of its samples is, and otherwise is its samples, row by row, in any order).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ptobj.objectives import registry
from ptobj.objectives.sample import SpecialTokens, row
from ptobj.objectives.streams import RowStreams

S = 24
SPECIAL = SpecialTokens()


class ByteTokenizer:
    """Lossless bytes: byte b is id first_regular + b (what FIM needs: encode, decode)."""

    def __init__(self, first_regular: int):
        self.off, self.vocab_size = first_regular, first_regular + 256

    def encode(self, text):
        return [b + self.off for b in text.encode("utf-8")]

    def decode(self, ids):
        return bytes(i - self.off for i in ids if self.off <= i < self.vocab_size).decode("utf-8", "replace")


TOK = ByteTokenizer(SPECIAL.first_regular)


def build(name: str):
    fields = {f.name for f in dataclasses.fields(registry.config_class(name))}
    cfg = registry.make_config(name, {"seq_length": S} if "seq_length" in fields else {})
    task = registry.task(name)
    special = SPECIAL.with_sentinels(TOK.vocab_size, task.sentinels_for(cfg))
    t = registry.build(name, cfg, special=special, vocab_size=TOK.vocab_size, tokenizer=TOK)
    return t, task.input_length(cfg)


BUILT = {name: build(name) for name in registry.names()}


def sample_of(g: np.random.Generator, reads, n: int, n_random: int) -> dict:
    """A raw sample with the fields ``reads``: ``n`` tokens (the "random_" group ``n_random``)."""
    text = g.integers(SPECIAL.first_regular, TOK.vocab_size, n).astype(np.int32)
    if n:
        text[g.random(n) < 0.08] = SPECIAL.eot                      # document ends in packed contexts
    out = {}
    for f in reads:
        m = n_random if f.startswith("random_") else n
        if f == "tokens":
            out[f] = text
        elif f == "random_tokens":
            out[f] = g.integers(SPECIAL.first_regular, TOK.vocab_size, m).astype(np.int32)
        elif f.endswith("start"):
            out[f] = g.random(m) < 0.6
        elif f == "response":
            out[f] = (g.random(m) < 0.5).astype(np.int32)
        elif f == "rank":
            out[f] = np.where(g.random(m) < 0.1, g.integers(0, 3, m), -1).astype(np.int32)
        else:
            raise AssertionError(f"no generator for field {f!r}: add one")
    return out


def outcome(fn):
    try:
        return fn()
    except ValueError as exc:
        return exc


@pytest.mark.parametrize("name", sorted(BUILT))
@settings(max_examples=25, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_padded_batch_is_its_samples_row_by_row(name, data):
    t, width = BUILT[name]
    seed = data.draw(st.integers(0, 2**63 - 1), label="seed")
    epoch = data.draw(st.integers(0, 3), label="epoch")
    B = data.draw(st.integers(1, 5), label="rows")
    whole = data.draw(st.booleans(), label="whole contexts")     # every row exactly the input length
    lengths = st.sampled_from([0, 1, 2, width // 2, width - 1, width, width + 1, 3 * width])
    ns = [width if whole else data.draw(lengths, label="length") for _ in range(B)]
    g = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="content"))
    samples = [sample_of(g, t.reads, n, int(g.integers(0, 2 * width))) for n in ns]
    index = data.draw(st.lists(st.integers(0, 2**40), min_size=B, max_size=B, unique=True), label="index")
    alone = [outcome(lambda s=s, i=i: t(s, seed, epoch=epoch, index=i)) for s, i in zip(samples, index)]
    streams = RowStreams.for_rows(seed, epoch, np.array(index, np.int64))
    together = outcome(lambda: t.batch(samples, streams))
    refused = [b for b, a in enumerate(alone) if isinstance(a, ValueError)]
    if refused:
        assert isinstance(together, ValueError), f"{name}: rows {refused} are refused alone, the batch is not"
        return
    assert not isinstance(together, ValueError), f"{name}: every row is accepted alone, the batch refused: {together}"
    for b, a in enumerate(alone):
        got = row(together, b)
        assert got.keys() == a.keys(), (name, b)
        for k in a:
            assert np.array_equal(got[k], a[k]), f"{name}: row {b} (length {ns[b]}), field {k!r} differs from the sample alone"
    order = np.random.default_rng(seed % 2**32).permutation(B)
    shuffled = t.batch([samples[i] for i in order], streams.take(order))
    for k in together:
        assert np.array_equal(shuffled[k], np.asarray(together[k])[order]), f"{name}: field {k!r} depends on row order"


def test_every_objective_accepts_its_whole_input():
    """The property above is not vacuous: each objective's own input length is accepted."""
    g = np.random.default_rng(0)
    for name, (t, width) in BUILT.items():
        out = t(sample_of(g, t.reads, width, width), 5, index=3)
        assert out["tokens"].shape == (S,), name
