"""``python -m ptobj.recipes.export RUN_DIR OUT_DIR``: a trained tiny run becomes a folder that
transformers' Auto classes and pipeline load, with our logits and our greedy continuation."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY_CORPUS, TINY_TOKENIZER
from ptobj.recipes.engine import checkpoint as ckpt
from ptobj.recipes.export import CheckFailed, export_run, main
from ptobj.recipes.train import run
from ptobj.recipes.engine.train_config import load_train_config
from test_recipes_train import CONFIGS, shrink

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "def main(args):\n    return"


@pytest.fixture(scope="module")
def trained(tiny_corpus, tmp_path_factory):
    """A tiny FIM decoder run with checkpoints at steps 3 and 6."""
    run_dir = tmp_path_factory.mktemp("export") / "run"
    cfg = shrink(load_train_config(CONFIGS / "gpt_fim_tiny.yaml"), tiny_corpus, run_dir, steps=6, every=3)
    run(cfg, progress=False)
    return run_dir


def ours_from_checkpoint(run_dir: Path, step_dir: Path):
    """Our model as training built it (model_config.json) with the checkpoint's weights."""
    from ptobj.models.config import ModelConfig
    from ptobj.models.model import build_model
    from ptobj.models.parallel import init_parallel

    cfg = ModelConfig.from_dict(json.loads((run_dir / "model_config.json").read_text()))
    model = build_model(cfg, init_parallel(tp=1, pp=1, backend="gloo")).eval()
    ckpt.load_checkpoint(step_dir, ckpt.TensorLayout().model_items(model))
    return model


@torch.no_grad()
def our_logits(model, ids: list[int]) -> torch.Tensor:
    s = len(ids)
    batch = {"tokens": torch.tensor([ids]), "kv_start": torch.zeros(1, s, dtype=torch.int32),
             "kv_end": torch.arange(1, s + 1, dtype=torch.int32)[None]}
    return model.logits(batch)[0]


def test_exported_run_loads_through_auto_classes_and_pipeline(trained, tmp_path):
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from ptobj.data_pipeline.tokenizer import SentencePieceTokenizer

    from ptobj.recipes.experiments.sweep import run_env  # without the rendezvous settings of this (pytest) process

    out = tmp_path / "hf"
    done = subprocess.run([sys.executable, "-m", "ptobj.recipes.export", str(trained), str(out)], cwd=ROOT,
                          env=run_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "checked: transformers logits match ours" in done.stdout
    assert f"AutoModelForCausalLM.from_pretrained({str(out)!r})" in done.stdout

    config = AutoConfig.from_pretrained(out)
    assert config.architectures == ["LlamaForCausalLM"]
    assert getattr(transformers, config.architectures[0]) is transformers.LlamaForCausalLM  # TRL's DPO lookup
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(out)
    ours_tok = SentencePieceTokenizer.load(trained / "tokenizer.model")
    ids = tok(PROMPT, add_special_tokens=False)["input_ids"]
    assert ids == ours_tok.encode(PROMPT)
    assert (config.eos_token_id, tok.eos_token_id, hf.generation_config.eos_token_id) == (1, 1, 1)  # EOT
    assert config.bos_token_id is None and tok.bos_token_id is None

    model = ours_from_checkpoint(trained, ckpt.latest_checkpoint(trained / "checkpoints"))
    ours = our_logits(model, ids)
    with torch.no_grad():
        theirs = hf(input_ids=torch.tensor([ids])).logits[0]
    assert ours.abs().max() > 0.5  # a trained model, not a degenerate comparison
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)

    # the pipeline's greedy continuation is ours
    new = 8
    greedy = list(ids)
    for _ in range(new):
        nxt = int(our_logits(model, greedy)[-1].argmax())
        greedy.append(nxt)
        if nxt == ours_tok.special.eot:
            break
    gen = transformers.pipeline("text-generation", model=str(out), tokenizer=str(out), device="cpu")
    text = gen(PROMPT, max_new_tokens=new, do_sample=False)[0]["generated_text"]
    assert text == PROMPT + ours_tok.decode([t for t in greedy[len(ids):] if t != ours_tok.special.eot])


def test_step_and_dtype_choose_what_is_written(trained, tmp_path):
    from safetensors import safe_open

    result = export_run(trained, tmp_path / "hf", step=3, dtype="bf16")
    assert (result.step, result.dtype) == (3, "bfloat16")
    assert result.max_abs_diff is not None and result.max_abs_diff < 1e-4  # same rounded weights on both sides
    raw = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert raw["torch_dtype"] == raw["dtype"] == "bfloat16"
    saved = ckpt.read_items(trained / "checkpoints" / "step_00000003")[1]
    newest = ckpt.read_items(ckpt.latest_checkpoint(trained / "checkpoints"))[1]
    name = "model/lm.embedding.word_embeddings.weight"
    assert not torch.equal(saved[name], newest[name])
    with safe_open(str(tmp_path / "hf" / "model.safetensors"), "pt") as f:
        torch.testing.assert_close(f.get_tensor("model.embed_tokens.weight"), saved[name].to(torch.bfloat16),
                                   atol=0, rtol=0)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary folder left


def test_missing_files_are_named(trained, tmp_path):
    with pytest.raises(FileNotFoundError, match="run directory not found: .*nowhere"):
        export_run(tmp_path / "nowhere", tmp_path / "hf")
    moved = tmp_path / "moved"
    moved.mkdir()
    with pytest.raises(FileNotFoundError, match=r"moved/config.yaml: not found"):
        export_run(moved, tmp_path / "hf")
    shutil.copy(trained / "config.yaml", moved)
    with pytest.raises(FileNotFoundError, match=r"moved/tokenizer.model: tokenizer not found"):
        export_run(moved, tmp_path / "hf")
    shutil.copy(trained / "tokenizer.model", moved)
    with pytest.raises(FileNotFoundError, match=r"moved/checkpoints: no complete checkpoint"):
        export_run(moved, tmp_path / "hf")
    shutil.copytree(trained / "checkpoints", moved / "checkpoints")  # a run found where it is now
    with pytest.raises(FileNotFoundError, match=r"step_00000005: not a complete checkpoint; complete steps: \[3, 6\]"):
        export_run(moved, tmp_path / "hf", step=5)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    with pytest.raises(FileExistsError, match="taken: exists and is not an empty folder"):
        export_run(moved, tmp_path / "taken")
    assert export_run(moved, tmp_path / "fresh", step=6).step == 6


def test_a_wrong_export_is_caught_and_not_written(trained, tmp_path, monkeypatch):
    import ptobj.models.hf_export as hf_export

    right = hf_export.split_qkv

    def swapped(qkv, cfg):  # query and key rows exchanged: loads fine, computes the wrong thing
        q, k, v = right(qkv, cfg)
        return k, q, v

    monkeypatch.setattr(hf_export, "split_qkv", swapped)
    with pytest.raises(CheckFailed, match="logits differ from ours"):
        export_run(trained, tmp_path / "hf")
    assert list(tmp_path.iterdir()) == []


def test_the_check_refuses_logits_off_by_more_than_its_bound(trained, tmp_path, monkeypatch):
    """TOLERANCE is 1e-4 (relative to max(1, |logit|)): a folder 3e-4 off is refused, 3e-5 off passes."""
    import dataclasses

    import ptobj.models.hf_export as hf_export
    from ptobj.recipes.export import TOLERANCE

    assert TOLERANCE == 1e-4
    real = hf_export.hf_format

    def off_by(rel):
        def fmt(*args, **kwargs):
            f = real(*args, **kwargs)
            shifted = lambda out: {k: v + rel * v.abs().max().clamp(min=1.0) for k, v in f.hf_logits(out).items()}
            return dataclasses.replace(f, hf_logits=shifted)
        return fmt

    monkeypatch.setattr(hf_export, "hf_format", off_by(3e-4))
    with pytest.raises(CheckFailed, match="logits differ from ours"):
        export_run(trained, tmp_path / "far")
    assert not (tmp_path / "far").exists()
    monkeypatch.setattr(hf_export, "hf_format", off_by(3e-5))
    assert export_run(trained, tmp_path / "near").max_abs_diff > 1e-5


@pytest.fixture(scope="module")
def albert_run(tiny_corpus, tmp_path_factory):
    """The ALBERT SOP tiny recipe (factorised, all layers shared, post-norm), trained 4 steps."""
    run_dir = tmp_path_factory.mktemp("albert") / "run"
    cfg = shrink(load_train_config(CONFIGS / "albert_sop_tiny.yaml"), tiny_corpus, run_dir, steps=4, every=4)
    run(cfg, progress=False)
    return run_dir


PAIR = ("def add(a, b):", "    return a + b  # the sum of two numbers")


def test_albert_run_exports_with_our_mlm_and_sop_logits(albert_run, tmp_path):
    """`python -m ptobj.recipes.export` on a trained ALBERT run: AutoModelForPreTraining loads it without
    custom code and its MLM and SOP logits on a tokenized sentence pair are ours (fp32, 1e-4);
    the fill-mask pipeline predicts what our model predicts."""
    import transformers
    from transformers import AutoConfig, AutoModelForPreTraining, AutoTokenizer

    from ptobj.recipes.experiments.sweep import run_env

    out = tmp_path / "hf"
    done = subprocess.run([sys.executable, "-m", "ptobj.recipes.export", str(albert_run), str(out)], cwd=ROOT,
                          env=run_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "checked: transformers logits match ours" in done.stdout and "sequence" in done.stdout
    assert f"AutoModelForPreTraining.from_pretrained({str(out)!r})" in done.stdout
    config = AutoConfig.from_pretrained(out)
    assert config.architectures == ["AlbertForPreTraining"]
    assert (config.embedding_size, config.hidden_size, config.num_hidden_groups) == (32, 64, 1)
    hf = AutoModelForPreTraining.from_pretrained(out, dtype=torch.float32).eval()
    assert type(hf) is transformers.AlbertForPreTraining

    tok = AutoTokenizer.from_pretrained(out)
    enc = tok(*PAIR, return_tensors="pt")  # [CLS] A [SEP] B [SEP], segments 0 / 1, as SOP trains
    ids, segments = enc["input_ids"], enc["token_type_ids"]
    model = ours_from_checkpoint(albert_run, ckpt.latest_checkpoint(albert_run / "checkpoints"))
    special = model_special(albert_run)
    assert ids[0, 0] == special.cls and ids[0, -1] == special.sep and segments[0, -1] == 1
    s = ids.shape[1]
    batch = {"tokens": ids, "segment_ids": segments, "position_ids": torch.arange(s)[None],
             "kv_start": torch.zeros(1, s, dtype=torch.int32), "kv_end": torch.full((1, s), s, dtype=torch.int32)}
    with torch.no_grad():
        ours_lm, ours_sop = model.logits(batch), model.sequence_logits(batch)["sop"]
        theirs = hf(**enc)
    assert ours_lm.abs().max() > 0.1 and ours_lm.std() > 0.01  # not a degenerate (all-zero) comparison
    lm_diff = float((theirs.prediction_logits - ours_lm).abs().max())
    sop_diff = float((theirs.sop_logits - ours_sop).abs().max())
    print(f"ALBERT export, max |logit diff|: MLM {lm_diff:.3g}, SOP {sop_diff:.3g} ({s} tokens)")
    assert lm_diff < 1e-4 and sop_diff < 1e-4

    fill = transformers.pipeline("fill-mask", model=str(out), tokenizer=str(out), device="cpu")
    text = PAIR[0].replace("add", tok.mask_token)
    enc = tok(text, return_tensors="pt")
    at = int((enc["input_ids"][0] == special.mask).nonzero()[0, 0])
    s = enc["input_ids"].shape[1]
    batch = {"tokens": enc["input_ids"], "segment_ids": enc["token_type_ids"], "position_ids": torch.arange(s)[None],
             "kv_start": torch.zeros(1, s, dtype=torch.int32), "kv_end": torch.full((1, s), s, dtype=torch.int32)}
    with torch.no_grad():
        best = int(model.logits(batch)[0, at].argmax())
    assert fill(text, top_k=1)[0]["token"] == best
    # the mask takes the space before it, as [MASK] replaced a whole '▁word' piece in training
    pieces = tok.convert_ids_to_tokens(tok("the <mask> is", add_special_tokens=False)["input_ids"])
    alone = lambda text: tok.convert_ids_to_tokens(tok(text, add_special_tokens=False)["input_ids"])
    assert pieces == [*alone("the"), "<mask>", *alone(" is")], pieces
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]
    filled = fill("the <mask> is", top_k=1)[0]
    assert filled["sequence"] == tok.decode([*ids("the"), filled["token"], *ids(" is")])  # no space piece added
    # one story: the config's begin / end of sequence are the tokenizer's ([CLS] ... [SEP])
    assert (config.bos_token_id, config.eos_token_id) == (tok.bos_token_id, tok.eos_token_id) == \
        (special.cls, special.sep)


def model_special(run_dir: Path):
    from ptobj.data_pipeline.tokenizer import SentencePieceTokenizer

    return SentencePieceTokenizer.load(run_dir / "tokenizer.model").special


def test_spanbert_run_exports_as_bert_and_says_sbo_is_dropped(tiny_corpus, tmp_path, capsys):
    from transformers import AutoModelForMaskedLM

    run_dir = tmp_path / "spanbert"
    cfg = shrink(load_train_config(CONFIGS / "spanbert_tiny.yaml"), tiny_corpus, run_dir, steps=2, every=2)
    run(cfg, progress=False)
    assert main([str(run_dir), str(tmp_path / "hf")]) == 0
    printed = capsys.readouterr().out
    assert "dropping head(s) ['sbo']" in printed and "not exported (no BertForMaskedLM twin): head(s) ['sbo']" in printed
    result = export_run(run_dir, tmp_path / "again")
    assert result.hf.architecture == "BertForMaskedLM" and result.diffs["token"] < 1e-4
    assert type(AutoModelForMaskedLM.from_pretrained(tmp_path / "hf")).__name__ == "BertForMaskedLM"


def test_an_encoder_without_a_twin_is_refused_naming_the_field(tiny_corpus, tmp_path, capsys):
    from ptobj.recipes.engine.config import save_config

    run_dir = tmp_path / "prenorm_albert"
    cfg = load_train_config(CONFIGS / "albert_sop_tiny.yaml", ["model.norm_position=pre"])
    save_config(cfg, run_dir / "config.yaml")
    shutil.copy(next(Path(tiny_corpus[2]).glob("*/tokenizer.model")), run_dir / "tokenizer.model")
    assert main([str(run_dir), str(tmp_path / "hf")]) == 2
    assert "norm_position='pre' with embedding_size=32" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()


def test_tensor_parallel_run_asks_for_torchrun(trained, tmp_path):
    from ptobj.recipes.engine.config import save_config

    run_dir = tmp_path / "tp2"
    save_config(load_train_config(trained / "config.yaml", ["parallel.tensor_parallel=2"]), run_dir / "config.yaml")
    shutil.copytree(trained / "checkpoints", run_dir / "checkpoints")
    with pytest.raises(ValueError, match=r"tensor_parallel=2, this launch has 1 process.*torchrun --nproc-per-node 2"):
        export_run(run_dir, tmp_path / "hf", tokenizer=trained / "tokenizer.model")


@pytest.mark.slow
def test_tensor_parallel_2_run_exports_under_torchrun(tiny_corpus, tmp_path):
    """Trained with TP=2 (two gloo processes), exported with TP=2: the shards are gathered."""
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from ptobj.recipes.experiments.sweep import run_env

    run_dir, out = tmp_path / "tp2", tmp_path / "hf"
    overrides = [f"data.cache_dir={tiny_corpus[2]}", "data.seq_length=64", "schedule.train_steps=2",
                 "schedule.warmup_steps=1", "schedule.micro_batch_size=2", f"logging.run_dir={run_dir}",
                 "logging.progress_bar=false", "logging.tensorboard=false", "eval.at_end=false",
                 "eval.infill.enabled=false", "parallel.device=cpu", "parallel.tensor_parallel=2"]
    overrides += [f"data.corpus.{k}={v}" for k, v in TINY_CORPUS.items()]
    overrides += [f"data.tokenizer.{k}={v}" for k, v in TINY_TOKENIZER.items()]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m"]
    env = {**run_env(), "OMP_NUM_THREADS": "1"}
    train = subprocess.run([*torchrun, "ptobj.recipes.train", str(CONFIGS / "gpt_fim_tiny.yaml"), *overrides],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stderr[-3000:]
    export = subprocess.run([*torchrun, "ptobj.recipes.export", str(run_dir), str(out)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert export.returncode == 0, export.stderr[-3000:]
    assert export.stdout.count("checked: transformers logits match ours") == 1  # rank 0 alone reports
    step_dir = ckpt.latest_checkpoint(run_dir / "checkpoints")
    full = ckpt.read_items(step_dir)[1]["model/lm.embedding.word_embeddings.weight"]  # both TP shards
    assert full.shape[0] == AutoModelForCausalLM.from_pretrained(out).config.vocab_size
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        torch.testing.assert_close(f.get_tensor("model.embed_tokens.weight"), full, atol=0, rtol=0)


def test_a_span_corruption_run_exports_its_sentinels(tiny_corpus, tmp_path):
    """T5's sentinels sit after the tokenizer's pieces: the exported model embeds them and the
    exported tokenizer names them."""
    from transformers import AutoTokenizer

    run_dir = tmp_path / "t5"
    cfg = shrink(load_train_config(CONFIGS / "t5_tiny.yaml"), tiny_corpus, run_dir, steps=2)
    run(cfg, progress=False)
    result = export_run(run_dir, tmp_path / "hf")
    assert result.max_abs_diff is not None and result.max_abs_diff < 1e-4   # checked against our logits
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    n = cfg.plan.sentinels
    assert n > 0
    vocab = json.loads((run_dir / "model_config.json").read_text())["vocab_size"]
    first = len(tok) - n
    assert tok.convert_tokens_to_ids(f"<extra_id_{n - 1}>") == first + n - 1 < vocab
