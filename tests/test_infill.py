"""The infilling evaluation: tasks from held-out files, the decoding rule, scoring, and our
model vs its Hugging Face export through ``transformers`` generate."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ptobj.objectives.fim import infill_prompt
from ptobj.objectives.sample import SpecialTokens
from ptobj.objectives.streams import RowStreams
from ptobj.recipes.evaluation.infill import Chooser, Completion, InfillResult, Outcome, prompt_ids, score
from ptobj.recipes.evaluation.infill_tasks import InfillTask, build_tasks

ROOT = Path(__file__).resolve().parents[1]
SP = SpecialTokens()
CODE = [
    "import os\n\n\ndef f(a, b):\n    c = a + b\n    return c * 2\n\n\nclass K:\n    x = 1\n    y = 2\n",
    "def g(xs):\n    total = 0\n    for x in xs:\n        total += x\n    return total\n",
    "print('not closed\n",  # does not parse
]


class Chars:
    """One id per character (ids from 16), lossless."""

    special = SP

    def encode(self, text):
        return [16 + ord(c) % 200 for c in text]

    def decode(self, ids):
        return "".join(chr(i - 16) for i in ids)


def test_tasks_are_deterministic_and_cut_the_documents():
    a = build_tasks(CODE, Chars(), per_kind=6, max_middle_tokens=40, seed=3)
    b = build_tasks(CODE, Chars(), per_kind=6, max_middle_tokens=40, seed=3)
    assert a == b and len(a) == 18
    assert build_tasks(CODE, Chars(), per_kind=6, max_middle_tokens=40, seed=4) != a
    for t in a:
        text = CODE[t.document]
        assert t.prefix + t.middle + t.suffix == text and text[t.start:t.end] == t.middle
        assert t.middle.strip() and len(t.middle) <= 40
        assert t.parses == (t.document != 2)
        if t.kind == "single_line":
            assert t.middle.count("\n") <= 1 and (t.middle.endswith("\n") or t.end == len(text))
            assert t.start == 0 or text[t.start - 1] == "\n"
        if t.kind == "multi_line":
            assert 2 <= t.middle.count("\n") + (not t.middle.endswith("\n")) <= 4


def test_prompt_layouts_follow_training():
    tok = Chars()
    t = InfillTask("random_span", 0, 2, 4, "ab", "cd", "ef", True)
    psm = prompt_ids(t, "psm", tok, 100, 2).tolist()
    assert psm == [SP.fim_prefix, *tok.encode("ab"), SP.fim_suffix, *tok.encode("ef"), SP.fim_middle]
    spm = prompt_ids(t, "spm", tok, 100, 2).tolist()
    assert spm == [SP.fim_prefix, SP.fim_suffix, *tok.encode("ef"), SP.fim_middle, *tok.encode("ab")]
    assert prompt_ids(t, "spm", tok, 100, 1).tolist() == \
        [SP.fim_suffix, *tok.encode("ef"), SP.fim_prefix, *tok.encode("ab"), SP.fim_middle]
    long = InfillTask("random_span", 0, 50, 51, "p" * 50, "m", "s" * 50, True)
    cut = prompt_ids(long, "psm", tok, 20, 2)
    assert len(cut) == 23 and cut.tolist().count(tok.encode("p")[0]) == 10  # half the budget each side
    with pytest.raises(ValueError, match="mode"):
        infill_prompt(np.zeros(1), np.zeros(1), "mps", SP)


def test_chooser_takes_the_argmax_or_samples_the_tempered_softmax():
    logits = torch.tensor([0.0, 1.0, 2.0, 3.0, 9.0])  # id 4 is past the allowed vocabulary
    R = 20000
    greedy = np.zeros(R, bool)
    greedy[0] = True
    keys = RowStreams.for_rows(7, 0, np.arange(R), purpose="infill.sample")
    ch = Chooser(greedy, keys, temperature=0.5, allowed=4)
    picks = ch(0, logits.expand(R, 5))
    assert picks[0] == 3 and picks.max() < 4
    p = torch.softmax(logits[:4] / 0.5, 0).numpy()
    freq = np.bincount(picks[1:], minlength=4) / (R - 1)
    assert np.all(np.abs(freq - p) < 4 * np.sqrt(p * (1 - p) / R) + 1e-3), (freq, p)
    again = Chooser(greedy, keys, temperature=0.5, allowed=4)(0, logits.expand(R, 5))
    assert np.array_equal(picks, again)                       # a pure function of (seed, task, sample, step)
    assert not np.array_equal(picks, Chooser(greedy, keys, 0.5, 4)(1, logits.expand(R, 5)))
    assert np.isclose(ch.logprobs[0][0], float(torch.log_softmax(logits[:4], 0)[3]))


def _c(text, eot, lp):
    return Completion(list(Chars().encode(text)), SP.eot if eot else None, lp, eot, text)


def test_scoring_ranks_eot_samples_and_counts_misses():
    task = InfillTask("single_line", 0, 4, 9, "def ", "f():\n", "    pass\n", True)
    right, wrong = "f():\n", "f(:\n"
    outs = [Outcome(task, "psm", _c(wrong, True, -1.0), [_c(wrong, False, -0.1), _c(right, True, -0.5)], (2.0, 4)),
            Outcome(task, "psm", _c(right, False, -1.0), [_c(right, False, -0.2), _c(wrong, False, -0.3)], (6.0, 4))]
    m = score(outs)
    k = "infill/single_line/psm"
    assert m[f"{k}/greedy_exact"] == 0.5                      # on the text, whatever ended it
    assert m[f"{k}/best_of_n_exact"] == 0.5                   # highest mean log-prob, EOT or not
    assert m[f"{k}/eot_best_of_n_exact"] == 0.5               # first: the EOT sample; second: none -> miss
    assert m[f"{k}/eot_best_of_n_parse"] == 0.5
    assert m[f"{k}/best_of_n_parse"] == 0.5                   # "def f(:" does not parse
    assert m[f"{k}/eot_share"] == 0.25 and m[f"{k}/greedy_eot"] == 0.5
    assert m[f"{k}/middle_loss"] == 1.0 and m[f"{k}/tasks"] == 2
    assert m["infill/all/psm/tasks"] == 2
    ex = InfillResult(outs, m).example()
    assert ex is outs[0]                                      # exact, and ended by EOT


def test_undecoded_tasks_count_in_the_loss_only():
    task = InfillTask("single_line", 0, 4, 9, "def ", "f():\n", "    pass\n", True)
    decoded = Outcome(task, "psm", _c("f():\n", True, -1.0), [_c("f():\n", True, -0.5)], (2.0, 4))
    scored = Outcome(task, "psm", None, [], (6.0, 2))                  # beyond decode_per_kind
    m = score([decoded, scored])
    k = "infill/single_line/psm"
    assert m[f"{k}/tasks"] == 2 and m[f"{k}/decoded"] == 1
    assert m[f"{k}/greedy_exact"] == 1.0 and m[f"{k}/greedy_exact_se"] == 0.0    # over the decoded task
    assert m[f"{k}/middle_loss"] == pytest.approx(8.0 / 6)                     # over both
    assert m[f"{k}/eot_share"] == 1.0
    assert InfillResult([scored, decoded], m).example() is decoded


@pytest.fixture(scope="module")
def fim_run(tiny_corpus, tmp_path_factory):
    from ptobj.recipes.train import run
    from ptobj.recipes.engine.train_config import load_train_config
    from test_recipes_train import CONFIGS, shrink

    run_dir = tmp_path_factory.mktemp("infill") / "run"
    cfg = shrink(load_train_config(CONFIGS / "gpt_fim_tiny.yaml"), tiny_corpus, run_dir, steps=8)
    cfg = dataclasses.replace(cfg, eval=dataclasses.replace(
        cfg.eval, infill=dataclasses.replace(cfg.eval.infill, tasks_per_kind=3, decode_per_kind=2, max_new_tokens=12)))
    result = run(cfg, progress=False)
    return run_dir, result


def test_training_ends_with_the_declared_infilling_evaluation(fim_run):
    run_dir, result = fim_run
    metrics = json.loads((run_dir / "final_metrics.json").read_text())
    assert metrics["infill/all/psm/tasks"] >= 4 and "infill/all/spm/eot_best_of_n_exact" in metrics
    assert metrics["infill/all/psm/tasks"] == sum(metrics[f"infill/{k}/psm/tasks"]
                                                  for k in ("single_line", "multi_line", "random_span")
                                                  if f"infill/{k}/psm/tasks" in metrics)
    assert metrics["infill/all/psm/middle_loss"] > 0
    assert metrics["infill/all/psm/decoded"] < metrics["infill/all/psm/tasks"]      # decode_per_kind=2 of 3
    assert [r.name for r in result.reports] == ["infill"] and "EOT best-n" in result.reports[0].text
    assert result.loss_plot == run_dir / "loss.png" and result.loss_plot.stat().st_size > 1000


def test_our_model_and_its_export_agree(fim_run, tmp_path):
    from ptobj.recipes.export import export_run
    from ptobj.recipes.experiments.sweep import run_env

    run_dir, _ = fim_run
    hf = tmp_path / "hf"
    export_run(run_dir, hf)
    out = tmp_path / "agree.json"
    done = subprocess.run([sys.executable, "-m", "ptobj.recipes.evaluation.infill", str(run_dir), "--hf", str(hf), "--out", str(out),
                           "--set", "tasks_per_kind=3", "--set", "decode_per_kind=0", "--set", "samples=3",
                           "--set", "max_new_tokens=12"],
                          cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["tasks"] >= 6 and report["agreement"]["completions"] == report["tasks"] * 2 * 4
    assert report["agreement"]["identical_completions"] == 1.0, done.stdout
    assert report["agreement"]["max_metric_diff"] < 1e-4
    assert report["ours"]["infill/all/psm/tasks"] == report["tasks"]


def test_the_hf_path_is_transformers_generate(fim_run, tmp_path):
    """Greedy through our logits processor = transformers' own greedy generate."""
    import transformers

    from ptobj.recipes.export import export_run
    from ptobj.recipes.evaluation.infill import HFModel, load_hf

    run_dir, _ = fim_run
    hf_dir = tmp_path / "hf"
    export_run(run_dir, hf_dir)
    model, tok, allowed = load_hf(hf_dir)
    prompts = [infill_prompt(np.array(tok.encode("def f(x):\n    return")), np.array(tok.encode("\n\n")), "psm",
                             tok.special), infill_prompt(np.array(tok.encode("import")), np.array([], np.int32),
                                                         "psm", tok.special)]
    stops = set(range(16))
    ch = Chooser(np.ones(2, bool), RowStreams.for_rows(0, 0, [0, 1]), 1.0, allowed)
    HFModel(model.model, tok.special.pad).generate(prompts, ch, 6, stops)
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    for i, p in enumerate(prompts):
        ref = hf.generate(torch.as_tensor(p[None].astype(np.int64)), do_sample=False, max_new_tokens=6,
                          eos_token_id=sorted(stops), pad_token_id=0,
                          suppress_tokens=list(range(allowed, hf.config.vocab_size)))[0, len(p):].tolist()
        ours = ch.tokens[i][: len(ref)]
        assert ours == ref
