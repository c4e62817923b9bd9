"""Online RL (``python -m ptobj.recipes.posttrain.rl``: TRL's RLOO with the ptx term) and DPO on exported tiny models.

The end-to-end path: a tiny causal-LM run is pretrained, fine-tuned on conversations (the SFT
recipe) and exported (``ptobj.recipes.export``: a chat ``LlamaForCausalLM``); a toy preference ("more of
one token is better") is written as (prompt, chosen, rejected) pairs cut from the policy's own
samples; a reward model is trained on the pairs; RLOO with the ptx term (batches from the
pretraining run's own data pipeline) raises the reward model's score of the policy's samples in a
few steps, and the ptx loss is logged and finite. DPO on the same pairs is the offline
alternative: it raises the policy's log-probability margin of chosen over rejected.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("trl", reason="the [rlhf] extra (trl) is not installed")

from ptobj.recipes.export import export_run  # noqa: E402
from ptobj.recipes.posttrain.rl import (ArgError, PtxBatches, RewardModelScore, load_policy, prompt_ids, ptx_config,  # noqa: E402
                        ptx_loss, train)
from ptobj.recipes.train import run  # noqa: E402
from ptobj.recipes.engine.train_config import load_train_config  # noqa: E402
from test_recipes_train import CONFIGS, shrink  # noqa: E402

PROMPTS = ["Say hello to Ann.", "Say hello to Zed.", "What is the opposite of hot?", "What is the opposite of old?",
           "Name a colour.", "Count to three.", "Say goodbye to Eve.", "What is two plus two?"]
SAMPLES = 8  # completions per prompt when measuring the reward
NEW = 16  # new tokens per completion


def chats(prompts):
    return [[{"role": "user", "content": p}] for p in prompts]


@pytest.fixture(scope="module")
def pretrained(tiny_corpus, tmp_path_factory):
    """(run dir, exported LlamaForCausalLM folder) of a tiny causal-LM run, 30 steps."""
    root = tmp_path_factory.mktemp("rl")
    cfg = load_train_config(CONFIGS / "causal_lm_tiny.yaml", ["optim.lr=5e-3", "optim.min_lr=5e-3"])
    run(shrink(cfg, tiny_corpus, root / "run", steps=30, every=30, mb=8), progress=False)
    export_run(root / "run", root / "policy")
    return root / "run", root / "policy"


@pytest.fixture(scope="module")
def sft(pretrained, tmp_path_factory):
    """(run dir, export) of the SFT recipe from the pretrained run (20 steps): a chat LlamaForCausalLM."""
    root = tmp_path_factory.mktemp("sft")
    cfg = load_train_config(CONFIGS / "sft_tiny.yaml", [
        f"init_from={pretrained[0]}", f"logging.run_dir={root / 'run'}", "logging.progress_bar=false",
        "schedule.train_steps=20", "schedule.warmup_steps=2", "eval.batches=1", "logging.tensorboard=false"])
    run(cfg, progress=False)
    export_run(root / "run", root / "policy")
    return root / "run", root / "policy"


@pytest.fixture(scope="module")
def policy(sft):
    return sft[1]


@torch.no_grad()
def sample(model, tok, prompts, n: int, seed: int) -> list[tuple[str, list[int]]]:
    """``n`` sampled completions (token ids, up to and with the stop token) per prompt, seeded."""
    torch.manual_seed(seed)
    stop = model.generation_config.eos_token_id
    out = []
    for p, ids in zip(prompts, prompt_ids(tok, chats(prompts))):
        gen = model.generate(torch.tensor([ids]), do_sample=True, max_new_tokens=NEW, num_return_sequences=n,
                             pad_token_id=tok.pad_token_id, top_k=0)
        for row in gen[:, len(ids):].tolist():
            cut = next((i + 1 for i, t in enumerate(row) if t in stop), len(row))
            out.append((p, row[:cut]))
    return out


@pytest.fixture(scope="module")
def preference(policy):
    """The toy preference: responses with more of the policy's most sampled regular token are
    better. Pairs (prompt, chosen, rejected) from the policy's own samples: chosen has a third of
    its tokens set to the target, rejected has every target replaced by another sampled token."""
    model, tok = load_policy(policy)
    drawn = sample(model.eval(), tok, PROMPTS, 8, seed=1)
    counts = np.bincount([t for _, c in drawn for t in c], minlength=len(tok))
    counts[:16] = 0  # reserved ids (pad, EOT, the chat markers, ...)
    target = int(counts.argmax())
    other = int(np.argsort(counts)[-2])
    rng = np.random.default_rng(0)
    pairs = []
    for prompt, c in drawn:
        body = np.array([t for t in c if t >= 16])
        if len(body) < 4:
            continue
        chosen = body.copy()
        chosen[rng.random(len(body)) < 1 / 3] = target
        rejected = np.where(body == target, other, body)
        pairs.append({"prompt": prompt, "chosen": tok.decode(chosen.tolist()), "rejected": tok.decode(rejected.tolist())})
    assert len(pairs) >= 32, len(pairs)
    return {"target": target, "pairs": pairs}


def response_ids(tok, pairs, key: str) -> list[list[int]]:
    """Prompt (chat template, assistant turn opened) + response + the turn's end marker."""
    prompts = prompt_ids(tok, chats([p["prompt"] for p in pairs]))
    return [list(p) + tok(r[key], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            for p, r in zip(prompts, pairs)]


@pytest.fixture(scope="module")
def reward(sft, preference, tmp_path_factory):
    """The reward-model recipe (rm_tiny: scalar head at <|end|>, InstructGPT's pairwise loss) from
    the SFT run on the toy pairs, 60 steps, exported as LlamaForSequenceClassification."""
    root = tmp_path_factory.mktemp("rm")
    pairs = root / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(p) + "\n" for p in preference["pairs"]))
    cfg = load_train_config(CONFIGS / "rm_tiny.yaml", [
        f"init_from={sft[0]}", f"data.records.source={pairs}", f"logging.run_dir={root / 'run'}",
        "logging.progress_bar=false", "logging.tensorboard=false", "schedule.train_steps=60",
        "schedule.warmup_steps=2", "optim.lr=3e-3", "optim.min_lr=3e-3", "eval.batches=1"])
    run(cfg, progress=False)
    export_run(root / "run", root / "rm")
    return root / "rm"


def measured_reward(model, tok, score: RewardModelScore, seed: int = 7):
    """(mean reward-model score, the samples) of SAMPLES seeded completions per prompt."""
    drawn = sample(model.eval(), tok, PROMPTS, SAMPLES, seed=seed)
    scores = score(chats([p for p, _ in drawn]), None, [c for _, c in drawn])
    return float(np.mean(scores)), drawn


def test_reward_model_scores_at_eot_and_prefers_the_target_token(reward, preference, policy):
    _, tok = load_policy(policy)
    score = RewardModelScore(reward, tok)
    pairs = preference["pairs"]
    prompts = chats([p["prompt"] for p in pairs])
    completions = {k: [tok(p[k], add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for p in pairs]
                   for k in ("chosen", "rejected")}
    # what it scores: the chat prompt and the completion closed by <|end|>, whatever stopped it
    seq = score.sequences(prompts[:1], completions["chosen"][:1])[0]
    assert seq == response_ids(tok, pairs[:1], "chosen")[0] and score.close == tok.eos_token_id
    eot = 1
    for tail in ([eot], [tok.eos_token_id, eot], []):
        assert score.sequences(prompts[:1], [completions["chosen"][0][:-1] + tail])[0] == seq
    chosen = np.array(score(prompts, None, completions["chosen"]))
    rejected = np.array(score(prompts, None, completions["rejected"]))
    assert (chosen > rejected).mean() > 0.9, (chosen > rejected).mean()


def target_fraction(drawn, target: int) -> float:
    tokens = [t for _, c in drawn for t in c]
    return sum(t == target for t in tokens) / len(tokens)


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return path


RL = dict(ptx_batch_size=2, steps=8, lr=3e-3, prompts_per_step=4, generations=4, max_completion_length=NEW,
          seed=0, progress=False)


def heldout_lm_loss(model, ptx: PtxBatches) -> float:
    """The pretraining LM loss on ptx batches far from those RL read."""
    with torch.no_grad():
        return float(np.mean([ptx_loss(model.eval(), ptx.batch(k)).item() for k in range(1000, 1004)]))


def test_rloo_with_ptx_raises_the_reward_and_logs_the_ptx_loss(pretrained, policy, preference, reward, prompts_file,
                                                              tmp_path, capsys):
    """`python -m ptobj.recipes.posttrain.rl` end to end: the reward model's score of seeded samples rises, the
    target token becomes more frequent, the ptx loss is logged every step and finite, and the
    ptx term keeps the pretraining LM loss lower than the same run without it."""
    from transformers import AutoModelForCausalLM

    from ptobj.recipes.posttrain.rl import main

    run_dir = pretrained[0]
    model, tok = load_policy(policy)
    score = RewardModelScore(reward, tok)
    before, drawn_before = measured_reward(model, tok, score)
    ptx, _ = PtxBatches.from_config(ptx_config(run_dir), 4, progress=False)
    lm_before = heldout_lm_loss(model, ptx)

    out = tmp_path / "rl"
    argv = ["--policy", str(policy), "--reward", str(reward), "--prompts", str(prompts_file), "--out", str(out),
            "--ptx-data", str(run_dir), "--ptx-coef", "0.5", "--ptx-batch-size", "2", "--steps", "8",
            "--lr", "3e-3", "--prompts-per-step", "4", "--generations", "4", "--max-completion-length", str(NEW)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    print(" ".join(["python -m ptobj.recipes.posttrain.rl", *argv]))
    print("\n".join(line for line in printed.splitlines() if line.startswith(("{'loss'", "[rl]"))))
    tuned = AutoModelForCausalLM.from_pretrained(out / "policy", dtype=torch.float32)
    after, drawn_after = measured_reward(tuned, tok, score)
    target = preference["target"]
    frac_before, frac_after = target_fraction(drawn_before, target), target_fraction(drawn_after, target)
    logs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    ptx_logged = [h["ptx_loss"] for h in logs if "ptx_loss" in h]

    no_ptx = train(policy, reward, prompts_file, tmp_path / "no_ptx", ptx_coef=0.0, **RL)
    assert not any("ptx_loss" in h for h in no_ptx.state.log_history)
    lm_with, lm_without = heldout_lm_loss(tuned, ptx), heldout_lm_loss(no_ptx.model, ptx)
    print(f"reward model score of {len(drawn_before)} seeded samples: before {before:.3f}, after {after:.3f}; "
          f"target token fraction {frac_before:.3f} -> {frac_after:.3f}")
    print("ptx_loss by step:", [round(x, 3) for x in ptx_logged])
    print(f"held-out pretraining LM loss: before RL {lm_before:.3f}, after RL with ptx {lm_with:.3f}, "
          f"without ptx {lm_without:.3f}")
    assert len(ptx_logged) == 8 and all(math.isfinite(x) and 0 < x < 20 for x in ptx_logged)
    assert after > before + 1.0, (before, after)
    assert frac_after > frac_before + 0.05, (frac_before, frac_after)
    assert lm_with < lm_without, (lm_with, lm_without)


def test_ptx_batches_give_the_loss_our_model_gives(pretrained):
    """A ptx micro-batch (packed documents, per-document attention) through the exported
    LlamaForCausalLM gives the LM loss our model gives on the same batch."""
    from test_recipes_export import ours_from_checkpoint

    from ptobj.recipes.engine import checkpoint as ckpt

    run_dir, policy = pretrained
    model, _ = load_policy(policy)
    ptx, _ = PtxBatches.from_config(ptx_config(run_dir), 4, progress=False)
    # the batch whose rows see most across document boundaries (positions after a row's first document)
    k = max(range(50), key=lambda k: float((ptx.batch(k)["kv_start"] > 0).float().mean()))
    batch = ptx.batch(k)
    ours = ours_from_checkpoint(run_dir, ckpt.latest_checkpoint(run_dir / "checkpoints"))
    sample = {key: torch.as_tensor(v) for key, v in ptx.dataset.read(ptx.positions(k)).items()}
    with torch.no_grad():
        sums = ours(sample)["lm"]
        theirs = ptx_loss(model.eval(), batch).item()
        # the same batch with its document boundaries dropped is another loss
        crossing = ptx_loss(model, dict(batch, kv_start=torch.zeros_like(batch["kv_start"]))).item()
    mine = (sums["loss_sum"] / sums["count"]).item()
    assert abs(theirs - mine) < 1e-5, (theirs, mine)
    assert abs(crossing - mine) > 1e-4, (crossing, mine)     # 10x the bound the two models agree to


def test_bad_arguments_are_named(pretrained, policy, reward, prompts_file, tmp_path, capsys):
    from ptobj.recipes.posttrain.rl import main

    run_dir = pretrained[0]
    with pytest.raises(ArgError, match="--ptx-data .*nowhere: not found"):
        ptx_config(tmp_path / "nowhere")
    with pytest.raises(ArgError, match="--ptx-data .*bert_mlm_tiny.yaml: objective .* trains an encoder"):
        ptx_config(CONFIGS / "bert_mlm_tiny.yaml")
    with pytest.raises(ArgError, match="--ptx-data: .*no_such_key"):
        ptx_config(run_dir, ["data.no_such_key=1"])
    base = ["--policy", str(policy), "--reward", str(reward), "--prompts", str(prompts_file), "--steps", "1"]
    cases = [
        (["--policy", str(tmp_path), "--reward", str(reward), "--prompts", str(prompts_file)], "--policy .*: no config.json"),
        (["--policy", str(policy), "--reward", str(policy), "--prompts", str(prompts_file)], "--reward .*the reward model is a sequence classifier"),
        (["--policy", str(reward), "--reward", str(reward), "--prompts", str(prompts_file)], "--policy .*the policy is a causal LM"),
        ([*base[:4], "--prompts", str(tmp_path / "p.jsonl")], "--prompts .*p.jsonl: not found"),
        ([*base, "--prompt-column", "question"], "--prompts .*no 'question' column"),
        ([*base, "--generations", "1"], "--generations must be >= 2"),
        ([*base, "--ptx-coef", "-1"], "--ptx-coef must be"),
        ([*base, "--save-every", "-1"], "--save-every must be >= 0"),
    ]
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    cases.append(([*base, "--out", str(tmp_path / "taken")], "--out .*taken: exists"))
    for argv, message in cases:
        if "--out" not in argv:
            argv = [*argv, "--out", str(tmp_path / "out")]
        if "--steps" not in argv:  # a missed error costs one step
            argv = [*argv, "--steps", "1"]
        assert main(argv) == 2, (message, argv)
        err = capsys.readouterr().err
        assert re.search(message, err), (message, err)
    assert not (tmp_path / "out").exists()

    from types import SimpleNamespace

    from ptobj.recipes.posttrain.rl import check_same_tokenizer

    _, tok = load_policy(policy)
    with pytest.raises(ArgError, match="--ptx-data x: its tokenizer and the policy's disagree"):
        check_same_tokenizer(tok, SimpleNamespace(encode=lambda text: [20, 21]), what="--ptx-data x")

    from ptobj.recipes.posttrain.dpo import main as dpo

    (tmp_path / "pairs.jsonl").write_text(json.dumps({"prompt": "def ", "chosen": "x"}) + "\n")
    assert dpo(["--policy", str(policy), "--pairs", str(tmp_path / "pairs.jsonl"), "--out", str(tmp_path / "out"),
                "--steps", "1"]) == 2
    assert "--pairs " in (err := capsys.readouterr().err) and "no 'rejected' column" in err, err


@torch.no_grad()
def response_logps(model, tok, pairs, key: str) -> np.ndarray:
    """log p(response, <|end|> | chat prompt) of each pair's ``key`` response, summed over its tokens."""
    out = []
    for prompt, seq in zip(prompt_ids(tok, chats([p["prompt"] for p in pairs])), response_ids(tok, pairs, key)):
        ids = torch.tensor([seq])
        logp = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
        picked = logp.gather(1, ids[0, 1:, None])[:, 0]
        out.append(float(picked[len(prompt) - 1:].sum()))
    return np.array(out)


def test_dpo_on_the_same_pairs_raises_the_margin_and_the_reward(policy, preference, reward, tmp_path, capsys):
    """`python -m ptobj.recipes.posttrain.dpo` on the reward model's pairs: the policy's log-probability margin of
    chosen over rejected rises, and so does the reward model's score of its samples."""
    from transformers import AutoModelForCausalLM

    from ptobj.recipes.posttrain.dpo import main

    pairs = preference["pairs"]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    model, tok = load_policy(policy)
    model.eval()
    score = RewardModelScore(reward, tok)
    margin_before = (response_logps(model, tok, pairs, "chosen") - response_logps(model, tok, pairs, "rejected")).mean()
    before, _ = measured_reward(model, tok, score)
    out = tmp_path / "dpo"
    argv = ["--policy", str(policy), "--pairs", str(path), "--out", str(out), "--steps", "8", "--lr", "3e-3",
            "--batch-size", "8"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    tuned = AutoModelForCausalLM.from_pretrained(out / "policy", dtype=torch.float32).eval()
    margin_after = (response_logps(tuned, tok, pairs, "chosen") - response_logps(tuned, tok, pairs, "rejected")).mean()
    after, _ = measured_reward(tuned, tok, score)
    print(" ".join(["python -m ptobj.recipes.posttrain.dpo", *argv]))
    print("\n".join(line for line in printed.splitlines() if line.startswith("[dpo]")))
    print(f"log p(chosen) - log p(rejected), mean over {len(pairs)} pairs: before {margin_before:.3f}, "
          f"after {margin_after:.3f}; reward model score of seeded samples: before {before:.3f}, after {after:.3f}")
    assert margin_after > margin_before + 5.0, (margin_before, margin_after)
    assert after > before + 1.0, (before, after)


def test_ranked_records_give_every_better_worse_pair(tmp_path):
    from ptobj.recipes.posttrain.dpo import load_pairs

    path = tmp_path / "ranked.jsonl"
    rows = [{"prompt": "a", "responses": ["best", "mid", "worst"]}, {"prompt": "b", "responses": ["yes", "no"]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = [(p["prompt"], p["chosen"], p["rejected"]) for p in load_pairs(path)]
    assert got == [("a", "best", "mid"), ("a", "best", "worst"), ("a", "mid", "worst"), ("b", "yes", "no")]
    path.write_text(json.dumps({"prompt": "a", "answer": "x"}) + "\n")
    with pytest.raises(ArgError, match=r"no 'chosen' column .*expected \(prompt, chosen, rejected\) or \(prompt, responses\)"):
        load_pairs(path)


def test_a_non_finite_ptx_loss_stops_the_step_before_it_is_applied(pretrained, policy, reward, prompts_file,
                                                                   tmp_path, monkeypatch):
    """A NaN ptx loss in step 2 raises before the backward pass: the weights stay those of step
    1, and the newest checkpoint stays step 1's (none is written after the bad step)."""
    import ptobj.recipes.posttrain.rl as rl
    from safetensors.torch import load_file

    model, _ = load_policy(policy)
    right, calls = rl.ptx_loss, []

    def nan_ptx_in_step_2(m, batch):
        calls.append(m)
        loss = right(m, batch)
        return loss * float("nan") if len(calls) == 2 else loss

    monkeypatch.setattr(rl, "ptx_loss", nan_ptx_in_step_2)
    monkeypatch.setattr(rl, "load_policy", lambda path: (model, load_policy(path)[1]))
    out = tmp_path / "out"
    with pytest.raises(FloatingPointError, match=r"step 1: non-finite loss \(RLOO .*, ptx nan on ptx batch 1\)"):
        train(policy, reward, prompts_file, out, ptx_data=pretrained[0], ptx_coef=0.5, save_every=1,
              **dict(RL, steps=3))
    assert len(calls) == 2
    assert sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*")) == ["checkpoint-1"]
    saved = load_file(out / "checkpoints" / "checkpoint-1" / "model.safetensors")
    after = model.state_dict()
    assert saved.keys() <= after.keys() and all(torch.equal(saved[k], after[k]) for k in saved)  # nothing applied
    initial, _ = load_policy(policy)
    assert any(not torch.equal(v, after[k]) for k, v in initial.state_dict().items())  # step 1 was


class Crash(Exception):
    """The stand-in for a killed process."""


def crashed_then_resumed(run, out: Path, trainer_cls, crash_in_step: int, monkeypatch):
    """``run(out)`` crashing at the start of step ``crash_in_step`` (checkpoints written up to then),
    then ``run(out)`` again, which resumes; returns the resumed trainer."""
    right = trainer_cls.training_step

    def crash(self, *args, **kwargs):
        if self.state.global_step == crash_in_step - 1:
            raise Crash
        return right(self, *args, **kwargs)

    monkeypatch.setattr(trainer_cls, "training_step", crash)
    with pytest.raises(Crash):
        run(out)
    assert not (out / "policy").exists()
    monkeypatch.setattr(trainer_cls, "training_step", right)
    return run(out)


def logged(out: Path, keys) -> list[tuple]:
    """(step, *keys) of each step's line in ``out/log.jsonl``."""
    lines = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    return [(h["step"], *(h[k] for k in keys)) for h in lines if keys[0] in h]


def same_weights(a: Path, b: Path) -> bool:
    from safetensors.torch import load_file

    a, b = load_file(a / "policy" / "model.safetensors"), load_file(b / "policy" / "model.safetensors")
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_resumed_run_continues_the_uninterrupted_one(pretrained, policy, reward, prompts_file, tmp_path, monkeypatch):
    """RLOO with ptx: a run that crashes after its step-3 checkpoint and is run again with the same
    command ends as the uninterrupted run: the same ptx batches at the same steps (the micro-step
    the Trainer restores drives them), the same logged losses and rewards, the same final weights,
    bit for bit. 6 steps of 4 of the 8 prompts: the resume is mid-epoch and the run goes on into
    the next epoch (whose prompt order TRL's own sampler would draw wrong after a resume)."""
    import ptobj.recipes.posttrain.rl as rl

    read = []
    right_batch = rl.PtxBatches.batch
    monkeypatch.setattr(rl.PtxBatches, "batch", lambda self, k, device="cpu": read.append(k) or right_batch(self, k, device))
    kw = dict(RL, steps=6, ptx_data=pretrained[0], ptx_coef=0.5, save_every=3)
    whole = train(policy, reward, prompts_file, tmp_path / "whole", **kw)
    read_whole, read[:] = list(read), []
    out = tmp_path / "resumed"
    resumed = crashed_then_resumed(lambda o: train(policy, reward, prompts_file, o, **kw), out, rl.RLOOPtxTrainer, 4,
                                   monkeypatch)
    assert sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]

    print("ptx batches read: uninterrupted", read_whole, "crashed then resumed", read)
    assert read_whole == list(range(6)) and read == [0, 1, 2, 3, 4, 5]
    assert resumed.state.global_step == whole.state.global_step == 6
    keys = ("ptx_loss", "loss", "reward", "kl")
    print("(step, ptx_loss, loss, reward, kl): uninterrupted", logged(tmp_path / "whole", keys))
    print("                                    resumed      ", logged(out, keys))
    assert [s for s, *_ in logged(out, keys)] == list(range(1, 7))
    assert logged(out, keys) == logged(tmp_path / "whole", keys)
    assert same_weights(tmp_path / "whole", out)

    # another run's settings are named; --no-resume refuses the folder
    with pytest.raises(ArgError, match=r"--out .*resumed: holds a run with other settings \(lr: 0.003 there, 0.001 now\)"):
        train(policy, reward, prompts_file, out, **dict(kw, lr=1e-3))
    with pytest.raises(ArgError, match="--out .*resumed: not empty and --no-resume given"):
        train(policy, reward, prompts_file, out, **dict(kw, resume=False))


def test_a_resumed_dpo_run_continues_the_uninterrupted_one(policy, preference, tmp_path, monkeypatch):
    from trl import DPOTrainer

    from ptobj.recipes.posttrain.dpo import train as dpo

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(p) + "\n" for p in preference["pairs"]))
    kw = dict(steps=4, lr=3e-3, batch_size=8, save_every=2, progress=False)
    dpo(policy, pairs, tmp_path / "whole", **kw)
    crashed_then_resumed(lambda o: dpo(policy, pairs, o, **kw), tmp_path / "resumed", DPOTrainer, 3, monkeypatch)
    keys = ("loss", "rewards/margins")
    print("(step, loss, rewards/margins): uninterrupted", logged(tmp_path / "whole", keys))
    print("                               resumed      ", logged(tmp_path / "resumed", keys))
    assert [s for s, *_ in logged(tmp_path / "resumed", keys)] == [1, 2, 3, 4]
    assert logged(tmp_path / "resumed", keys) == logged(tmp_path / "whole", keys)
    assert same_weights(tmp_path / "whole", tmp_path / "resumed")


RANKS_MAIN = '''"""ptobj.recipes.posttrain.rl's main, each process writing the ptx positions it reads to READ_LOG/rank<r>.jsonl."""
import json, os, sys

import ptobj.recipes.posttrain.rl as rl

right = rl.PtxBatches.batch


def batch(self, k, device="cpu"):
    with open(os.path.join(os.environ["READ_LOG"], f"rank{self.rank}.jsonl"), "a") as f:
        f.write(json.dumps({"k": int(k), "world": self.world_size, "positions": self.positions(k).tolist()}) + "\\n")
    return right(self, k, device)


rl.PtxBatches.batch = batch
sys.exit(rl.main(sys.argv[1:]))
'''


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_read_disjoint_ptx_positions(pretrained, policy, reward, prompts_file, tmp_path):
    """``torchrun --nproc_per_node 2`` of ``ptobj.recipes.posttrain.rl`` on CPU (gloo), 2 steps (``accelerate launch
    --cpu`` starts one process: its multi-CPU launch goes through mpirun). Rank r of 2 reads
    positions ``(k * 2 + r) * b + [0, b)`` of the ptx stream, so the two ranks' batches are
    disjoint and together cover the stream's first 2 * 2 * b positions; the run finishes and
    writes its log, checkpoint and policy."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    script = tmp_path / "ranks_main.py"
    script.write_text(RANKS_MAIN)
    out, reads = tmp_path / "rl2", tmp_path / "reads"
    reads.mkdir()
    argv = ["--policy", str(policy), "--reward", str(reward), "--prompts", str(prompts_file), "--out", str(out),
            "--ptx-data", str(pretrained[0]), "--ptx-batch-size", "2", "--steps", "2", "--prompts-per-step", "2",
            "--generations", "2", "--max-completion-length", "8"]
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())]
    env = dict(os.environ, READ_LOG=str(reads), OMP_NUM_THREADS="1", PYTHONPATH=str(root))
    done = subprocess.run([*launch, str(script), *argv], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    read = {r: [json.loads(x) for x in (reads / f"rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)}
    print({r: [(h["k"], h["positions"]) for h in hs] for r, hs in read.items()})
    for r, hs in read.items():
        assert [h["k"] for h in hs] == [0, 1] and all(h["world"] == 2 for h in hs)
        assert [h["positions"] for h in hs] == [[(k * 2 + r) * 2, (k * 2 + r) * 2 + 1] for k in (0, 1)]
    mine = [set(p for h in read[r] for p in h["positions"]) for r in (0, 1)]
    assert not mine[0] & mine[1] and mine[0] | mine[1] == set(range(8))
    logs = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [h["step"] for h in logs if "ptx_loss" in h] == [1, 2]  # rank 0 alone writes the log
    assert all(math.isfinite(h["ptx_loss"]) for h in logs if "ptx_loss" in h)
    assert (out / "checkpoints" / "checkpoint-2" / "trainer_state.json").is_file()
    assert (out / "policy" / "model.safetensors").is_file()
