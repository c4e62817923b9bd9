"""Zero-shot scores on the task clusters an instruction mixture held out (FLAN's evaluation).

The held-out clusters' datasets (``data.records.mixture.held_out``; their evaluation
split) never reach training. Each of their records is an item, scored under every
template of the task as it is (or ``zero_shot.templates`` of them, drawn per item),
the prompt written as SFT writes it (:func:`ptobj.objectives.sft.render`: the
template's system and user turns, then ``<|assistant|>``):

* **classification**, FLAN's *rank classification*: each option, as the template's
  assistant turn with the option for ``{answer}``, closed by ``<|end|>``, is scored by
  its log-likelihood given the prompt (the sum over its tokens and the ``<|end|>``);
  the highest wins (the first on a tie). An item is right under a template when the
  winner is its answer.
* **generation**: greedy decoding from the prompt until ``<|end|>`` (any reserved id),
  or ``zero_shot.max_new_tokens``; right when the text equals one of the acceptable
  answers (as the template's assistant turn writes them) after normalising case,
  whitespace and the punctuation at the ends.

An item's score is its mean over its templates; a dataset's and a cluster's score is
the mean over their items (a cluster pools its datasets' items), with the standard
error over items (sample standard deviation / sqrt(items)). ``chance`` is the
expected accuracy of a uniform guess among the options. ``zero_shot.json`` keeps each
item's score (``item_scores``), so two models can be compared item by item.

At the end of a run whose records are such a mixture (``ptobj train flan_tiny``), the
scores go into ``final_metrics.json`` (``zero_shot/<cluster>/score``, ``.../se``, ...)
and ``zero_shot.json``. ``ptobj zeroshot RUN_DIR [--recipe RECIPE]`` scores any decoder
run (a pretrained one: before instruction tuning) on a recipe's held-out clusters;
``--hf HF_DIR`` scores a Hugging Face export the same way, through ``transformers``.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ptobj.data_pipeline.instructions import Dataset, Prompt, chance, zero_shot_prompts
from ptobj.data_pipeline.mixture import ZeroShotConfig
from ptobj.objectives.sft import render as chat_render
from ptobj.objectives.streams import RowStreams
from ptobj.recipes.engine.trainer import Report
from ptobj.recipes.evaluation.infill import Chooser, OurModel


# ----------------------------------------------------------------------------- prompts -> ids


def option_rows(prompt: Prompt, encode, special, seq_length: int) -> tuple[list[tuple[np.ndarray, int]], bool]:
    """(ids, first scored position) per candidate: the prompt, ``<|assistant|>``, the candidate and
    ``<|end|>``; the scored positions are the candidate's and the ``<|end|>`` (SFT's response
    tokens). A row longer than ``seq_length`` loses the start of its prompt (then the flag is set)."""
    out, cut_any = [], False
    for target in prompt.targets:
        ids, response = chat_render([*prompt.messages, {"role": "assistant", "content": target}], encode, special)
        ids, response = ids[:-1], response[:-1]          # the EOT closing a training record
        first = int(np.flatnonzero(response)[0])
        cut = max(0, len(ids) - seq_length)
        if cut >= first:
            raise ValueError(f"zero-shot {prompt.dataset} record {prompt.record} {prompt.template}: the answer "
                             f"{target!r} alone needs {len(ids) - first + 1} of the {seq_length} positions")
        out.append((ids[cut:], first - cut))
        cut_any |= cut > 0
    return out, cut_any


def generation_prompt(prompt: Prompt, encode, special, budget: int) -> tuple[np.ndarray, bool]:
    """The prompt's ids up to ``<|assistant|>`` (its last ``budget`` ids), and whether it was cut."""
    ids, response = chat_render([*prompt.messages, {"role": "assistant", "content": ""}], encode, special)
    ids = ids[: int(np.flatnonzero(response)[0])]
    return ids[-budget:], len(ids) > budget


@torch.no_grad()
def loglikelihoods(model, rows: Sequence[tuple[np.ndarray, int]], batch_size: int) -> np.ndarray:
    """Sum of log p(ids[j] | ids[:j]) over j >= start, for each (ids, start) row (float64)."""
    out = np.zeros(len(rows))
    order = sorted(range(len(rows)), key=lambda r: len(rows[r][0]))
    for b in range(0, len(order), batch_size):
        batch = order[b: b + batch_size]
        logits = model.logits([rows[r][0].tolist() for r in batch])
        for k, r in enumerate(batch):
            ids, start = rows[r]
            # the logits that predict ids[start:], in float64 (only these positions)
            logp = torch.log_softmax(logits[k, start - 1: len(ids) - 1].double(), dim=-1)
            target = torch.as_tensor(ids[start:], dtype=torch.long, device=logp.device)
            out[r] = float(logp.gather(1, target[:, None]).sum())
    return out


def normalize(text: str) -> str:
    """Exact-match normal form: NFKC, case-folded, whitespace runs as one space, no punctuation at the ends."""
    text = re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text).casefold()).strip()
    return text.strip(" .,;:!?\"'")


# ----------------------------------------------------------------------------- scoring


@dataclass
class Outcome:
    prompt: Prompt
    correct: float
    prediction: str
    loglikelihoods: list[float] = field(default_factory=list)   # classification: one per option


@dataclass
class ZeroShotResult:
    outcomes: list[Outcome]
    metrics: dict[str, float] = field(default_factory=dict)
    summary: dict = field(default_factory=dict)   # per cluster / dataset / template (zero_shot.json)
    truncated: int = 0                            # prompts that lost their start to the context

    def table(self) -> str:
        lines = ["zero-shot on the held-out clusters (never trained): rank classification of the options by "
                 "log-likelihood, exact match of greedy answers; each item under its templates, mean +- standard "
                 "error over items",
                 f"{'cluster':<12} {'dataset':<20} {'task':<14} {'items':>5} {'templ':>5} {'score':>7} {'+- se':>7} "
                 f"{'chance':>7}  most frequent answer"]
        for c, cs in self.summary["clusters"].items():
            for d in cs["datasets"]:
                ds = self.summary["datasets"][d]
                top, share = next(iter(ds["predictions"].items()), ("", 0.0))
                lines.append(f"{c:<12} {d:<20} {ds['task']:<14} {ds['items']:>5} {ds['templates']:>5} "
                             f"{ds['score']:>7.3f} {ds['se']:>7.3f} {ds['chance']:>7.3f}  {top[:24]!r} {share:.0%}")
            if len(cs["datasets"]) > 1:
                lines.append(f"{c:<12} {'(all)':<20} {'':<14} {cs['items']:>5} {'':>5} {cs['score']:>7.3f} "
                             f"{cs['se']:>7.3f} {cs['chance']:>7.3f}")
        if self.truncated:
            lines.append(f"{self.truncated} prompt(s) lost their start to the context (seq_length)")
        return "\n".join(lines)


def _mean_se(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray(values, np.float64)
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else math.nan


def summarize(outcomes: Sequence[Outcome]) -> tuple[dict, dict[str, float]]:
    """(per cluster / dataset / template summary, flat metrics) of scored prompts."""
    items: dict[tuple[str, int], list[float]] = {}
    meta: dict[str, dict] = {}
    templates: dict[str, dict[str, list[float]]] = {}
    for o in outcomes:
        p = o.prompt
        items.setdefault((p.dataset, p.record), []).append(o.correct)
        meta.setdefault(p.dataset, {"cluster": p.cluster, "task": p.task, "prompts": []})["prompts"].append(p)
        templates.setdefault(p.dataset, {}).setdefault(p.template, []).append(o.correct)
    per_item = {k: float(np.mean(v)) for k, v in items.items()}
    datasets, clusters, metrics = {}, {}, {}
    for d, m in meta.items():
        scores = [s for (dd, _), s in per_item.items() if dd == d]
        mean, se = _mean_se(scores)
        n_templates = max(len(v) for (dd, _), v in items.items() if dd == d)
        picks = Counter(o.prediction for o in outcomes if o.prompt.dataset == d)
        total = sum(picks.values())
        datasets[d] = {"cluster": m["cluster"], "task": m["task"], "items": len(scores), "templates": n_templates,
                       "score": mean, "se": se, "chance": chance(m["prompts"]),
                       "per_template": {t: float(np.mean(v)) for t, v in templates[d].items()},
                       "predictions": {k: v / total for k, v in picks.most_common(10)}}
        clusters.setdefault(m["cluster"], {"datasets": []})["datasets"].append(d)
    for c, cs in clusters.items():
        scores = [s for (d, _), s in per_item.items() if d in cs["datasets"]]
        prompts = [p for d in cs["datasets"] for p in meta[d]["prompts"]]
        mean, se = _mean_se(scores)
        cs.update({"items": len(scores), "score": mean, "se": se, "chance": chance(prompts)})
        for k in ("score", "se", "items", "chance"):
            metrics[f"zero_shot/{c}/{k}"] = float(cs[k])
        for d in cs["datasets"]:
            for k in ("score", "se", "items", "chance"):
                metrics[f"zero_shot/{c}/{d}/{k}"] = float(datasets[d][k])
    return {"clusters": clusters, "datasets": datasets}, metrics


def score_prompts(model, tok, prompts: Sequence[Prompt], *, special=None, seq_length: int, allowed: int,
                  batch_size: int = 32, max_new_tokens: int = 16) -> ZeroShotResult:
    """Score zero-shot prompts with ``model`` (``logits(rows)``, ``generate(...)``: ours or an export)
    and ``tok`` (``encode``, ``decode``, ``special``)."""
    special = special or tok.special
    cls = [p for p in prompts if p.task == "classification"]
    gen = [p for p in prompts if p.task == "generation"]
    outcomes: list[Outcome] = []
    truncated = 0
    if cls:
        rows, owner = [], []
        for i, p in enumerate(cls):
            r, cut = option_rows(p, tok.encode, special, seq_length)
            truncated += cut
            rows += r
            owner += [i] * len(r)
        ll = loglikelihoods(model, rows, batch_size)
        owner = np.asarray(owner)
        for i, p in enumerate(cls):
            mine = ll[owner == i]
            pick = int(np.argmax(mine))
            outcomes.append(Outcome(p, float(pick == p.label), p.targets[pick], mine.tolist()))
    if gen:
        budget = seq_length - max_new_tokens
        if budget < 8:
            raise ValueError(f"zero-shot: seq_length {seq_length} leaves {budget} prompt ids after "
                             f"max_new_tokens={max_new_tokens}; lower zero_shot.max_new_tokens")
        stops = {int(i) for i in special.ids()} | {int(i) for i in special.sentinels()}
        for b in range(0, len(gen), batch_size):
            part = gen[b: b + batch_size]
            made = [generation_prompt(p, tok.encode, special, budget) for p in part]
            ids = [m[0] for m in made]
            truncated += sum(m[1] for m in made)
            chooser = Chooser(np.ones(len(part), bool), RowStreams.for_rows(0, 0, np.arange(len(part)),
                                                                            purpose="infill.sample"), 1.0, allowed)
            model.generate(ids, chooser, max_new_tokens, stops)
            for p, toks in zip(part, chooser.tokens):
                cut = next((k for k, t in enumerate(toks) if t in stops), len(toks))
                text = tok.decode(toks[:cut])
                ok = any(normalize(text) == normalize(t) for t in p.targets)
                outcomes.append(Outcome(p, float(ok), text))
    summary, metrics = summarize(outcomes)
    return ZeroShotResult(outcomes, metrics, summary, int(truncated))


def prompts_for(datasets: Sequence[Dataset], zcfg: ZeroShotConfig) -> list[Prompt]:
    return [p for d in datasets for p in zero_shot_prompts(d, max_items=zcfg.max_items, templates=zcfg.templates,
                                                         seed=zcfg.seed)]


def result_json(result: ZeroShotResult, extra: dict | None = None) -> str:
    examples = {}
    for o in result.outcomes:  # the first prompt of each dataset, as scored
        if o.prompt.dataset not in examples:
            examples[o.prompt.dataset] = {"template": o.prompt.template, "messages": list(o.prompt.messages),
                                          "targets": list(o.prompt.targets), "prediction": o.prediction,
                                          "correct": o.correct, "loglikelihoods": o.loglikelihoods}
    items: dict[str, dict[int, list[float]]] = {}
    for o in result.outcomes:
        items.setdefault(o.prompt.dataset, {}).setdefault(o.prompt.record, []).append(o.correct)
    item_scores = {d: {str(r): float(np.mean(v)) for r, v in sorted(rs.items())} for d, rs in items.items()}
    return json.dumps({**(extra or {}), "metrics": result.metrics, **result.summary, "examples": examples,
                       "item_scores": item_scores, "truncated_prompts": result.truncated}, indent=1, default=str)


# ----------------------------------------------------------------------------- in a training run


def zero_shot(sess) -> Report | None:
    """The held-out clusters of the session's instruction mixture, scored with its model; writes
    ``zero_shot.json`` in the run folder."""
    from ptobj.data_pipeline.instructions import load_mixture

    cfg = sess.cfg
    mixture = cfg.data.records.mixture
    if mixture is None or not mixture.held_out:
        return None
    datasets = load_mixture(mixture, str(Path(cfg.data.cache_dir) / "records"), only_held_out=True)
    autocast = sess.autocast if sess.autocast() is not None else None
    z = mixture.zero_shot
    result = score_prompts(OurModel(sess.model, sess.info.device, autocast), sess.tokenizer, prompts_for(datasets, z),
                           special=sess.data.special, seq_length=cfg.data.seq_length, allowed=sess.data.vocab_size,
                           batch_size=z.batch_size, max_new_tokens=z.max_new_tokens)
    if sess.info.is_main:
        (cfg.run_dir / "zero_shot.json").write_text(result_json(result, {"run_dir": str(cfg.run_dir),
                                                                         "held_out": list(mixture.held_out)}))
    return Report("zero_shot", result.metrics, result.table(), result)


# ----------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None, prog: str = "ptobj zeroshot") -> int:
    import argparse
    import dataclasses
    import sys

    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", nargs="?", default=None,
                   help="a decoder run written by ptobj train (its newest checkpoint and tokenizer)")
    p.add_argument("--recipe", default=None, help="the recipe whose mixture names the held-out clusters "
                   "(default: the run's own config)")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   help="dotted.key=value on that config, e.g. --set data.records.mixture.zero_shot.max_items=20")
    p.add_argument("--clusters", default=None, help="score these clusters (comma-separated) instead of the held-out ones")
    p.add_argument("--hf", default=None, help="a Hugging Face export (ptobj export) to score as well")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where our model runs (default cpu)")
    p.add_argument("--out", default=None, help="write the scores as JSON here")
    a = p.parse_args(argv)
    from ptobj.data_pipeline.corpus import CorpusError
    from ptobj.data_pipeline.instructions import load_mixture
    from ptobj.recipes.engine.config import ConfigError
    from ptobj.recipes.engine.train_config import load_train_config

    def fail(msg: str) -> int:
        print(f"zeroshot error: {msg}", file=sys.stderr)
        return 2

    if a.run_dir is None and a.hf is None:
        return fail("name a run directory, --hf HF_DIR, or both")
    try:
        if a.recipe:
            cfg = load_train_config(a.recipe, a.overrides)
        elif a.run_dir:
            cfg = load_train_config(Path(a.run_dir) / "config.yaml", a.overrides)
        else:
            return fail("--hf alone needs --recipe (the mixture whose held-out clusters to score)")
        mixture = cfg.data.records.mixture
        if mixture is None:
            return fail(f"{a.recipe or a.run_dir}: data.records.mixture is not set; name an instruction recipe "
                        "with --recipe (e.g. flan_tiny)")
        if a.clusters:
            mixture = dataclasses.replace(mixture, held_out=[c.strip() for c in a.clusters.split(",") if c.strip()])
        if not mixture.held_out:
            return fail("no cluster to score: the mixture holds none out; name some with --clusters")
        datasets = load_mixture(mixture, str(Path(cfg.data.cache_dir) / "records"), only_held_out=True)
    except (ConfigError, CorpusError, FileNotFoundError, ValueError) as exc:
        return fail(str(exc))
    prompts = prompts_for(datasets, mixture.zero_shot)
    z = mixture.zero_shot
    kw = dict(seq_length=cfg.data.seq_length, batch_size=z.batch_size, max_new_tokens=z.max_new_tokens)
    results, report = {}, {"recipe": a.recipe, "clusters": list(mixture.held_out), "zero_shot": dataclasses.asdict(z)}
    if a.run_dir:
        from ptobj.data_pipeline.tokenizer import SentencePieceTokenizer
        from ptobj.recipes.engine.distributed import init_distributed, shutdown
        from ptobj.recipes.engine.resolve import resolve_model_config
        from ptobj.recipes.engine.runs import find_checkpoint, find_tokenizer, load_model, load_run_config

        run_dir = Path(a.run_dir)
        try:
            run_cfg = load_run_config(run_dir)
            if run_cfg.plan.model != "decoder":
                return fail(f"{run_dir}: a {run_cfg.plan.model}; zero-shot scoring needs a decoder")
            tok = SentencePieceTokenizer.load(find_tokenizer(run_dir))
            step_dir = find_checkpoint(run_cfg.checkpoint_dir, None)
        except (ConfigError, FileNotFoundError, ValueError) as exc:
            return fail(str(exc))
        device = torch.device(a.device)
        run_cfg = dataclasses.replace(run_cfg, parallel=dataclasses.replace(run_cfg.parallel, device=a.device,
                                                                            precision="fp32"))
        info = init_distributed(a.device, "auto", 1, 1, seed=run_cfg.schedule.seed)
        try:
            vocab = tok.vocab_size + run_cfg.plan.sentinels
            model, step, _ = load_model(resolve_model_config(run_cfg, vocab, device), step_dir, info, fits=str(run_dir))
            special = tok.special.with_sentinels(tok.vocab_size, run_cfg.plan.sentinels)
            results["ours"] = score_prompts(OurModel(model, device), tok, prompts, special=special, allowed=vocab, **kw)
        finally:
            shutdown()
        report.update(run_dir=str(run_dir), checkpoint=str(step_dir), step=step)
    if a.hf:
        from ptobj.recipes.evaluation.infill import load_hf

        hf_model, hf_tok, allowed = load_hf(a.hf, device=a.device)
        results["hf"] = score_prompts(hf_model, hf_tok, prompts, allowed=allowed, **kw)
        report["hf"] = a.hf
    for name, r in results.items():
        print(f"[zeroshot] {name}: {a.run_dir if name == 'ours' else a.hf}\n{r.table()}")
        report[name] = json.loads(result_json(r))
    if len(results) == 2:
        ours, hf = results["ours"], results["hf"]
        same = np.mean([x.prediction == y.prediction for x, y in zip(ours.outcomes, hf.outcomes)])
        lls = [abs(u - v) for x, y in zip(ours.outcomes, hf.outcomes) for u, v in zip(x.loglikelihoods, y.loglikelihoods)]
        report["agreement"] = {"same_prediction": float(same), "max_loglikelihood_diff": max(lls, default=0.0)}
        print(f"[zeroshot] ours vs hf: {same:.1%} of {len(ours.outcomes)} predictions identical; largest "
              f"log-likelihood difference {max(lls, default=0.0):.3g}")
    if a.out:
        Path(a.out).write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
