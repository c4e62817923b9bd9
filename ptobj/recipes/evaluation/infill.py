"""The infilling evaluation of Bavarian et al. 2022, on held-out code.

Tasks (single-line, multi-line, random-span middles) come from held-out
documents (:mod:`ptobj.recipes.evaluation.infill_tasks`). Each is prompted in PSM and in SPM
(``ptobj.objectives.fim.infill_prompt``, the layout training used) and decoded in
three ways:

* **greedy** (argmax until a stop);
* **best-of-n**: n samples at ``temperature``, the one with the highest mean
  log-probability (of its tokens and its stop token, at temperature 1) wins;
* **EOT-aware best-of-n** (the paper's): the same, among the samples that
  emitted EOT before the token budget; a task none of whose samples did counts
  as a miss.

Metrics per task kind and prompt mode: exact match of the middle, whether the
infilled file parses (``ast.parse``; for documents that parse as they are),
and the paper's diagnostic, the share of samples that emit EOT. Any reserved
id ends a middle; only EOT counts as ending it properly.

One decoding rule serves every model: :class:`Chooser` picks each next token
from the logits (argmax, or the inverse CDF of the tempered softmax at a
uniform drawn from ``(seed, task, sample, step)`` by counter-based streams),
so the same checkpoint gives the same completions whether it runs here
(:class:`OurModel`, the megatron model, full recompute per token) or exported,
through ``transformers`` ``generate`` (:class:`HFModel`, with a logits
processor that applies the same rule). ``ptobj infill RUN_DIR
[--hf HF_DIR]`` evaluates a run's newest checkpoint, its export, or both and
reports how far the two agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from ptobj.objectives.fim import infill_prompt
from ptobj.objectives.streams import RowStreams, site
from ptobj.recipes.engine.infill_config import DECODINGS, KINDS, InfillConfig
from ptobj.recipes.evaluation.infill_tasks import InfillTask, build_tasks, parses

_SITE_TOKEN = site("infill.token")


# ----------------------------------------------------------------------------- the decoding rule


class Chooser:
    """Next tokens for rows of a batch: greedy rows take the argmax, the others sample at
    ``temperature`` from their own stream. Only ids below ``allowed`` are ever chosen (the
    model's padded vocabulary is not). Records each row's tokens and log-probabilities."""

    def __init__(self, greedy: np.ndarray, streams: RowStreams, temperature: float, allowed: int):
        self.greedy = np.asarray(greedy, bool)
        self.streams, self.temperature, self.allowed = streams, float(temperature), int(allowed)
        self.tokens: list[list[int]] = [[] for _ in self.greedy]
        self.logprobs: list[list[float]] = [[] for _ in self.greedy]

    def __call__(self, step: int, logits: torch.Tensor) -> np.ndarray:
        x = logits[:, : self.allowed].double().cpu()
        logp = torch.log_softmax(x, dim=-1).numpy()
        choice = logp.argmax(axis=1)
        sampled = np.flatnonzero(~self.greedy)
        if sampled.size:
            p = torch.softmax(x[sampled] / self.temperature, dim=-1).numpy()
            cdf = np.cumsum(p, axis=1)
            u = self.streams.uniform_at(_SITE_TOKEN, sampled, np.full(sampled.size, step)) * cdf[:, -1]
            choice[sampled] = np.minimum((cdf <= u[:, None]).sum(axis=1), self.allowed - 1)
        for r, t in enumerate(choice.tolist()):
            self.tokens[r].append(t)
            self.logprobs[r].append(float(logp[r, t]))
        return choice


@dataclass
class Completion:
    ids: list[int]          # the middle's ids (without the stop token)
    stop: int | None        # the reserved id that ended it, None at the token budget
    mean_logprob: float     # over the middle's tokens and the stop token
    eot: bool               # ended by EOT
    text: str = ""


def _cut(tokens: list[int], logprobs: list[float], stops: set[int], eot: int) -> Completion:
    for i, t in enumerate(tokens):
        if t in stops:
            return Completion(tokens[:i], t, float(np.mean(logprobs[: i + 1])), t == eot)
    return Completion(list(tokens), None, float(np.mean(logprobs)) if logprobs else -math.inf, False)


# ----------------------------------------------------------------------------- models


class OurModel:
    """The training recipe's model (every tensor-parallel rank calls together)."""

    name = "ours"

    def __init__(self, model, device: torch.device, autocast=None):
        self.model, self.device, self.autocast = model, device, autocast

    @torch.no_grad()
    def logits(self, rows: Sequence[Sequence[int]]) -> torch.Tensor:
        """Logits [R, L, V] of right-padded rows (causal attention: padding never reaches a row)."""
        n = np.array([len(r) for r in rows])
        L = int(n.max())
        tokens = np.zeros((len(rows), L), np.int64)
        for i, r in enumerate(rows):
            tokens[i, : n[i]] = r
        t = torch.from_numpy(tokens).to(self.device)
        ar = torch.arange(L, device=self.device)[None].expand_as(t).contiguous()
        batch = {"tokens": t, "position_ids": ar, "segment_ids": torch.zeros_like(t),
                 "kv_start": torch.zeros_like(t), "kv_end": ar + 1}
        was_training = self.model.training
        self.model.eval()
        try:
            if self.autocast is not None:
                with self.autocast():
                    return _full_vocab_logits(self.model, batch).float()
            return _full_vocab_logits(self.model, batch).float()
        finally:
            self.model.train(was_training)

    @torch.no_grad()
    def generate(self, prompts: Sequence[np.ndarray], chooser: Chooser, max_new_tokens: int, stops: set[int]):
        rows = [list(map(int, p)) for p in prompts]
        done = np.zeros(len(rows), bool)
        for step in range(max_new_tokens):
            live = np.flatnonzero(~done)
            n = np.array([len(rows[r]) for r in live])
            logits = self.logits([rows[r] for r in live])
            last = logits[torch.arange(len(live)), torch.from_numpy(n - 1).to(logits.device)]
            full = torch.zeros((len(rows), last.shape[1]), dtype=torch.float32)
            full[torch.from_numpy(live)] = last.cpu()
            chosen = chooser(step, full)
            for r in live.tolist():
                rows[r].append(int(chosen[r]))
                if int(chosen[r]) in stops:
                    done[r] = True
            if done.all():
                break


def _full_vocab_logits(model, batch) -> torch.Tensor:
    """[b, s, V] logits; tensor-parallel vocabulary shards gathered with a plain all_gather
    (megatron's gather allocates on CUDA, so it fails on CPU)."""
    local = model.logits(batch, gather=False)
    group = getattr(model, "tp_group", None)
    if group is None or not torch.distributed.is_initialized() or torch.distributed.get_world_size(group) == 1:
        return local
    parts = [torch.empty_like(local) for _ in range(torch.distributed.get_world_size(group))]
    torch.distributed.all_gather(parts, local.contiguous(), group=group)
    return torch.cat(parts, dim=-1)


class HFModel:
    """A Hugging Face export through ``transformers`` ``generate`` (left-padded batches, its
    KV cache); a logits processor applies the :class:`Chooser` rule at every step."""

    name = "hf"

    def __init__(self, model, pad_id: int):
        self.model, self.pad_id = model.eval(), int(pad_id)

    @torch.no_grad()
    def logits(self, rows: Sequence[Sequence[int]]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        n = [len(r) for r in rows]
        ids = torch.full((len(rows), max(n)), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, : n[i]] = torch.as_tensor(list(r))
            mask[i, : n[i]] = 1
        return self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()

    @torch.no_grad()
    def generate(self, prompts: Sequence[np.ndarray], chooser: Chooser, max_new_tokens: int, stops: set[int]):
        import transformers

        device = next(self.model.parameters()).device
        L = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), L), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), L), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, L - len(p):] = torch.as_tensor(np.asarray(p, np.int64))
            mask[i, L - len(p):] = 1

        class Choose(transformers.LogitsProcessor):
            def __call__(self, input_ids, scores):
                chosen = torch.as_tensor(chooser(input_ids.shape[1] - L, scores), device=scores.device)
                out = torch.full_like(scores, -math.inf)
                out[torch.arange(scores.shape[0], device=scores.device), chosen] = 0.0
                return out

        self.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                            num_beams=1, max_new_tokens=max_new_tokens, min_new_tokens=0,
                            logits_processor=transformers.LogitsProcessorList([Choose()]),
                            eos_token_id=sorted(stops), pad_token_id=self.pad_id)


class HFTokens:
    """A ``transformers`` tokenizer seen as ours: encode / decode / special ids by name."""

    def __init__(self, hf_tokenizer, special):
        self.hf, self.special = hf_tokenizer, special

    def encode(self, text: str) -> list[int]:
        return self.hf(text, add_special_tokens=False)["input_ids"]

    def decode(self, ids) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


def load_hf(folder, device: str = "cpu"):
    """(HFModel, HFTokens, allowed ids) for an exported folder."""
    import dataclasses

    import transformers

    from ptobj.models.hf_tokenizer import NAMES
    from ptobj.objectives.sample import SpecialTokens

    hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
    ids = {field: hf_tok.convert_tokens_to_ids(text) for field, text in NAMES.items()}
    special = dataclasses.replace(SpecialTokens(), **ids)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(device)
    return HFModel(model, special.pad), HFTokens(hf_tok, special), len(hf_tok)


# ----------------------------------------------------------------------------- the evaluation


@dataclass
class Outcome:
    task: InfillTask
    mode: str
    greedy: Completion
    samples: list[Completion]
    nll: tuple[float, int] = (0.0, 0)  # the reference middle + EOT: summed negative log-likelihood, tokens

    def pick(self, decoding: str) -> Completion | None:
        if decoding == "greedy":
            return self.greedy
        pool = self.samples if decoding == "best_of_n" else [c for c in self.samples if c.eot]
        return max(pool, key=lambda c: c.mean_logprob) if pool else None


@dataclass
class InfillResult:
    outcomes: list[Outcome]
    metrics: dict[str, float] = field(default_factory=dict)
    config: InfillConfig | None = None

    def example(self) -> Outcome | None:
        """One outcome whose EOT-aware pick emitted EOT: an exact match if any (the longest
        middle), else the one the model was surest of."""
        ok = [o for o in self.outcomes if o.greedy is not None and o.pick("eot_best_of_n") is not None]
        if not ok:
            return None
        exact = [o for o in ok if o.pick("eot_best_of_n").text == o.task.middle]
        if exact:
            return max(exact, key=lambda o: len(o.task.middle))
        return max(ok, key=lambda o: o.pick("eot_best_of_n").mean_logprob)


def prompt_ids(task: InfillTask, mode: str, tok, budget: int, spm_variant: int) -> np.ndarray:
    """The prompt: the end of the prefix and the start of the suffix that fit ``budget`` ids."""
    window = 8 * budget + 64
    pre = tok.encode(task.prefix[-window:]) if task.prefix else []
    suf = tok.encode(task.suffix[:window]) if task.suffix else []
    half = budget // 2
    keep_pre = min(len(pre), max(half, budget - len(suf)))
    keep_suf = min(len(suf), budget - keep_pre)
    return infill_prompt(np.asarray(pre[len(pre) - keep_pre:], np.int32), np.asarray(suf[:keep_suf], np.int32),
                         mode, tok.special, spm_variant)


def run_infill(model, tok, tasks: Sequence[InfillTask], cfg: InfillConfig, *, modes: Sequence[str],
               spm_variant: int, seq_length: int, allowed: int, progress=None) -> InfillResult:
    """Decode every task in every mode (greedy + ``cfg.samples`` samples) and score it."""
    sp = tok.special
    stops = set(int(i) for i in sp.ids()) | set(int(i) for i in sp.sentinels())
    budget = seq_length - cfg.max_new_tokens - 3
    if budget < 8:
        raise ValueError(f"infilling: seq_length {seq_length} leaves {budget} prompt tokens after "
                         f"max_new_tokens={cfg.max_new_tokens}; lower eval.infill.max_new_tokens")
    n = cfg.samples
    rows = []  # (outcome index, sample index or -1 for greedy, prompt) of the decoded tasks
    pairs = [(t, m) for t in tasks for m in modes]
    prompts = [prompt_ids(task, mode, tok, budget, spm_variant) for task, mode in pairs]
    seen: dict[str, int] = {}
    decode = []
    for task in tasks:                                    # the first decode_per_kind tasks of each kind
        seen[task.kind] = seen.get(task.kind, 0) + 1
        decode.append(not cfg.decode_per_kind or seen[task.kind] <= cfg.decode_per_kind)
    for o, (task, mode) in enumerate(pairs):
        if decode[o // len(modes)]:
            rows += [(o, -1, prompts[o])] + [(o, j, prompts[o]) for j in range(n)]
    got: list[Completion] = [None] * len(rows)
    for a in range(0, len(rows), cfg.batch_rows):
        chunk = rows[a : a + cfg.batch_rows]
        greedy = np.array([j < 0 for _, j, _ in chunk])
        keys = RowStreams.for_rows(cfg.seed, [o for o, _, _ in chunk], [max(j, 0) for _, j, _ in chunk],
                                   purpose="infill.sample")
        chooser = Chooser(greedy, keys, cfg.temperature, allowed)
        model.generate([p for _, _, p in chunk], chooser, cfg.max_new_tokens, stops)
        for i, (toks, lps) in enumerate(zip(chooser.tokens, chooser.logprobs)):
            c = _cut(toks, lps, stops, sp.eot)
            c.text = tok.decode(c.ids)
            got[a + i] = c
        if progress is not None:
            progress(min(a + cfg.batch_rows, len(rows)), len(rows))
    nll = middle_nll(model, tok, prompts, [t.middle for t, _ in pairs], allowed)
    outcomes = [Outcome(task, mode, None, [], nll=x) for (task, mode), x in zip(pairs, nll)]
    for (o, j, _), c in zip(rows, got):
        if j < 0:
            outcomes[o].greedy = c
        else:
            outcomes[o].samples.append(c)
    result = InfillResult(outcomes, config=cfg)
    result.metrics = score(outcomes)
    return result


def middle_nll(model, tok, prompts: Sequence[np.ndarray], middles: Sequence[str], allowed: int,
               rows: int = 8) -> list[tuple[float, int]]:
    """Per prompt, the negative log-likelihood of the reference middle and EOT after it (a
    measure that moves before exact matches appear): (sum over tokens, tokens)."""
    out = []
    for a in range(0, len(prompts), rows):
        seqs, starts = [], []
        for p, m in zip(prompts[a : a + rows], middles[a : a + rows]):
            target = [*tok.encode(m), tok.special.eot]
            seqs.append([*map(int, p), *target])
            starts.append(len(p))
        logits = model.logits(seqs)[..., :allowed].double().cpu()
        logp = torch.log_softmax(logits, dim=-1)
        for i, (seq, s0) in enumerate(zip(seqs, starts)):
            pos = torch.arange(s0 - 1, len(seq) - 1)
            picked = logp[i, pos, torch.as_tensor(seq[s0:])]
            out.append((float(-picked.sum()), len(seq) - s0))
    return out


def score(outcomes: Sequence[Outcome]) -> dict[str, float]:
    """``infill/{kind|all}/{mode}/{decoding}_exact`` and ``_parse``, ``.../eot_share`` (of the
    samples), ``.../greedy_eot``, ``.../middle_loss`` (per token of the reference middle and its
    EOT) and ``.../tasks``; exact match and middle loss with their standard error over tasks
    (``..._se``: binomial for a share, the ratio estimator's for the per-token loss)."""
    groups: dict[tuple[str, str], list[Outcome]] = {}
    for o in outcomes:
        groups.setdefault((o.task.kind, o.mode), []).append(o)
        groups.setdefault(("all", o.mode), []).append(o)
    out: dict[str, float] = {}
    for (kind, mode), group in sorted(groups.items()):
        key = f"infill/{kind}/{mode}"
        out[f"{key}/tasks"] = float(len(group))
        decoded = [o for o in group if o.greedy is not None]
        out[f"{key}/decoded"] = float(len(decoded))
        for decoding in DECODINGS if decoded else ():
            picks = [(o, o.pick(decoding)) for o in decoded]
            hit = float(np.mean([c is not None and c.text == o.task.middle for o, c in picks]))
            out[f"{key}/{decoding}_exact"] = hit
            out[f"{key}/{decoding}_exact_se"] = math.sqrt(hit * (1 - hit) / len(decoded))
            code = [(o, c) for o, c in picks if o.task.parses]
            if code:
                out[f"{key}/{decoding}_parse"] = float(np.mean([c is not None and parses(o.task.filled(c.text))
                                                               for o, c in code]))
        samples = [c for o in decoded for c in o.samples]
        out[f"{key}/eot_share"] = float(np.mean([c.eot for c in samples])) if samples else math.nan
        out[f"{key}/greedy_eot"] = float(np.mean([o.greedy.eot for o in decoded])) if decoded else math.nan
        out[f"{key}/middle_loss"], out[f"{key}/middle_loss_se"] = ratio_se([o.nll[0] for o in group],
                                                                         [o.nll[1] for o in group])
    return out


def ratio_se(sums: Sequence[float], counts: Sequence[float]) -> tuple[float, float]:
    """sum(sums) / sum(counts) and its standard error over the items (the ratio estimator's)."""
    n, total = len(sums), float(sum(counts))
    if not total:
        return math.nan, math.nan
    r = float(sum(sums)) / total
    if n < 2:
        return r, math.nan
    resid = sum((float(x) - r * float(c)) ** 2 for x, c in zip(sums, counts))
    return r, math.sqrt(resid / (n * (n - 1))) / (total / n)


def agreement(a: InfillResult, b: InfillResult) -> dict[str, float]:
    """How far two evaluations of the same tasks agree: the share of completions (greedy and
    sampled) with identical ids, and the largest difference of any metric."""
    same = total = 0
    for x, y in zip(a.outcomes, b.outcomes):
        if x.greedy is None or y.greedy is None:              # scored by loss only, not decoded
            continue
        for c, d in zip([x.greedy, *x.samples], [y.greedy, *y.samples]):
            same += c.ids == d.ids and c.stop == d.stop
            total += 1
    keys = set(a.metrics) & set(b.metrics)
    diff = max((abs(a.metrics[k] - b.metrics[k]) for k in keys if not math.isnan(a.metrics[k])), default=0.0)
    return {"identical_completions": same / max(total, 1), "completions": float(total), "max_metric_diff": diff}


def held_out_texts(token_data, tokenizer, max_docs: int = 2000) -> list[str]:
    """The held-out documents as text (the tokenizer is lossless)."""
    n = min(token_data.num_documents, max_docs)
    return [tokenizer.decode(token_data.document_tokens(d).tolist()) for d in range(n)]


# ----------------------------------------------------------------------------- reports


def summary_table(metrics: dict, modes: Sequence[str] = ("psm", "spm"), kinds: Sequence[str] = KINDS) -> str:
    """A short table: per kind and mode, exact match of the three decodings, parse rate of the
    EOT-aware pick, EOT share of the samples."""
    head = f"{'task':<12} {'mode':<4} {'tasks':>5} {'decoded':>7} {'greedy':>7} {'best-n':>7} {'EOT best-n':>10} " \
           f"{'parses':>7} {'EOT share':>9} {'middle loss':>15}"
    lines = [head, "-" * len(head)]
    for kind in [*kinds, "all"]:
        for mode in modes:
            key = f"infill/{kind}/{mode}"
            if f"{key}/tasks" not in metrics:
                continue
            g = lambda name: metrics.get(f"{key}/{name}", math.nan)  # noqa: E731
            loss = f"{g('middle_loss'):.3f} ± {g('middle_loss_se'):.3f}"
            lines.append(f"{kind:<12} {mode:<4} {int(g('tasks')):>5} {int(g('decoded')):>7} {g('greedy_exact'):>7.2f} "
                         f"{g('best_of_n_exact'):>7.2f} {g('eot_best_of_n_exact'):>10.2f} "
                         f"{g('eot_best_of_n_parse'):>7.2f} {g('eot_share'):>9.2f} {loss:>15}")
    return "\n".join(lines)


def render_example(o: Outcome, n: int, lines: int = 4) -> str:
    c = o.pick("eot_best_of_n")
    pre = "".join(o.task.prefix.splitlines(keepends=True)[-lines:])
    suf = "".join(o.task.suffix.splitlines(keepends=True)[:lines])
    verdict = "exact match" if c.text == o.task.middle else "not the reference"
    return (f"infilled example ({o.task.kind.replace('_', '-')}, {o.mode.upper()} prompt, EOT-aware "
            f"best-of-{n}, emitted EOT; {verdict}):\n[prefix, last lines]\n{pre}\n[suffix, first lines]\n{suf}\n"
            f"[reference middle] {o.task.middle!r}\n[generated middle] {c.text!r}")


# ----------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None, prog: str = "ptobj infill") -> int:
    import argparse
    import dataclasses
    import json
    import sys
    import typing
    from pathlib import Path

    p = argparse.ArgumentParser(prog=prog, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a decoder run written by ptobj.recipes.train (its held-out files, its checkpoint)")
    p.add_argument("--hf", default=None, help="its Hugging Face export (ptobj export)")
    p.add_argument("--backends", default=None, help="ours, hf or ours,hf (default: ours, plus hf with --hf)")
    p.add_argument("--corpus", default=None, help="take the documents from this corpus (a .jsonl/.txt/.parquet "
                   "file or hub name) instead of the run's held-out split")
    p.add_argument("--set", dest="fields", action="append", default=[],
                   help="eval.infill field=value, e.g. --set tasks_per_kind=20 --set samples=8")
    p.add_argument("--out", default=None, help="write metrics (and agreement) as JSON here")
    a = p.parse_args(argv)
    from ptobj.recipes.engine.config import ConfigError, parse_value
    from ptobj.recipes.engine.distributed import init_distributed, shutdown
    from ptobj.recipes.engine.runs import find_checkpoint, find_tokenizer, load_model, load_run_config
    from ptobj.recipes.engine.resolve import resolve_model_config

    run_dir = Path(a.run_dir)
    try:
        cfg = load_run_config(run_dir)
        icfg = cfg.eval.infill
        for item in a.fields:
            k, _, v = item.partition("=")
            if k not in {f.name for f in dataclasses.fields(InfillConfig)}:
                raise ConfigError(f"--set {k}: unknown field; InfillConfig knows "
                                  f"{sorted(f.name for f in dataclasses.fields(InfillConfig))}")
            icfg = dataclasses.replace(icfg, **{k: parse_value(typing.get_type_hints(InfillConfig)[k], v, k)})
    except (FileNotFoundError, ConfigError, ValueError) as exc:
        print(f"infill error: {exc}", file=sys.stderr)
        return 2
    declared = [e for e in cfg.plan.evaluations.values() if e.kind == "infilling"]
    if not declared:
        print(f"infill error: {run_dir}'s objective declares no infilling evaluation", file=sys.stderr)
        return 2
    params = dict(declared[0].params)
    modes = icfg.modes or tuple(params.get("modes", ("psm",)))
    backends = (a.backends or ("ours,hf" if a.hf else "ours")).split(",")
    from ptobj.data_pipeline.tokenizer import SentencePieceTokenizer

    tok = SentencePieceTokenizer.load(find_tokenizer(run_dir))
    if a.corpus:
        from ptobj.data_pipeline.config import CorpusConfig
        from ptobj.data_pipeline.corpus import open_corpus

        texts = [t for _, t in zip(range(2000), open_corpus(CorpusConfig(source=a.corpus)).documents())]
    else:
        from ptobj.data_pipeline.build import prepare_corpus

        prepared = prepare_corpus(cfg.data.corpus, cfg.data.tokenizer, cfg.data.cache_dir, progress=False)
        texts = held_out_texts(prepared.valid or prepared.train, tok)
    tasks = build_tasks(texts, tok, kinds=icfg.kinds, per_kind=icfg.tasks_per_kind,
                        max_middle_tokens=icfg.middle_tokens, seed=icfg.seed)
    kw = dict(modes=modes, spm_variant=int(params.get("spm_variant", 2)), seq_length=cfg.data.seq_length)
    results = {}
    if "ours" in backends:
        cfg = dataclasses.replace(cfg, parallel=dataclasses.replace(cfg.parallel, device="cpu", precision="fp32"))
        info = init_distributed("cpu", "auto", 1, 1, seed=cfg.schedule.seed)
        model_cfg = resolve_model_config(cfg, tok.vocab_size + cfg.plan.sentinels, torch.device("cpu"))
        model, step, _ = load_model(model_cfg, find_checkpoint(cfg.checkpoint_dir, None), info, fits=str(run_dir))
        results["ours"] = run_infill(OurModel(model, info.device), tok, tasks, icfg,
                                     allowed=tok.vocab_size + cfg.plan.sentinels, **kw)
    if "hf" in backends:
        if not a.hf:
            print("infill error: --backends hf needs --hf HF_DIR", file=sys.stderr)
            return 2
        hf_model, hf_tok, allowed = load_hf(a.hf)
        results["hf"] = run_infill(hf_model, hf_tok, tasks, icfg, allowed=allowed, **kw)
    shutdown()
    report = {"run_dir": str(run_dir), "tasks": len(tasks), "config": dataclasses.asdict(icfg)}
    for name, r in results.items():
        print(f"[infill] {name}: {len(tasks)} tasks x {len(modes)} prompt modes, greedy + {icfg.samples} samples "
              f"at T={icfg.temperature}\n{summary_table(r.metrics, modes, icfg.kinds)}")
        report[name] = r.metrics
    if len(results) == 2:
        agree = agreement(results["ours"], results["hf"])
        report["agreement"] = agree
        print(f"[infill] ours vs hf: {agree['identical_completions']:.1%} of {int(agree['completions'])} "
              f"completions identical; largest metric difference {agree['max_metric_diff']:.3g}")
    if a.out:
        Path(a.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
