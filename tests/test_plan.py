"""``ptobj train RECIPE --dry-run``: the plan's parameter count is the built model's; tokens, steps
and epochs follow from the config and the prepared corpus; it warns; it writes nothing."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json

import pytest
import torch

from ptobj.recipes.engine.plan import _vocab, plan_run
from ptobj.recipes.engine.train_config import load_train_config
from ptobj.recipes.train import main


@pytest.mark.parametrize("recipe", ["gpt_fim_tiny", "albert_sop_tiny", "t5_tiny", "spanbert_tiny", "unilm_tiny"])
def test_the_planned_parameter_count_is_the_built_models(recipe):
    from ptobj.models.model import build_model
    from ptobj.models.parallel import destroy_parallel, init_parallel
    from ptobj.recipes.engine.resolve import resolve_model_config

    cfg = load_train_config(recipe)
    plan = plan_run(cfg, gpus=1)
    mc = resolve_model_config(cfg, _vocab(cfg), torch.device("cpu"))
    try:
        built = sum(p.numel() for p in build_model(mc, init_parallel(tp=1, pp=1, backend="gloo")).parameters())
    finally:
        destroy_parallel()
    assert plan.params == built and plan.vocab_size == mc.vocab_size


def test_tokens_epochs_memory_and_warnings(tiny_corpus):
    corpus, tokenizer, cache = tiny_corpus
    cfg = load_train_config("gpt_fim_tiny", [f"data.cache_dir={cache}", "data.seq_length=64",
                                             "schedule.train_steps=300", "schedule.grad_accum_steps=2"])
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, corpus=corpus, tokenizer=tokenizer))
    from ptobj.data_pipeline.build import prepare_corpus

    train_tokens = prepare_corpus(corpus, tokenizer, cache).manifest["splits"]["train"]["tokens"]
    plan = plan_run(cfg, gpus=4, mfu=0.5, peak=1e12)
    assert plan.layout["dp"] == 4 and plan.tokens_per_step == 8 * 2 * 4 * 64
    assert plan.tokens == plan.tokens_per_step * 300 and plan.corpus_tokens == train_tokens
    assert plan.epochs == pytest.approx(plan.tokens / train_tokens)
    assert plan.epochs > 4 and any("repeats its corpus" in w for w in plan.warnings)
    m = plan.memory_gib
    assert m["total"] == pytest.approx(sum(v for k, v in m.items() if k != "total"))
    assert plan.hours == pytest.approx(plan.tokens * plan.flops_per_token / (1e12 * 4 * 0.5) / 3600)
    nothing = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, corpus=dataclasses.replace(
        corpus, valid_fraction=0.0, valid_documents=0)))
    assert any("nothing is held out" in w for w in plan_run(nothing, gpus=1).warnings)


def test_a_bigger_layout_shards_what_it_should():
    cfg = load_train_config("gpt_fim_350m")
    one, eight = plan_run(cfg, gpus=1), plan_run(cfg, gpus=8)
    assert one.params == eight.params and eight.tokens_per_step == 8 * one.tokens_per_step
    assert eight.memory_gib["optimizer"] == pytest.approx(one.memory_gib["optimizer"] / 8)   # distributed optimizer
    assert eight.memory_gib["weights"] == pytest.approx(one.memory_gib["weights"])
    tp2 = plan_run(load_train_config("gpt_fim_350m", ["parallel.tensor_parallel=2"]), gpus=8)
    assert tp2.memory_gib["weights"] == pytest.approx(one.memory_gib["weights"] / 2, rel=0.02)
    assert "streaming" in one.corpus_note and one.epochs is None


def test_the_dry_run_prints_the_plan_and_writes_nothing(tmp_path):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["gpt_fim_tiny", f"logging.run_dir={tmp_path / 'run'}", f"data.cache_dir={tmp_path / 'cache'}",
                     "--dry-run", "--gpus", "2", "--json"])
    assert code == 0
    text = out.getvalue()
    for word in ("parameters", "tokens per step", "steps", "tokens in all", "epochs", "memory per GPU", "time"):
        assert word in text
    plan = json.loads(text.strip().splitlines()[-1])
    assert plan["gpus"] == 2 and plan["layout"]["dp"] == 2
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()
    with contextlib.redirect_stderr(io.StringIO()) as err:
        assert main(["gpt_fim_tiny", "parallel.tensor_parallel=2", "--dry-run", "--gpus", "3"]) == 2
    assert "--gpus 3" in err.getvalue()
