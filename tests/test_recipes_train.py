"""The training recipe end to end on CPU, at tiny sizes (seconds per run)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from ptobj.recipes.engine import checkpoint as ckpt
from ptobj.recipes.engine.config import ConfigError
from ptobj.recipes.train import NonFiniteLoss, Session, main, run
from ptobj.recipes.engine.train_config import load_train_config

CONFIGS = Path(__file__).resolve().parents[1] / "ptobj" / "recipes" / "configs"
TINY = sorted(p.name for p in CONFIGS.glob("*_tiny.yaml"))


def shrink(cfg, tiny_corpus, run_dir, *, steps=6, every=0, seq=64, mb=4, accum=1, **schedule):
    """The config at test size, reading the session's prepared tiny corpus."""
    corpus, tokenizer, cache = tiny_corpus
    R = dataclasses.replace
    if cfg.plan.sampler.startswith("records"):  # records (SFT, reward model): the tiny corpus's tokenizer, fresh weights
        from ptobj.data_pipeline.build import TOKENIZER_FILE, prepare_corpus

        prepared = prepare_corpus(corpus, tokenizer, cache, progress=False)
        tokenizer = R(tokenizer, model_path=str(prepared.path / TOKENIZER_FILE))
        cfg = R(cfg, init_from="")
        seq = cfg.data.seq_length  # a row holds whole records
    if cfg.model.hidden_size > 64:  # a recipe sized for its own job (the main job): the test size
        cfg = R(cfg, model=R(cfg.model, num_layers=min(cfg.model.num_layers, 2), hidden_size=64,
                             num_attention_heads=4, ffn_hidden_size=192))
    return R(cfg,
             data=R(cfg.data, corpus=corpus, tokenizer=tokenizer, cache_dir=cache, seq_length=seq),
             schedule=R(cfg.schedule, train_steps=steps, warmup_steps=min(2, steps), micro_batch_size=mb,
                        grad_accum_steps=accum, **schedule),
             checkpoint=R(cfg.checkpoint, every_steps=every, dir=""),
             logging=R(cfg.logging, run_dir=str(run_dir), progress_bar=False, every_steps=2),
             eval=R(cfg.eval, batches=1, micro_batch_size=4, every_steps=0,
                    infill=R(cfg.eval.infill, max_new_tokens=4, tasks_per_kind=1, samples=2)))


def test_every_objective_has_a_tiny_recipe():
    from ptobj.objectives import registry

    trained = {leaf.name for n in TINY for leaf in registry.leaves(load_train_config(CONFIGS / n).objective_spec)}
    assert trained == set(registry.names())


@pytest.mark.parametrize("name", TINY)
def test_tiny_config_learns_a_fixed_batch(name, tiny_corpus, tmp_path):
    """Every tiny recipe builds, gives a finite loss, and fits one fixed batch."""
    cfg = load_train_config(CONFIGS / name, ["optim.lr=5e-3", "optim.min_lr=5e-3"])
    cfg = shrink(cfg, tiny_corpus, tmp_path / "run", steps=8, mb=8)
    sess = Session(cfg, progress=False)
    from ptobj.recipes.engine.losses import target_counts

    for first in range(10):  # a batch with targets for every objective (short segments may have none)
        mbs = sess.micro_batches(first)
        if min(target_counts(mbs[0], sess.model_cfg.head_kinds).values()) > 0:
            break
    losses = []
    for step in range(8):
        sess.optimizer.param_groups[0]["lr"] = sess.optimizer.param_groups[1]["lr"] = 5e-3
        loss, parts, norm = sess.train_step(step, mbs)
        assert math.isfinite(loss) and math.isfinite(norm), (step, loss, norm)
        losses.append(loss)
    assert losses[-1] < 0.8 * losses[0], losses
    assert set(parts) == set(cfg.plan.losses) == set(sess.model_cfg.head_kinds)   # every declared loss trains


def _fim_cfg(tiny_corpus, run_dir, **kw):
    return shrink(load_train_config(CONFIGS / "gpt_fim_tiny.yaml"), tiny_corpus, run_dir, **kw)


def test_resume_reproduces_uninterrupted_run_bitwise(tiny_corpus, tmp_path):
    full = run(_fim_cfg(tiny_corpus, tmp_path / "full", steps=6, every=3), progress=False)
    assert sorted(full.losses) == [1, 2, 3, 4, 5, 6]
    assert list((tmp_path / "full" / "tb").glob("events.out.tfevents.*"))  # TensorBoard event file
    assert full.losses[6] < full.losses[1]

    first = run(_fim_cfg(tiny_corpus, tmp_path / "split", steps=6, every=3, stop_after_steps=3), progress=False)
    assert sorted(first.losses) == [1, 2, 3] and first.checkpoint.name == "step_00000003"
    second = run(_fim_cfg(tiny_corpus, tmp_path / "split", steps=6, every=3), progress=False)
    assert second.start_step == 3 and sorted(second.losses) == [4, 5, 6]

    for step in range(1, 7):
        got = (first.losses if step <= 3 else second.losses)[step]
        assert got == full.losses[step], (step, got, full.losses[step])  # exact, not approximate
    (meta_a, a), (meta_b, b) = ckpt.read_items(full.checkpoint), ckpt.read_items(second.checkpoint)
    assert meta_a["step"] == meta_b["step"] == 6 and a.keys() == b.keys()
    for k, v in a.items():
        assert torch.equal(v, b[k]) if isinstance(v, torch.Tensor) else v == b[k], k
    # re-evaluating the finished run from its directory gives its final held-out metrics
    from ptobj.recipes.evaluation.evaluate import evaluate_run

    again = evaluate_run(tmp_path / "full")
    assert again["step"] == 6 and again["ltr/lm_loss"] == pytest.approx(full.eval_metrics["ltr/lm_loss"], rel=1e-6)
    assert set(full.eval_metrics) == {"ltr/lm_loss", "ltr/lm_acc", "fim/lm_loss", "fim/lm_acc", "ltr/lm_loss_se",
                                      "fim/lm_loss_se"}
    # the resolved config is saved beside the run and reloads to the same tree
    assert load_train_config(tmp_path / "full" / "config.yaml") == _fim_cfg(tiny_corpus, tmp_path / "full", steps=6,
                                                                              every=3)


class Killed(BaseException):
    pass


def test_checkpoint_killed_mid_save_is_ignored_on_resume(tiny_corpus, tmp_path):
    def die_at_step_4(tmp_dir):
        if tmp_dir.name.endswith("step_00000004"):
            raise Killed()

    with pytest.raises(Killed):
        run(_fim_cfg(tiny_corpus, tmp_path / "r", steps=6, every=2), progress=False,
            save_hooks={"_before_publish": die_at_step_4})
    cdir = tmp_path / "r" / "checkpoints"
    assert (cdir / "latest").read_text().strip() == "step_00000002"
    assert (cdir / ".tmp-step_00000004").is_dir()  # the partial save is there ...
    resumed = run(_fim_cfg(tiny_corpus, tmp_path / "r", steps=6, every=2), progress=False)
    assert resumed.start_step == 2  # ... and ignored
    assert not (cdir / ".tmp-step_00000004").exists()
    assert resumed.checkpoint.name == "step_00000006"


def test_non_finite_loss_stops_before_the_step(tiny_corpus, tmp_path):
    def poison(step, loss):
        return loss * float("nan") if step == 3 else loss

    cfg = _fim_cfg(tiny_corpus, tmp_path / "nan", steps=6, every=2)
    with pytest.raises(NonFiniteLoss, match=r"non-finite loss at step 3 .*before its optimizer step.*step_00000002"):
        run(cfg, progress=False, loss_hook=poison)
    cdir = tmp_path / "nan" / "checkpoints"
    assert ckpt.latest_checkpoint(cdir).name == "step_00000002"
    assert not list(cdir.glob("step_00000003")) and not list(cdir.glob(".tmp-*"))

    # the optimizer step is skipped: weights and Adam state are untouched
    sess = Session(cfg, progress=False)
    before = {k: v.clone() for k, v in sess.model.state_dict().items() if isinstance(v, torch.Tensor)}
    with pytest.raises(NonFiniteLoss, match="step 1"):
        sess.train_step(0, sess.micro_batches(0), loss_hook=lambda s, l: l * float("inf"))
    after = sess.model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    assert not sess.optimizer.state_dict()["state"]


class _NaNGradient(torch.autograd.Function):
    """The loss unchanged on the way forward, NaN gradients on the way back."""

    @staticmethod
    def forward(ctx, loss):
        return loss.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def _all_finite(step_dir) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in ckpt.read_items(step_dir)[1].values()
               if isinstance(v, torch.Tensor) and v.is_floating_point())


def test_non_finite_gradient_norm_stops_before_the_step(tiny_corpus, tmp_path):
    """A finite loss whose gradients are NaN (as with optim.lr=1e6) is never applied: the run stops
    naming the step, and the last good checkpoint it names (and `latest`) holds finite weights."""
    def nan_grads_at_step_3(step, loss):
        return _NaNGradient.apply(loss) if step == 3 else loss

    cfg = _fim_cfg(tiny_corpus, tmp_path / "nangrad", steps=6, every=1)
    with pytest.raises(NonFiniteLoss, match=r"non-finite gradient norm \(nan\) at step 3; stopped before its "
                                            r"optimizer step.*Last good checkpoint: .*step_00000002"):
        run(cfg, progress=False, loss_hook=nan_grads_at_step_3)
    cdir = tmp_path / "nangrad" / "checkpoints"
    assert ckpt.latest_checkpoint(cdir).name == "step_00000002" and not (cdir / "step_00000003").exists()
    assert _all_finite(cdir / "step_00000002")

    sess = Session(cfg, progress=False)
    before = {k: v.clone() for k, v in sess.model.state_dict().items() if isinstance(v, torch.Tensor)}
    with pytest.raises(NonFiniteLoss, match="gradient norm"):
        sess.train_step(0, sess.micro_batches(0), loss_hook=lambda s, l: _NaNGradient.apply(l))
    after = sess.model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    assert not sess.optimizer.state_dict()["state"]  # Adam never stepped


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (megatron's distributed optimizer)")
def test_distributed_optimizer_never_applies_a_nan_gradient(tiny_corpus, tmp_path):
    """megatron's own step() applies a NaN-norm update under bf16; ours measures the norm first."""
    cfg = _fim_cfg(tiny_corpus, tmp_path / "gpu")
    cfg = dataclasses.replace(cfg, parallel=dataclasses.replace(cfg.parallel, device="cuda", precision="bf16"),
                              optim=dataclasses.replace(cfg.optim, distributed_optimizer="on"))
    sess = Session(cfg, progress=False)
    assert sess.optimizer.kind == "megatron_distributed"
    loss, _, norm = sess.train_step(0, sess.micro_batches(0))
    assert math.isfinite(loss) and math.isfinite(norm) and norm > 0
    before = {k: v.clone() for k, v in sess.model.state_dict().items() if isinstance(v, torch.Tensor)}
    with pytest.raises(NonFiniteLoss, match=r"gradient norm \(nan\) at step 2"):
        sess.train_step(1, sess.micro_batches(1), loss_hook=lambda s, l: _NaNGradient.apply(l))
    after = sess.model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())


def test_loss_is_normalised_over_the_whole_step(tiny_corpus, tmp_path):
    """One micro-batch of 4 and two accumulated micro-batches of 2 give the same loss and gradient."""
    results = []
    for mb, accum in ((4, 1), (2, 2)):
        sess = Session(_fim_cfg(tiny_corpus, tmp_path / f"n{mb}", mb=mb, accum=accum), progress=False)
        loss, parts, norm = sess.train_step(0, sess.micro_batches(0))
        results.append((loss, norm, {n: p.grad.clone() for n, p in sess.model.named_parameters()}))
    (l1, n1, g1), (l2, n2, g2) = results
    assert l1 == pytest.approx(l2, rel=1e-5) and n1 == pytest.approx(n2, rel=1e-4)
    for k in g1:
        torch.testing.assert_close(g1[k], g2[k], rtol=1e-4, atol=1e-7)


def test_bad_configs_fail_naming_the_field(tmp_path, capsys):
    path = CONFIGS / "gpt_fim_tiny.yaml"
    with pytest.raises(ConfigError, match=r"optim\.lrr: unknown key"):
        load_train_config(path, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match=r"schedule\.train_steps: expected an int"):
        load_train_config(path, ["schedule.train_steps=lots"])
    with pytest.raises(ConfigError, match=r"model: ModelConfig\.hidden_size"):
        load_train_config(path, ["model.hidden_size=66"])
    with pytest.raises(ConfigError, match=r"objective\.loss_weights\.sbo: the objective \(fim\) has no such loss"):
        load_train_config(path, ["objective.loss_weights.sbo=1"])
    # objective configs are checked at load time, before any corpus is prepared
    with pytest.raises(ConfigError, match=r"objective\.config: FIMConfig\.fim_rate must lie in \[0, 1\]"):
        load_train_config(path, ["objective.config.fim_rate=1.5"])
    with pytest.raises(ConfigError, match=r"objective\.config\.fim_rat: unknown key"):
        load_train_config(path, ["objective.config.fim_rat=0.5"])
    with pytest.raises(ConfigError, match=r"objective\.name: unknown objective 'fimm'"):
        load_train_config(path, ["objective.name=fimm"])
    # what the objective's declaration decides may be restated, never contradicted
    assert load_train_config(path, ["model.kind=decoder"]).model.kind == "decoder"
    with pytest.raises(ConfigError, match=r"model\.kind: 'encoder' contradicts the objective \(fim: a decoder\)"):
        load_train_config(path, ["model.kind=encoder"])
    with pytest.raises(ConfigError, match=r"model\.heads: .* contradicts the objective"):
        load_train_config(path, ["model.heads={lm: token, sop: sequence}"])
    with pytest.raises(ConfigError, match=r"data\.sampler: unknown key"):
        load_train_config(path, ["data.sampler=segment"])
    bad = tmp_path / "bad.yaml"
    bad.write_text(path.read_text().replace("schedule:", "schedul:"))
    assert main([str(bad)]) == 2
    assert "schedul: unknown key" in capsys.readouterr().err


def test_overrides_are_typed(tmp_path):
    cfg = load_train_config(CONFIGS / "gpt_fim_tiny.yaml",
                            ["optim.lr=1e-3", "schedule.train_steps=70", "logging.tensorboard=false",
                             "objective.config.fim_rate=1", "model.num_query_groups=2", "name=123"])
    assert cfg.optim.lr == 1e-3 and cfg.schedule.train_steps == 70 and cfg.logging.tensorboard is False
    assert cfg.objective_spec.config.fim_rate == 1.0 and cfg.model.num_query_groups == 2
    assert cfg.name == "123"


def test_prefetching_stream_reads_the_same_batches(tiny_corpus, tmp_path):
    cfg = _fim_cfg(tiny_corpus, tmp_path / "s", steps=3, mb=2, accum=2)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, loader_workers=1))
    sess = Session(cfg, progress=False)
    stream = list(sess.batch_stream(1))
    direct = sess.micro_batches(1) + sess.micro_batches(2)
    assert len(stream) == len(direct) == 4
    for a, b in zip(stream, direct):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_an_empty_corpus_file_fails_naming_the_file_and_reason(tmp_path, capsys):
    empty = tmp_path / "docs.jsonl"
    empty.write_text("")
    code = main([str(CONFIGS / "gpt_fim_tiny.yaml"), f"data.corpus.source={empty}",
                 f"data.cache_dir={tmp_path / 'cache'}", f"logging.run_dir={tmp_path / 'run'}"])
    assert code == 2
    assert f"corpus error: corpus file {empty} is empty: 0 bytes, no records to read" in capsys.readouterr().err


def test_the_held_out_standard_error_is_the_ratio_estimators_over_batches():
    import math

    import numpy as np

    from ptobj.recipes.engine.heldout import _ratio_se
    from ptobj.recipes.evaluation.infill import ratio_se

    rng = np.random.default_rng(0)
    c = rng.integers(50, 200, 12).astype(float)
    x = c * (3.0 + rng.normal(0, 0.2, 12))
    r = x.sum() / c.sum()
    expect = math.sqrt(((x - r * c) ** 2).sum() / (12 * 11)) / c.mean()
    assert _ratio_se(x.sum(), c.sum(), (x * x).sum(), (x * c).sum(), (c * c).sum(), 12) == pytest.approx(expect)
    assert ratio_se(list(x), list(c)) == pytest.approx((r, expect))
    assert math.isnan(_ratio_se(x[0], c[0], x[0] ** 2, x[0] * c[0], c[0] ** 2, 1))
