"""Task declarations: what each objective declares is what its transform does."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ptobj.objectives import registry
from ptobj.objectives.sample import SpecialTokens

SP = SpecialTokens()
V = 5000
S = 40
SEGMENT_TASKS = [n for n in registry.names()
                 if registry.task(n).sampler_for(registry.make_config(n, {}, defaults={"seq_length": S})).startswith("segment")]


def _segment(n: int, rng) -> dict:
    """Distinct regular ids (so every token can be traced), word starts, >= 2 sentences."""
    ss = np.zeros(n, bool)
    ss[0] = True
    ss[rng.choice(np.arange(1, n), size=min(3, n - 1), replace=False)] = True
    return {"tokens": rng.permutation(np.arange(SP.first_regular, V))[:n].astype(np.int32),
            "word_start": (rng.random(n) < 0.7) | ss, "sentence_start": ss,
            "random_tokens": np.zeros(0, np.int32), "random_word_start": np.zeros(0, bool)}


def _lost(sample: dict, out: dict) -> int:
    """How many of the sample's (distinct) tokens the output holds neither as a token nor as a
    target's label. Missing ones are counted rather than the multisets compared: an objective may
    leave corrupted tokens in its input beside their targets (MASS's source keeps its fragment)."""
    held = set(out["tokens"].tolist()) | set(out["labels"][out["loss_mask"] > 0].tolist())
    return len(set(sample["tokens"].tolist()) - held)


def _config(name: str):
    return registry.make_config(name, {}, defaults={"seq_length": S})


@pytest.mark.parametrize("name", SEGMENT_TASKS)
def test_declared_input_length_is_held_whole_and_is_tight(name):
    """A segment of the declared length loses no token, in every layout the objective draws;
    one token more is cut somewhere (the declaration does not understate what fits)."""
    task = registry.task(name)
    cfg = _config(name)
    width = task.input_length(cfg)
    t = registry.build(name, cfg, special=SP, vocab_size=V)
    rng = np.random.default_rng(0)
    for i in range(60):
        sample = _segment(width, rng)
        out = t(sample, i)
        assert out["tokens"].shape == (S,)
        assert _lost(sample, out) == 0, (name, i)
    lost = 0
    for i in range(60):
        sample = _segment(width + 1, rng)
        lost += _lost(sample, t(sample, i)) > 0
    assert lost > 0, f"{name}: {width + 1} tokens always fit, so the declared {width} understates"


def test_unilm_body_follows_its_modes():
    task = registry.task("unilm")
    only_single = registry.make_config("unilm", {"mode_probs": [0, 0.5, 0.5, 0]}, defaults={"seq_length": S})
    assert task.input_length(only_single) == S - 2
    assert task.input_length(_config("unilm")) == S - 3


def test_packed_objectives_read_at_most_a_context_of_seq_length_plus_one():
    for name in registry.names():
        task = registry.task(name)
        if task.sampler_for(_config(name)).startswith("packed"):
            assert task.input_length(_config(name)) <= S + 1, name
    for name in ("causal_lm", "fim"):      # next-token fields over the whole context
        assert registry.task(name).input_length(_config(name)) == S + 1


@pytest.mark.parametrize("name", registry.names())
def test_declared_losses_are_the_fields_the_transform_writes(name):
    """Every declared loss's target fields are written; no undeclared target field is."""
    task = registry.task(name)
    cfg = _config(name)
    if "split_level" in {f.name for f in dataclasses.fields(cfg)}:
        cfg = dataclasses.replace(cfg, split_level="token")   # no tokenizer here
    t = registry.build(name, cfg, vocab_size=V)     # default special ids + the sentinels it declares
    rng = np.random.default_rng(1)
    sampler = task.sampler_for(cfg)
    if sampler.startswith("records"):   # a record as the transform encodes it, padded to a row
        encode = lambda text: [SP.first_regular + ord(c) for c in text]
        record = {"conversation": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
                  "ranked": ([{"role": "user", "content": "hi"}], ["yo", "no"])}[t.record_kind]
        enc = t.encode_record(record, encode)
        fill = getattr(t, "record_fill", {})
        n = task.input_length(cfg)
        sample = {f: np.pad(v, (0, n - len(v)), constant_values=SP.pad if f == "tokens" else fill.get(f, 0))
                  for f, v in enc.items()}
    else:
        sample = ({"tokens": rng.integers(SP.first_regular, V, task.input_length(cfg)).astype(np.int32)}
                  if sampler.startswith("packed") else _segment(task.input_length(cfg), rng))
    out = t(sample, 2)
    declared = {f.name for f in task.fields_for(cfg)}
    extras = {k for k in out if k.endswith(("_label", "_offset", "_left", "_right", "_rank"))}
    assert extras == declared, name
    if "lm" in task.losses_for(cfg):
        assert {"labels", "loss_mask"} <= set(out)
    if task.model == "encoder":   # an encoder embeds segment_ids; a decoder does not read them
        assert 0 <= out["segment_ids"].min() and out["segment_ids"].max() < task.segment_types, name


def test_loss_list_follows_the_config():
    sop = registry.task("sop")
    assert sop.losses_for(registry.make_config("sop", {"masking": "none"})) == {"sop": "sequence"}
    assert sop.losses_for(registry.make_config("sop", {})) == {"lm": "token", "sop": "sequence"}
