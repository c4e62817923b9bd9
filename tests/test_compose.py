"""Compose, MixByWeight and the registry."""

import dataclasses
import subprocess
import sys

import numpy as np
import pytest

from ptobj.objectives import registry
from ptobj.objectives.compose import Compose, MixByWeight
from ptobj.objectives.macbert import MacBERT, MacBERTConfig
from ptobj.objectives.sample import SpecialTokens, Transform
from ptobj.objectives.sentence_pairs import SOP, SOPConfig
from ptobj.objectives.streams import RowStreams, site
from ptobj.objectives.task import Task

SP = SpecialTokens()
V = 500
# the neutral sop_label a mix writes for members without it, as the SOP declaration gives it
SOP_FILL = {f.name: ("per_token" if f.per_token else "scalar", f.neutral)
            for f in registry.task("sop").fields_for(SOPConfig())}


class AddDraw(Transform):
    """Toy transform: adds field ``name``, one uniform draw per row."""

    reads = ("tokens",)

    def __init__(self, name):
        self.name = name
        self.writes = (name,)

    def apply(self, batch, streams):
        out = dict(batch)
        out[self.name] = streams.uniform(site("test.add_draw"), 1)[:, 0]
        return out


def segment(rng, n=40):
    ss = rng.random(n) < 0.1
    ss[0] = True
    return {"tokens": rng.integers(16, V, n).astype(np.int32), "word_start": rng.random(n) < 0.7,
            "sentence_start": ss}


def test_compose_runs_in_order_each_member_on_its_own_stream():
    c = Compose([AddDraw("a"), AddDraw("b")])
    out = c({"tokens": np.zeros(1)}, 5)
    key = RowStreams.of(5)
    assert out["a"] == AddDraw("a").batch({"tokens": np.zeros((1, 1))}, key.child(0))["a"][0]
    assert out["b"] == AddDraw("b").batch({"tokens": np.zeros((1, 1))}, key.child(1))["b"][0]
    assert out["a"] != out["b"]
    assert c.writes == ("a", "b") and c.reads == ("tokens",)
    with pytest.raises(ValueError, match="empty"):
        Compose([])


def test_mix_choice_shares_and_determinism():
    m = MixByWeight([(3, AddDraw("x")), (1, AddDraw("y"))], fill={"x": ("scalar", -1), "y": ("scalar", -1)},
                    tag_field="objective_id")
    picks = m.batch({"tokens": np.zeros((4000, 1))}, RowStreams.for_rows(0, 0, np.arange(4000)))["objective_id"]
    assert abs((picks == 0).mean() - 0.75) < 5 * np.sqrt(0.75 * 0.25 / 4000)
    a = m({"tokens": np.zeros(1)}, 9)
    b = m({"tokens": np.zeros(1)}, 9)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert set(a) == {"tokens", "x", "y", "objective_id"}


def test_mix_of_macbert_and_sop_has_one_field_set():
    mac = MacBERT(MacBERTConfig(seq_length=32), special=SP, vocab_size=V)
    sop = SOP(SOPConfig(seq_length=32), special=SP, vocab_size=V)
    assert SOP_FILL == {"sop_label": ("scalar", -1)}
    m = MixByWeight([(0.5, mac), (0.5, sop)], fill=SOP_FILL)
    rng = np.random.default_rng(0)
    outs = [m(segment(rng), i) for i in range(40)]
    keys = {frozenset(o) for o in outs}
    assert len(keys) == 1 and "sop_label" in next(iter(keys))
    labels = [int(o["sop_label"]) for o in outs]
    assert -1 in labels and (0 in labels or 1 in labels)       # MacBERT samples carry the neutral -1
    for o in outs:
        assert o["sop_label"].shape == () and o["sop_label"].dtype == np.int32


def test_mix_rejects_bad_weights_and_unfillable_fields():
    with pytest.raises(ValueError, match="weights"):
        MixByWeight([(0, AddDraw("a")), (0, AddDraw("a"))])
    with pytest.raises(ValueError, match="weights"):
        MixByWeight([(-1, AddDraw("a")), (2, AddDraw("a"))])
    with pytest.raises(ValueError, match="'zz'"):
        MixByWeight([(1, AddDraw("a")), (1, AddDraw("zz"))], fill={"a": ("scalar", 0)})
    with pytest.raises(ValueError, match="'sop_label'"):   # no declaration-given fill: refused, named
        MixByWeight([(0.5, MacBERT(MacBERTConfig(seq_length=32), special=SP, vocab_size=V)),
                     (0.5, SOP(SOPConfig(seq_length=32), special=SP, vocab_size=V))])


# ------------------------------------------------------------------ registry
ALL = {"causal_lm", "fim", "mlm", "spanbert", "unilm", "macbert", "sop", "nsp"}


def test_registry_names_and_build():
    assert ALL <= set(registry.names())
    t = registry.build("macbert", {"seq_length": 16, "ngram_probs": [0.5, 0.5]}, special=SP, vocab_size=V)
    assert isinstance(t, MacBERT) and t.config.ngram_probs == (0.5, 0.5)
    out = t({"tokens": np.arange(20, 30, dtype=np.int32), "word_start": np.ones(10, bool)}, 0)
    assert out["tokens"].shape == (16,)
    s = registry.build("sop", {"seq_length": 16}, vocab_size=V)
    assert isinstance(s, SOP)


def test_registry_rejects_unknown_key_and_name():
    with pytest.raises(ValueError, match="mask_ratee"):
        registry.build("macbert", {"mask_ratee": 0.2}, vocab_size=V)
    with pytest.raises(ValueError, match="mask_rate"):
        registry.build("sop", {"mask_rate": 7}, vocab_size=V)
    with pytest.raises(KeyError, match="no_such_objective"):
        registry.build("no_such_objective", {}, vocab_size=V)
    with pytest.raises(TypeError, match="Task"):
        registry.register("mine")


@pytest.mark.parametrize("name", registry.names())  # discovered: a new objective is checked too
def test_every_registered_objective_declares_a_task(name):
    t = registry.task(name)
    fields = {f.name for f in dataclasses.fields(t.config)}
    base = {"seq_length": 32} if "seq_length" in fields else {}
    cfg = registry.make_config(name, base)
    assert isinstance(cfg, t.config)
    assert t.transform.__module__ == t.config.__module__      # declared beside its transform
    with pytest.raises(ValueError, match="surely_not_a_key"):
        registry.make_config(name, {**base, "surely_not_a_key": 1})


def test_registering_an_objective_of_ones_own():
    class Echo:
        writes = ("tokens",)

        def __init__(self, config, *, special, vocab_size, tokenizer=None):
            self.config = config

        def __call__(self, sample, rng):
            return dict(sample)

    @dataclasses.dataclass(frozen=True)
    class EchoConfig:
        seq_length: int = 8

    registry.register(Task("echo_for_test", Echo, EchoConfig, model="decoder", sampler="packed",
                           input_length=lambda c: c.seq_length + 1))
    try:
        spec = registry.parse({"name": "echo_for_test"}, defaults={"seq_length": 12})
        assert spec.config == EchoConfig(12) and registry.plan(spec).input_length == 13
        assert isinstance(registry.build_spec(spec, vocab_size=V), Echo)
    finally:
        registry._TASKS.pop("echo_for_test")


def test_build_spec_compose_and_mix():
    spec = {"mix": [{"weight": 2, "name": "macbert", "config": {"seq_length": 24}},
                    {"weight": 1, "name": "sop", "config": {"seq_length": 24}}], "tag_field": "objective_id"}
    m = registry.build_spec(spec, vocab_size=V)
    assert isinstance(m, MixByWeight) and np.allclose(m.weights, [2 / 3, 1 / 3])
    out = m(segment(np.random.default_rng(1)), 2)
    assert {"sop_label", "objective_id", "tokens"} <= set(out)
    c = registry.build_spec({"compose": [{"name": "sop", "config": {"seq_length": 24}}]}, vocab_size=V)
    assert isinstance(c, Compose)
    with pytest.raises(ValueError, match="weight"):
        registry.build_spec({"mix": [{"name": "sop"}]}, vocab_size=V)
    with pytest.raises(ValueError, match="nme"):
        registry.build_spec({"nme": "sop"}, vocab_size=V)


def test_parse_names_the_bad_path_and_plan_refuses_disagreeing_parts():
    with pytest.raises(ValueError, match=r"objective\.mix\.1\.config: mask_rate"):
        registry.parse({"mix": [{"weight": 1, "name": "mlm"}, {"weight": 1, "name": "spanbert",
                                                               "config": {"mask_rate": 2.0}}]})
    with pytest.raises(ValueError, match=r"objective\.config\.seq_length=64 differs"):
        registry.parse({"name": "mlm", "config": {"seq_length": 64}}, defaults={"seq_length": 32})
    mixed = registry.parse({"mix": [{"weight": 1, "name": "mlm"}, {"weight": 1, "name": "fim"}]},
                           defaults={"seq_length": 32})
    with pytest.raises(ValueError, match="model kind: mlm -> 'encoder', fim -> 'decoder'"):
        registry.plan(mixed)


def test_plan_of_a_mix_unites_losses_fields_and_suites():
    spec = registry.parse({"mix": [{"weight": 1, "name": "spanbert"}, {"weight": 1, "name": "sop"}]},
                          defaults={"seq_length": 32})
    p = registry.plan(spec)
    assert p.model == "encoder" and p.losses == {"lm": "token", "sbo": "span_boundary", "sop": "sequence"}
    assert {f.name: f.neutral for f in p.fields} == {"sbo_left": -1, "sbo_right": -1, "sbo_offset": 0,
                                                     "sop_label": -1}
    assert p.evals == {"heldout": spec}
    # the least body any member holds: SOP's [CLS] a [SEP] b [SEP]
    assert p.input_length == 32 - 3
    assert registry.parse(registry.to_dict(spec)) == spec


def test_registry_imports_lazily():
    code = ("import sys, ptobj.objectives.registry as r; "
            "assert 'ptobj.objectives.macbert' not in sys.modules and 'ptobj.objectives.sentence_pairs' not in sys.modules; "
            "r.config_class('sop'); assert 'ptobj.objectives.sentence_pairs' in sys.modules; "
            "assert 'torch' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_package_exports_lazily():
    from ptobj import objectives

    assert objectives.MacBERT is MacBERT and objectives.SOP is SOP and objectives.MixByWeight is MixByWeight
    assert objectives.build is registry.build
    with pytest.raises(AttributeError, match="nothing_here"):
        objectives.nothing_here


def test_mix_batch_form_keeps_rows_in_order_and_fills_neutral_values():
    mac = MacBERT(MacBERTConfig(seq_length=32), special=SP, vocab_size=V)
    sop = SOP(SOPConfig(seq_length=32, masking="none", swap_rate=0.0), special=SP, vocab_size=V)
    m = MixByWeight([(0.5, mac), (0.5, sop)], fill=SOP_FILL, tag_field="objective_id")
    rng = np.random.default_rng(3)
    samples = [segment(rng, 20) for _ in range(40)]
    out = m.batch(samples, RowStreams.for_rows(4, 0, np.arange(40)))
    assert out["tokens"].shape == (40, 32) and out["sop_label"].shape == (40,)
    chose_sop = out["objective_id"] == 1
    assert 5 < chose_sop.sum() < 35
    assert (out["sop_label"][~chose_sop] == -1).all() and (out["sop_label"][chose_sop] == 0).all()
    for i, s in enumerate(samples):   # row i is built from sample i
        body = out["tokens"][i][out["tokens"][i] >= SP.first_regular]
        if chose_sop[i]:
            assert body.tolist() == s["tokens"].tolist()          # in-order pair, no masking
        else:
            assert out["kv_end"][i][0] == len(s["tokens"]) + 2
        alone = m(s, 4, index=i)                                      # a row is its sample alone
        assert all(np.array_equal(out[k][i], alone[k]) for k in alone)
