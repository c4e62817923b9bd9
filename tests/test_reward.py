"""Reward model: InstructGPT's pairwise loss over K ranked responses per prompt (one element per
prompt), the score read at the end of each response, held-out pair accuracy, and the export as
LlamaForSequenceClassification scoring what we score."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ptobj.objectives.reward import RANK_FIELD, RewardConfig, RewardModel, render_ranked
from ptobj.objectives.sample import SpecialTokens

SP = SpecialTokens()
CONFIGS = Path(__file__).resolve().parents[1] / "ptobj" / "recipes" / "configs"


def char_encode(text: str) -> list[int]:
    return [SP.first_regular + ord(c) % 200 for c in text]


def neg_log_sigmoid(x: float) -> float:
    return math.log1p(math.exp(-x))


def sums(scores, rows, ranks):
    from ptobj.models.heads import ranking_sums

    return {k: float(v) for k, v in ranking_sums(torch.tensor(scores), torch.tensor(rows),
                                                 torch.tensor(ranks)).items()}


def test_two_responses_give_the_pair_loss():
    out = sums([1.0, -0.5], [0, 0], [0, 1])
    assert out["loss_sum"] == pytest.approx(neg_log_sigmoid(1.5), abs=1e-6)
    assert (out["count"], out["correct"], out["acc_count"]) == (1, 1, 1)
    wrong = sums([-0.5, 1.0], [0, 0], [0, 1])            # the worse response scored higher
    assert wrong["loss_sum"] == pytest.approx(neg_log_sigmoid(-1.5), abs=1e-6) and wrong["correct"] == 0


def test_four_responses_average_their_six_pairs():
    r = {0: 2.0, 1: 0.5, 2: 1.0, 3: -1.0}                 # rank -> reward
    pairs = [(a, b) for a in range(4) for b in range(a + 1, 4)]
    hand = sum(neg_log_sigmoid(r[a] - r[b]) for a, b in pairs) / 6
    order = [2, 0, 3, 1]                                  # positions in the row need not follow the ranks
    out = sums([r[k] for k in order], [0] * 4, order)
    assert out["loss_sum"] == pytest.approx(hand, abs=1e-6)
    assert (out["count"], out["correct"], out["acc_count"]) == (1, 5, 6)   # (1, 2) is the one misordered


def test_each_prompt_weighs_as_one_element():
    r4 = [2.0, 0.5, 1.0, -1.0]
    k4 = sum(neg_log_sigmoid(r4[a] - r4[b]) for a in range(4) for b in range(a + 1, 4)) / 6
    k2 = neg_log_sigmoid(0.3 - 0.7)
    out = sums([0.3, 0.7, *r4], [0, 0, 1, 1, 1, 1], [0, 1, 0, 1, 2, 3])
    assert out["loss_sum"] == pytest.approx(k2 + k4, abs=1e-6)     # not (k2 + 6 * k4) / 7
    assert out["count"] == 2 and out["acc_count"] == 7
    nine = sums(list(np.linspace(1, -1, 9)), [0] * 9, list(range(9)))
    assert nine["acc_count"] == 36 and nine["count"] == 1 and nine["correct"] == 36


def test_the_score_is_read_at_the_end_of_each_response():
    prompt = [{"role": "user", "content": "add"}]
    ids, rank = render_ranked(prompt, ["yes", "no", "ok"], char_encode, SP)
    at = np.flatnonzero(rank >= 0)
    assert rank[at].tolist() == [0, 1, 2]
    assert (ids[at] == SP.chat_end).all() and (ids[at + 1] == SP.eot).all()
    assert ids[at - 1].tolist() == [char_encode(r)[-1] for r in ("yes", "no", "ok")]   # each response's last piece
    t = RewardModel(RewardConfig(64), special=SP, vocab_size=300)
    enc = t.encode_record((prompt, ["yes", "no", "ok"]), char_encode)
    n = enc["tokens"].size
    out = t({"tokens": np.pad(enc["tokens"], (0, 65 - n)), "rank": np.pad(enc["rank"], (0, 65 - n),
                                                                         constant_values=-1)})
    pos = np.flatnonzero(out[RANK_FIELD] >= 0)
    assert pos.tolist() == at.tolist() and (out["tokens"][pos] == SP.chat_end).all()
    assert out["loss_mask"].sum() == 0
    with pytest.raises(ValueError, match="2 to 9 ranked responses, got 1"):
        render_ranked(prompt, ["only"], char_encode, SP)
    with pytest.raises(ValueError, match="2 to 9 ranked responses, got 10"):
        render_ranked(prompt, ["r"] * 10, char_encode, SP)


def test_the_model_scores_the_end_positions_and_counts_like_the_recipe():
    from ptobj.models.config import ModelConfig
    from ptobj.models.model import build_model
    from ptobj.models.parallel import init_parallel
    from ptobj.recipes.engine.losses import target_counts

    cfg = ModelConfig(kind="decoder", vocab_size=320, heads={"rm": "scalar"}, seq_length=64)
    model = build_model(cfg, init_parallel(tp=1, pp=1, backend="gloo")).eval()
    t = RewardModel(RewardConfig(64), special=SP, vocab_size=300)
    rows = []
    for k, responses in enumerate((["yes", "no"], ["a", "bb", "ccc", "dddd"])):
        enc = t.encode_record(([{"role": "user", "content": "q" * (k + 1)}], responses), char_encode)
        n = enc["tokens"].size
        rows.append({"tokens": np.pad(enc["tokens"], (0, 65 - n)),
                     "rank": np.pad(enc["rank"], (0, 65 - n), constant_values=-1)})
    from ptobj.objectives.sample import stack
    from ptobj.objectives.streams import RowStreams

    batch = {k: torch.from_numpy(np.ascontiguousarray(v))
             for k, v in t.batch(stack(rows), RowStreams.for_rows(0, 0, [0, 1])).items()}
    with torch.no_grad():
        out = model(batch)["rm"]
        scores = model.scalar_scores(batch)["rm"]
    ends = (batch["tokens"] == SP.chat_end) & (torch.roll(batch["tokens"], -1, 1) == SP.eot)
    r, c = torch.nonzero(ends, as_tuple=True)
    hand = sums(scores[r, c].tolist(), r.tolist(), batch[RANK_FIELD][r, c].tolist())
    assert float(out["loss_sum"]) == pytest.approx(hand["loss_sum"], abs=1e-6)
    assert float(out["count"]) == 2 == target_counts(batch, {"rm": "scalar"})["rm"]


# ----------------------------------------------------------------------------- a run and its export


@pytest.fixture(scope="module")
def rm_run(tiny_corpus, tmp_path_factory):
    """A tiny decoder run, then rm_tiny from it (init_from)."""
    from ptobj.recipes.train import run
    from ptobj.recipes.engine.train_config import load_train_config
    from test_recipes_train import shrink

    root = tmp_path_factory.mktemp("reward")
    base = shrink(load_train_config(CONFIGS / "causal_lm_tiny.yaml"), tiny_corpus, root / "base", steps=3)
    run(base, progress=False)
    cfg = load_train_config(CONFIGS / "rm_tiny.yaml", [
        f"init_from={root / 'base'}", f"logging.run_dir={root / 'rm'}", "logging.progress_bar=false",
        "schedule.train_steps=6", "schedule.warmup_steps=1", "eval.batches=2"])
    return run(cfg, progress=False), root


def test_reward_run_starts_from_a_decoder_and_reports_pair_accuracy(rm_run):
    result, root = rm_run
    losses = [result.losses[s] for s in sorted(result.losses)]
    assert len(losses) == 6 and all(np.isfinite(losses))
    assert 0.0 <= result.eval_metrics["heldout/rm_acc"] <= 1.0
    assert np.isfinite(result.eval_metrics["heldout/rm_loss"])


def test_export_scores_match_ours(rm_run, tmp_path):
    import transformers

    from ptobj.data_pipeline.tokenizer import SentencePieceTokenizer
    from ptobj.recipes.engine.runs import load_model
    from ptobj.recipes.export import export_run
    from ptobj.recipes.engine.resolve import resolve_model_config

    _, root = rm_run
    out = export_run(root / "rm", tmp_path / "hf")
    assert out.hf.architecture == "LlamaForSequenceClassification"
    assert out.diffs["scalar"] < 1e-4, out.diffs
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    assert hf.config.num_labels == 1 and hf.config.pad_token_id == SP.pad
    # a user's path: the chat template + the response -> the score, against ours at the end token
    tok = SentencePieceTokenizer.load(root / "rm" / "tokenizer.model")
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    prompt = [{"role": "user", "content": "Say hello to Ann."}]
    texts = ["Hello, Ann! Nice to meet you.", "No."]
    enc = hf_tok.apply_chat_template([[*prompt, {"role": "assistant", "content": t}] for t in texts],
                                     tokenize=True, padding=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        theirs = hf(**enc).logits[:, 0]
    from ptobj.recipes.engine.runs import load_run_config
    from ptobj.recipes.engine.distributed import init_distributed

    cfg = load_run_config(root / "rm")
    info = init_distributed("cpu", "auto", 1, 1, seed=0)
    model, _, _ = load_model(resolve_model_config(cfg, tok.vocab_size, torch.device("cpu")),
                             out.checkpoint, info, fits="test")
    ours = []
    for t in texts:
        ids, rank = render_ranked(prompt, [t, "x"], tok.encode, tok.special)
        end = int(np.flatnonzero(rank == 0)[0])
        seq = torch.from_numpy(ids[: end + 1].astype(np.int64))[None]
        s = seq.shape[1]
        batch = {"tokens": seq, "kv_start": torch.zeros(1, s, dtype=torch.int32),
                 "kv_end": torch.arange(1, s + 1, dtype=torch.int32)[None]}
        with torch.no_grad():
            ours.append(float(model.scalar_scores(batch)["rm"][0, -1]))
    assert torch.allclose(theirs, torch.tensor(ours), atol=1e-4), (theirs, ours)
