"""models: config validation, forward/backward of every head, learning on a fixed
batch, and that the attention really follows the batch's row intervals."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ptobj.models.config import ModelConfig, preset
from ptobj.objectives import intervals


@pytest.fixture(scope="module")
def pg():
    from ptobj.models.parallel import destroy_parallel, init_parallel

    collection = init_parallel(tp=1, pp=1, backend="gloo", seed=0)
    yield collection
    destroy_parallel()


ENCODER_HEADS = {"lm": "token", "sbo": "span_boundary", "sop": "sequence", "nsp": "sequence"}


def tiny(kind: str, **overrides) -> ModelConfig:
    heads = ENCODER_HEADS if kind == "encoder" else {"lm": "token"}
    return preset("tiny", kind=kind, **{"heads": heads, **overrides})


def batch_for(kind: str, seed: int = 0, b: int = 2, s: int = 32):
    from synthetic_batches import synthetic_batch

    heads = ENCODER_HEADS if kind == "encoder" else {"lm": "token"}
    mask = "bidirectional" if kind == "encoder" else "fim_docs"
    return synthetic_batch(b, s, 256, kind=kind, mask=mask, mean_doc=12, heads=heads, seed=seed)


# --------------------------------------------------------------------------- config
@pytest.mark.parametrize("field, value", [
    ("kind", "seq2seq"), ("hidden_size", 66), ("num_query_groups", 3), ("num_layers", 0),
    ("params_dtype", "int8"), ("seq_length", 100000), ("heads", {"sbo": "span_boundary"}),
    ("heads", {"x": "regression"}), ("heads", {}), ("init_method_std", 0.0),
    ("recompute_granularity", "some"),
])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=rf"ModelConfig\.{field}\b"):
        dataclasses.replace(preset("tiny"), **{field: value})


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match="hidden_sise"):
        ModelConfig.from_dict({"hidden_sise": 64})
    assert ModelConfig.from_dict(preset("tiny").to_dict()) == preset("tiny")


def test_presets_have_the_advertised_sizes():
    from ptobj.models.config import PRESETS

    def params(c: ModelConfig) -> float:  # decoder: attention + SwiGLU MLP + tied embedding
        kv = c.query_groups * c.head_dim
        per_layer = c.hidden_size * (c.hidden_size + 2 * kv) + c.hidden_size ** 2 + 3 * c.hidden_size * c.ffn_size
        return (c.num_layers * per_layer + c.vocab_size * c.hidden_size) / 1e6

    assert 110 < params(PRESETS["125M"]) < 140
    assert 330 < params(PRESETS["350M"]) < 400
    assert 1200 < params(PRESETS["1.3B"]) < 1450


# --------------------------------------------------------------------------- heads
@pytest.mark.parametrize("kind", ["decoder", "encoder"])
def test_forward_backward_every_head(pg, kind):
    from ptobj.models.model import build_model

    torch.manual_seed(0)
    model = build_model(tiny(kind), pg)
    batch = batch_for(kind)
    out = model(batch)
    expected = {"lm", "sbo", "sop", "nsp"} if kind == "encoder" else {"lm"}
    assert set(out) == expected
    for name, sums in out.items():
        assert set(sums) == {"loss_sum", "count", "correct"}
        assert torch.isfinite(sums["loss_sum"]) and sums["count"] > 0
        assert 0 <= sums["correct"] <= sums["count"]
    # an untrained model's mean token loss is near log(V)
    assert abs(float(out["lm"]["loss_sum"] / out["lm"]["count"]) - np.log(256)) < 1.0
    assert float(out["lm"]["count"]) == float(batch["loss_mask"].sum())
    sum(v["loss_sum"] / v["count"] for v in out.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []
    assert model.lm.output_layer.weight is None  # LM head tied to the input embedding


def test_objective_fields_need_their_head(pg):
    from ptobj.models.model import build_model

    heads = {k: v for k, v in ENCODER_HEADS.items() if k != "sop"}
    model = build_model(tiny("encoder", heads=heads), pg)
    with pytest.raises(ValueError, match="sop_label"):
        model(batch_for("encoder"))
    batch = {k: v for k, v in batch_for("encoder").items() if k not in ("sop_label", "nsp_label")}
    # a configured head may sit out a batch without its targets (nsp here)
    assert set(model(batch)) == {"lm", "sbo"}


def test_kind_must_be_chosen_before_building(pg):
    from ptobj.models.model import build_model

    with pytest.raises(ValueError, match="ModelConfig.kind"):
        build_model(dataclasses.replace(tiny("decoder"), kind=None), pg)


@pytest.mark.parametrize("kind", ["decoder", "encoder"])
def test_loss_falls_on_a_fixed_batch(pg, kind):
    from ptobj.models.model import build_model

    torch.manual_seed(1)
    model = build_model(tiny(kind), pg)
    batch = batch_for(kind, seed=3)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    history = []
    for _ in range(20):
        out = model(batch)
        means = {k: v["loss_sum"] / v["count"] for k, v in out.items()}
        history.append({k: float(v) for k, v in means.items()})
        opt.zero_grad()
        sum(means.values()).backward()
        opt.step()
    for name in history[0]:
        assert np.isfinite(history[-1][name])
        assert history[-1][name] < 0.8 * history[0][name], (name, history[0][name], history[-1][name])


# --------------------------------------------------------------------------- intervals
def _single_row(tokens, segment_ids, kind):
    s = len(tokens)
    ks, ke = intervals.causal(segment_ids) if kind == "decoder" else intervals.bidirectional(segment_ids)
    starts = np.flatnonzero(np.concatenate(([True], segment_ids[1:] != segment_ids[:-1])))
    pos = np.arange(s) - np.repeat(starts, np.diff(np.concatenate((starts, [s]))))
    as_t = lambda a, dt=torch.long: torch.as_tensor(np.asarray(a)[None], dtype=dt)  # noqa: E731
    return {"tokens": as_t(tokens), "position_ids": as_t(pos), "segment_ids": as_t(np.zeros(s)),
            "kv_start": as_t(ks, torch.int32), "kv_end": as_t(ke, torch.int32)}


@pytest.mark.parametrize("kind", ["decoder", "encoder"])
def test_packed_documents_match_documents_alone(pg, kind):
    """With document intervals, each packed document's logits equal running it alone;
    with one interval over the whole row they do not (the mask is really used)."""
    from ptobj.models.model import build_model

    torch.manual_seed(2)
    model = build_model(tiny(kind), pg).eval()
    rng = np.random.default_rng(5)
    lengths = [7, 12, 5]
    tokens = rng.integers(16, 256, size=sum(lengths))
    seg = np.repeat(np.arange(len(lengths)), lengths)
    with torch.no_grad():
        packed = model.logits(_single_row(tokens, seg, kind))[0]
        unmasked = model.logits(_single_row(tokens, np.zeros_like(seg), kind))[0]
        start = 0
        for n in lengths:
            alone = model.logits(_single_row(tokens[start:start + n], np.zeros(n, int), kind))[0]
            torch.testing.assert_close(packed[start:start + n], alone, atol=1e-4, rtol=1e-4)
            start += n
    later = slice(lengths[0], None)  # documents after the first see other documents without the mask
    assert (packed[later] - unmasked[later]).abs().max() > 1e-2


def test_pair_head_ignores_rows_without_a_target():
    from ptobj.models.heads import classification_sums
    logits = torch.tensor([[2.0, 0.0], [0.0, 3.0], [5.0, -5.0]])
    out = classification_sums(logits, torch.tensor([0, -1, 1]))
    assert out["count"].item() == 2
    assert out["correct"].item() == 1
    expected = torch.nn.functional.cross_entropy(logits[[0, 2]], torch.tensor([0, 1]), reduction="sum")
    torch.testing.assert_close(out["loss_sum"], expected)
