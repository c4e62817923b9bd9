"""Instruction tuning as FLAN did it: templates rendered into SFT records, the keyed template draw,
mixture shares, held-out clusters, rank classification and exact match, the flan_tiny recipe."""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from ptobj.data_pipeline import instructions as I
from ptobj.data_pipeline import mixture as mix
from ptobj.data_pipeline.corpus import CorpusError
from ptobj.objectives import streams
from ptobj.objectives.sample import SpecialTokens
from ptobj.objectives.sft import SFT, SFTConfig

SP = SpecialTokens()
ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "ptobj" / "recipes" / "configs"
FLAN_TINY = ROOT / "ptobj" / "data_pipeline" / "records_data" / "flan_tiny"


def char_encode(text: str) -> list[int]:
    """A stand-in tokenizer: one regular id per character (printable ASCII maps one to one)."""
    return [SP.first_regular + ord(c) % 200 for c in text]


def char_decode(ids) -> str:
    return "".join(chr(int(i) - SP.first_regular) for i in ids if int(i) >= SP.first_regular)


SENTIMENT = {
    "dataset": "toy_sentiment", "cluster": "sentiment", "task": "classification",
    "fields": ["text", "label"], "answer": "label", "options": ["negative", "positive"],
    "templates": [
        {"user": "{text}\nGood or bad?", "assistant": "{answer}"},
        {"system": "Be brief.", "user": "Review: {text}\n{options}\nPick one.", "assistant": "It is {answer}."},
    ],
    "turned": [{"user": "Write a {answer} review.", "assistant": "{text}"}],
}


def toy(data=None, **changes) -> I.TemplateSet:
    return I.templates_from_dict({**(data or SENTIMENT), **changes}, "toy.yaml")


# ----------------------------------------------------------------------------- templates


def test_templates_fill_fields_append_options_and_turn_around():
    ts = toy()
    record = {"text": "Loved it.", "label": 1}
    forward, placed, turned = ts.templates
    assert [t.turned for t in ts.templates] == [False, False, True] and ts.forward == (forward, placed)
    assert I.render(ts, forward, record) == [
        {"role": "user", "content": "Loved it.\nGood or bad?\n\nOPTIONS:\n- negative\n- positive"},
        {"role": "assistant", "content": "positive"}]
    # {options} placed by the template: not appended again; the system turn comes first
    assert I.render(ts, placed, {"text": "Meh.", "label": "negative"}) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Review: Meh.\nOPTIONS:\n- negative\n- positive\nPick one."},
        {"role": "assistant", "content": "It is negative."}]
    # turned around: the answer is in the prompt, the text is the response, no options
    assert I.render(ts, turned, record) == [{"role": "user", "content": "Write a positive review."},
                                            {"role": "assistant", "content": "Loved it."}]
    # literal braces and a generation task's list of acceptable answers (the first is trained on)
    qa = toy({"dataset": "toy_qa", "cluster": "qa", "task": "generation", "fields": ["q", "answers"],
              "answer": "answers", "templates": [{"user": "{{quiz}} {q}", "assistant": "{answer}"}]})
    assert I.render(qa, qa.templates[0], {"q": "Capital of France?", "answers": ["Paris", "paris, france"]}) == [
        {"role": "user", "content": "{quiz} Capital of France?"}, {"role": "assistant", "content": "Paris"}]
    # the rendering is an SFT record: the loss mask covers the assistant's answer and its <|end|>
    ids, response = SFT(SFTConfig(64), special=SP, vocab_size=300).encode_record(
        I.render(ts, forward, record), char_encode).values()
    assert char_decode(ids[response.astype(bool)]) == "positive"
    assert ids[response.astype(bool)][-1] == SP.chat_end


def test_a_bad_template_names_the_file_the_template_and_the_field(tmp_path):
    bad = dict(SENTIMENT, templates=[SENTIMENT["templates"][0], {"user": "{txet}?", "assistant": "{answer}"}])
    with pytest.raises(I.TemplateError, match=r"toy\.yaml: templates\[1\]\.user: unknown field \{txet\}; the fields "
                                              r"are text, answer, options"):
        toy(bad)
    path = tmp_path / "mine.yaml"
    path.write_text("dataset: mine\ncluster: c\nfields: [a, label]\nanswer: label\noptions: [x, y]\n"
                    "templates:\n  - {user: '{a}', assistant: '{answer}'}\n"
                    "turned:\n  - {user: 'Say {answr}', assistant: '{a}'}\n")
    with pytest.raises(I.TemplateError, match=rf"{path}: turned\[0\]\.user: unknown field \{{answr\}}"):
        I.load_templates(str(path))
    with pytest.raises(I.TemplateError, match=r"templates\[0\]\.user: \{label\} is the answer column; write \{answer\}"):
        toy(templates=[{"user": "{text} {label}", "assistant": "{answer}"}])
    with pytest.raises(I.TemplateError, match=r"templates\[0\]\.assistant: a lone '\}'"):
        toy(templates=[{"user": "{text}", "assistant": "{answer}}"}])
    with pytest.raises(I.TemplateError, match=r"templates\[0\]\.assistant: a template of the task as it is answers with"):
        toy(templates=[{"user": "{text}", "assistant": "yes"}])
    with pytest.raises(I.TemplateError, match=r"toy\.yaml: unknown key 'tempaltes'"):
        toy(tempaltes=[])
    with pytest.raises(I.TemplateError, match=r"templates\[0\]: unknown key 'asistant'"):
        toy(templates=[{"user": "{text}", "asistant": "{answer}"}])
    # records that cannot fill the templates are named too
    ts = toy()
    with pytest.raises(I.TemplateError, match=r"record 4: no field 'text'"):
        I.render(ts, ts.templates[0], {"label": 0}, "record 4")
    with pytest.raises(I.TemplateError, match=r"record 4\.label: 2 is not an index into the 2 options"):
        I.render(ts, ts.templates[0], {"text": "a", "label": 2}, "record 4")
    with pytest.raises(I.TemplateError, match=r"record 4\.label: 'great' is not one of the options"):
        I.render(ts, ts.templates[0], {"text": "a", "label": "great"}, "record 4")
    with pytest.raises(I.TemplateError, match="no embedded templates 'nope'"):
        I.load_templates("embedded:nope")


def test_every_shipped_templates_file_loads():
    names = I.embedded_templates()
    assert {"nli_pairs", "review_sentiment", "arithmetic", "sst2", "anli_r1"} <= set(names)
    for name in names:
        ts = I.load_templates(f"embedded:{name}")
        assert ts.dataset == name and len(ts.forward) == 10 and 1 <= len(ts.turned) <= 3, name


def test_the_shipped_miniature_is_what_its_generator_writes():
    from flan_tiny_data import generate

    written = generate()
    assert sorted(written) == sorted(p.name for p in FLAN_TINY.glob("*.jsonl"))
    for name, text in written.items():
        assert (FLAN_TINY / name).read_text() == text, name


# ----------------------------------------------------------------------------- the template draw


def test_the_template_draw_is_keyed_by_seed_epoch_index_and_dataset():
    idx = np.arange(2000)
    a = I.draw_templates(12, 7, 0, idx, "review_sentiment")
    assert np.array_equal(a, I.draw_templates(12, 7, 0, idx, "review_sentiment"))          # same key, same draw
    assert [int(I.draw_templates(12, 7, 0, i, "review_sentiment")[0]) for i in (5, 17, 1999)] == a[[5, 17, 1999]].tolist()
    for other in (I.draw_templates(12, 8, 0, idx, "review_sentiment"), I.draw_templates(12, 7, 1, idx, "review_sentiment"),
                  I.draw_templates(12, 7, 0, idx, "movie_sentiment")):
        assert 0.8 < np.mean(other != a) < 0.97     # another seed, epoch or dataset: independent draws (11/12 differ)
    assert a.min() == 0 and a.max() == 11


CHI2_999 = {1: 10.828, 10: 29.588, 12: 32.909}   # the chi-square distribution's 0.999 quantile by degrees of freedom


@pytest.mark.parametrize("count", [2, 11, 13])
def test_templates_are_drawn_uniformly(count):
    """Chi-square goodness of fit against the uniform, over examples and over epochs (p = 0.001)."""
    n = 13000
    for draws in (I.draw_templates(count, 1234, 3, np.arange(n), "nli_pairs"),           # one epoch, many examples
                  I.draw_templates(count, 1234, np.arange(n), 42, "nli_pairs")):          # one example, many epochs
        observed = np.bincount(draws, minlength=count)
        stat = float(((observed - n / count) ** 2 / (n / count)).sum())
        assert stat < CHI2_999[count - 1], (observed, stat)


# ----------------------------------------------------------------------------- the mixture


SIZES = [100, 2_000, 5_000, 40_000]


def test_mixture_shares_capped_uncapped_and_temperature_exactly():
    total = sum(SIZES)
    assert mix.rates(SIZES) == pytest.approx([float(Fraction(n, total)) for n in SIZES], rel=1e-15)
    capped = [100, 2_000, 3_000, 3_000]                                      # FLAN: K = 3,000
    assert mix.rates(SIZES, cap=3_000) == pytest.approx([float(Fraction(c, 8_100)) for c in capped], rel=1e-15)
    assert mix.epoch_size(SIZES, 3_000) == 8_100 and mix.counts(mix.rates(SIZES, cap=3_000), 8_100) == capped
    assert mix.passes(SIZES, capped) == math.ceil(40_000 / 3_000) == 14
    # T5's temperature: the capped rates to the power 1/T, renormalised; T=1 is examples-proportional
    roots = [math.sqrt(c) for c in capped]
    assert mix.rates(SIZES, rate="temperature", cap=3_000, temperature=2.0) == \
        pytest.approx([r / math.fsum(roots) for r in roots], rel=1e-12)
    assert mix.rates(SIZES, rate="temperature", cap=3_000, temperature=1.0) == pytest.approx(mix.rates(SIZES, cap=3_000))
    flat = mix.rates(SIZES, rate="temperature", temperature=1e6)
    assert max(flat) - min(flat) < 1e-4                                      # T -> inf: equal shares
    # counts: largest remainders, summing to the total, each within one example of its share
    assert mix.counts([1 / 3, 1 / 3, 1 / 3], 10) == [4, 3, 3]
    assert mix.counts([0.125, 0.375, 0.5], 7) == [1, 3, 3]
    shares = mix.rates(SIZES, rate="temperature", cap=3_000, temperature=3.0)
    c = mix.counts(shares, 8_100)
    assert sum(c) == 8_100 and all(abs(k - s * 8_100) < 1 for k, s in zip(c, shares))


def _dataset(name: str, cluster: str, n: int) -> I.Dataset:
    ts = toy(dataset=name, cluster=cluster)
    return I.Dataset(ts, [{"text": f"{name} review {i}.", "label": i % 2} for i in range(n)], name,
                     f"mixture.datasets.{name}", False)


def test_a_planned_mixture_has_its_shares_and_sees_every_training_record():
    sets = [_dataset("a", "x", 30), _dataset("b", "x", 200), _dataset("c", "y", 90), _dataset("d", "z", 50)]
    sets[3].held_out = True
    for cfg, expect in (
            (mix.MixtureConfig(datasets=[mix.MixtureDataset("x")], cap=60, held_out=["z"]), [30, 60, 60]),
            (mix.MixtureConfig(datasets=[mix.MixtureDataset("x")], cap=0, held_out=["z"]), [30, 200, 90])):
        plan = I.plan_mixture(sets, cfg, seed=3)
        assert plan.per_epoch == expect
        assert plan.shares == pytest.approx([e / sum(expect) for e in expect])
        report = plan.report()
        assert [d["dataset"] for d in report["datasets"]] == ["a", "b", "c"] and report["held_out"][0]["dataset"] == "d"
        examples = plan.examples()
        per = np.bincount([e.dataset for e in examples], minlength=3)
        assert per.tolist() == [c * plan.passes for c in expect]
        assert plan.passes == max(math.ceil(n / c) for n, c in zip((30, 200, 90), expect))
        for d, n in enumerate((30, 200, 90)):   # every record of each dataset, each as often (within one)
            seen = np.bincount([e.record for e in examples if e.dataset == d], minlength=n)
            assert seen.min() >= 1 and seen.max() - seen.min() <= 1
        assert "share" in plan.table() and "held out (zero-shot): z (d)" in plan.table()


def flan_tiny_config(*overrides):
    from ptobj.recipes.engine.train_config import load_train_config

    return load_train_config(CONFIGS / "flan_tiny.yaml", list(overrides))


def test_the_held_out_cluster_is_absent_from_the_training_mixture(tmp_path):
    cfg = flan_tiny_config()
    mixture = cfg.data.records.mixture
    assert mixture.held_out == ["nli"]
    datasets = I.load_mixture(mixture, str(tmp_path / "cache"))
    plan = I.plan_mixture(datasets, mixture, valid_fraction=cfg.data.records.valid_fraction, seed=1)
    assert {d.name for d in plan.held_out} == {"nli_pairs", "rte_pairs"}
    assert "nli" not in {d.cluster for d in plan.train} and len({d.cluster for d in plan.train}) == 3
    t = SFT(SFTConfig(cfg.data.seq_length), special=SP, vocab_size=300)
    sampler = I.InstructionSampler(plan.train, plan.examples(), t.encode_record, char_encode, cfg.data.seq_length + 1,
                                   seed=1, special=SP)
    valid = I.InstructionSampler(plan.train, plan.valid_examples(), t.encode_record, char_encode,
                                 cfg.data.seq_length + 1, seed=2, special=SP)
    text = "\n".join(char_decode(row) for s in (sampler, valid) for e in (0, 1)
                     for row in s.read(np.full(len(s), e), np.arange(len(s)))["tokens"])
    held = [r["premise"] for d in plan.held_out for r in d.rows if "premise" in r] + \
        [r["sentence1"] for d in plan.held_out for r in d.rows if "sentence1" in r]
    assert len(held) == 112 and not [h for h in held if h in text]
    assert "OPTIONS:\n- yes\n- maybe\n- no" not in text and "Premise:" not in text
    trained = [r["review"] for d in plan.train if d.name == "review_sentiment" for r in d.rows]
    assert sum(r in text for r in trained) > 0.9 * len(trained)                   # the check can see text
    # the held-out datasets are what the zero-shot evaluation reads, and only they
    only = I.load_mixture(mixture, str(tmp_path / "cache"), only_held_out=True)
    assert [d.name for d in only] == ["nli_pairs", "rte_pairs"]


def test_the_sampler_draws_a_template_per_epoch_and_packs_whole_examples():
    sets = [_dataset("a", "x", 12), _dataset("b", "y", 9)]
    plan = I.plan_mixture(sets, mix.MixtureConfig(datasets=[mix.MixtureDataset("x")], cap=0), seed=5)
    t = SFT(SFTConfig(96), special=SP, vocab_size=300)
    s = I.InstructionSampler(plan.train, plan.examples(), t.encode_record, char_encode, 97, seed=5, special=SP)
    drawn = {e: [s.template_of(i, e) for i in range(len(s.examples))] for e in range(4)}
    assert drawn[0] != drawn[1] and set(sum(drawn.values(), [])) == {0, 1, 2}
    for e in (0, 3):
        rows = s.read(np.full(len(s), e), np.arange(len(s)))
        assert np.array_equal(rows["tokens"], s.read(np.full(len(s), e), np.arange(len(s)))["tokens"])
        seen = []
        order = streams.generator("sampler.order", 5, e).permutation(len(s))     # the epoch's row order
        for b, order_row in enumerate(s.rows[int(k)] for k in order):
            expect = np.concatenate([s.record(i, e)["tokens"] for i in order_row])
            assert np.array_equal(rows["tokens"][b, : expect.size], expect)     # whole examples, as drawn
            assert (rows["tokens"][b, expect.size:] == SP.pad).all()
            seen += order_row
        assert sorted(seen) == list(range(len(s.examples)))


# ----------------------------------------------------------------------------- scoring


@pytest.fixture(scope="module")
def tiny_model():
    import torch

    from ptobj.models.config import preset
    from ptobj.models.model import build_model
    from ptobj.recipes.engine.distributed import init_distributed

    info = init_distributed("cpu", "gloo", 1, 1, seed=0)
    torch.manual_seed(0)
    model = build_model(preset("tiny", heads={"lm": "token"}, max_position_embeddings=256), info.pg_collection,
                        device=torch.device("cpu")).eval()
    return model


class CharTok:
    special = SP

    @staticmethod
    def encode(text):
        return char_encode(text)

    @staticmethod
    def decode(ids):
        return char_decode(ids)


def test_rank_classification_picks_the_option_with_the_highest_loglikelihood(tiny_model, tmp_path):
    import torch

    from ptobj.objectives.sft import render
    from ptobj.recipes.evaluation.infill import OurModel
    from ptobj.recipes.evaluation.zero_shot import score_prompts

    mixture = flan_tiny_config().data.records.mixture
    (nli,) = [d for d in I.load_mixture(mixture, str(tmp_path / "cache"), only_held_out=True) if d.name == "nli_pairs"]
    prompts = I.zero_shot_prompts(nli, max_items=5, templates=2, seed=0)
    assert len(prompts) == 10 and all(p.targets == ("yes", "maybe", "no") for p in prompts)
    result = score_prompts(OurModel(tiny_model, torch.device("cpu")), CharTok, prompts, seq_length=256, allowed=216,
                           batch_size=4)
    for o in result.outcomes:   # each option scored on its own, unpadded: sum of log p over the option and <|end|>
        direct = []
        for target in o.prompt.targets:
            ids, resp = render([*o.prompt.messages, {"role": "assistant", "content": target}], char_encode, SP)
            ids, resp = ids[:-1], resp[:-1]
            t = torch.as_tensor(ids, dtype=torch.long)[None]
            with torch.no_grad():
                logits = tiny_model.logits({"tokens": t, "position_ids": torch.arange(len(ids))[None],
                                            "kv_start": torch.zeros_like(t), "kv_end": torch.arange(1, len(ids) + 1)[None]})
            logp = torch.log_softmax(logits[0].double(), -1)
            pos = np.flatnonzero(resp)
            direct.append(float(sum(logp[j - 1, ids[j]] for j in pos)))
        np.testing.assert_allclose(o.loglikelihoods, direct, rtol=0, atol=1e-4)
        assert o.prediction == o.prompt.targets[int(np.argmax(direct))]
        assert o.correct == float(int(np.argmax(direct)) == o.prompt.label)
        assert len(set(np.round(direct, 3))) == 3                     # the options do differ
    s = result.summary["datasets"]["nli_pairs"]
    items = {}
    for o in result.outcomes:
        items.setdefault(o.prompt.record, []).append(o.correct)
    per_item = [np.mean(v) for v in items.values()]
    assert s["items"] == 5 and s["score"] == pytest.approx(np.mean(per_item))
    assert s["se"] == pytest.approx(np.std(per_item, ddof=1) / math.sqrt(5))
    assert s["chance"] == pytest.approx(1 / 3)
    assert result.metrics["zero_shot/nli/score"] == pytest.approx(s["score"])


class ScriptedModel:
    """A model that answers each prompt with a set text (its generate() drives the chooser)."""

    def __init__(self, answers: dict[str, str]):
        self.answers = answers

    def generate(self, prompts, chooser, max_new_tokens, stops):
        import torch

        replies = [char_encode(self.answers[char_decode(p)]) + [SP.chat_end] for p in prompts]
        for step in range(max_new_tokens):
            logits = torch.zeros(len(prompts), 256)
            for r, reply in enumerate(replies):
                logits[r, reply[min(step, len(reply) - 1)]] = 10.0
            chooser(step, logits)


def test_generation_is_scored_by_exact_match_of_the_greedy_answer():
    from ptobj.recipes.evaluation.zero_shot import normalize, score_prompts

    qa = toy({"dataset": "toy_qa", "cluster": "qa", "task": "generation", "fields": ["q", "answers"],
              "answer": "answers", "templates": [{"user": "{q}", "assistant": "{answer}"}]})
    rows = [{"q": "What is 2+2?", "answers": ["4", "four"]}, {"q": "Capital of Peru?", "answers": ["Lima"]},
            {"q": "Color of sky?", "answers": ["blue"]}]
    prompts = I.zero_shot_prompts(I.Dataset(qa, rows, "qa", "x", True))
    model = ScriptedModel({"What is 2+2?": " Four. ", "Capital of Peru?": "lima", "Color of sky?": "green"})
    result = score_prompts(model, CharTok, prompts, seq_length=128, allowed=216, max_new_tokens=8)
    assert [o.correct for o in result.outcomes] == [1.0, 1.0, 0.0]
    assert [o.prediction for o in result.outcomes] == [" Four. ", "lima", "green"]
    assert result.summary["clusters"]["qa"]["score"] == pytest.approx(2 / 3)
    assert normalize("  The  ANSWER!\n") == "the answer" and normalize("Lima") != normalize("Lim a")


# ----------------------------------------------------------------------------- config, hub, the recipe


def test_mixture_config_errors_name_the_field():
    from ptobj.recipes.engine.config import ConfigError

    for override, match in (("data.records.mixture.cap=-1", r"mixture\.cap must be >= 0"),
                            ("data.records.mixture.rate=uniform", r"data\.records\.mixture\.rate: expected one of"),
                            ("data.records.mixture.temperature=2", r"mixture\.temperature=2\.0 needs mixture\.rate: temperature"),
                            ("data.records.mixture.cpa=5", r"data\.records\.mixture\.cpa: unknown key"),
                            ("data.records.mixture.zero_shot.batch_size=0", r"zero_shot\.batch_size must be >= 1"),
                            ("data.records.source=x.jsonl", r"give source \('x\.jsonl'\) or mixture, not both")):
        with pytest.raises(ConfigError, match=match):
            flan_tiny_config(override)
    with pytest.raises(I.TemplateError, match=r"data\.records\.mixture\.held_out: no dataset of cluster 'nlii'"):
        I.load_mixture(flan_tiny_config("data.records.mixture.held_out=[nlii]").data.records.mixture)
    with pytest.raises(I.TemplateError, match=r"leaves no dataset to train on"):
        I.load_mixture(flan_tiny_config("data.records.mixture.held_out=[nli,qa,topic,sentiment]").data.records.mixture)


def test_a_hub_dataset_without_the_hub_fails_at_once_naming_it(monkeypatch, tmp_path, capsys):
    from ptobj.data_pipeline import records
    from ptobj.recipes.train import main

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(records, "hub_unreachable", lambda timeout=3.0: "no connection to huggingface.co:443: test")
    code = main(["flan_350m", f"logging.run_dir={tmp_path / 'run'}", f"data.cache_dir={tmp_path / 'cache'}"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "corpus error: data.records.mixture.datasets.0.source: 'stanfordnlp/sst2' is a Hugging Face hub " \
           "dataset and the hub cannot be reached" in err
    assert "set data.records.mixture.datasets.0.source to that file" in err and "HF_HUB_OFFLINE=1" in err
    assert not (tmp_path / "run").exists()
    # offline by Hugging Face's own switch: what datasets says, with the same way out
    import datasets

    def offline(*a, **k):
        raise ConnectionError("Couldn't reach 'stanfordnlp/sst2' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(CorpusError, match=r"OfflineModeIsEnabled\)\. To run without the hub, download it where"):
        records.load_records(records.RecordsConfig(source="stanfordnlp/sst2"), str(tmp_path / "c"))


@pytest.fixture(scope="module")
def pretrained(tiny_corpus, tmp_path_factory):
    """A tiny causal LM run (the model section of flan_tiny.yaml) to start from."""
    from ptobj.recipes.engine.train_config import load_train_config
    from ptobj.recipes.train import run
    from test_recipes_train import shrink

    run_dir = tmp_path_factory.mktemp("pretrain") / "run"
    run(shrink(load_train_config(CONFIGS / "causal_lm_tiny.yaml"), tiny_corpus, run_dir, steps=4), progress=False)
    return run_dir


def test_the_flan_tiny_recipe_trains_and_writes_its_mixture_and_held_out_score(pretrained, tmp_path, capsys):
    from ptobj.recipes.evaluation import zero_shot
    from ptobj.recipes.train import run

    small = ["data.records.mixture.zero_shot.max_items=6", "data.records.mixture.zero_shot.templates=2"]
    cfg = flan_tiny_config(f"init_from={pretrained}", f"logging.run_dir={tmp_path / 'flan'}",
                           f"data.cache_dir={tmp_path / 'cache'}", "logging.progress_bar=false", "logging.tensorboard=false",
                           "schedule.train_steps=4", "schedule.warmup_steps=1", "schedule.micro_batch_size=4",
                           "eval.batches=1", "eval.micro_batch_size=4", *small)
    result = run(cfg, progress=False)
    out = capsys.readouterr().out
    assert "[mixture] examples-proportional, cap K=64" in out and "held out (zero-shot): nli (nli_pairs, rte_pairs)" in out
    assert all(math.isfinite(v) for v in result.losses.values()) and len(result.losses) == 4
    run_dir = tmp_path / "flan"
    shares = json.loads((run_dir / "mixture.json").read_text())
    assert [d["dataset"] for d in shares["datasets"]] == ["review_sentiment", "movie_sentiment", "headline_topic",
                                                          "question_topic", "arithmetic", "reading_qa"]
    assert math.isclose(sum(d["share"] for d in shares["datasets"]), 1.0)
    assert [d["per_mixture_epoch"] for d in shares["datasets"]] == [min(d["train_records"], 64) for d in shares["datasets"]]
    assert {d["cluster"] for d in shares["held_out"]} == {"nli"}
    scores = json.loads((run_dir / "zero_shot.json").read_text())
    assert set(scores["clusters"]) == {"nli"} and scores["clusters"]["nli"]["items"] == 12
    final = json.loads((run_dir / "final_metrics.json").read_text())
    assert 0.0 <= final["zero_shot/nli/score"] <= 1.0 and math.isfinite(final["zero_shot/nli/se"])
    assert final["zero_shot/nli/nli_pairs/chance"] == pytest.approx(1 / 3)
    assert math.isfinite(final["heldout/lm_loss"])
    # the same score from the command line, on the trained run (the recipe's own mixture) and, before
    # tuning, on the pretrained run scored through the recipe's mixture
    sets = [a for s in small for a in ("--set", s)]
    assert zero_shot.main([str(run_dir), *sets, "--out", str(tmp_path / "after.json")]) == 0
    after = json.loads((tmp_path / "after.json").read_text())["ours"]["metrics"]
    assert after["zero_shot/nli/score"] == pytest.approx(final["zero_shot/nli/score"])
    assert zero_shot.main([str(pretrained), "--recipe", str(CONFIGS / "flan_tiny.yaml"), *sets,
                           "--out", str(tmp_path / "before.json")]) == 0
    before = json.loads((tmp_path / "before.json").read_text())
    assert before["ours"]["clusters"]["nli"]["items"] == 12 and before["step"] == 4
    assert zero_shot.main([str(pretrained)]) == 2
    assert "data.records.mixture is not set" in capsys.readouterr().err
