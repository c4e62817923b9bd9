"""What a run will do, before it is launched (``ptobj train RECIPE --dry-run``).

Parameters come from the model itself, built on PyTorch's meta device (no memory, no GPU);
tokens, steps and epochs from the config and, once the corpus is prepared, its manifest;
memory per GPU from the parallel layout: weights, gradients, optimizer state (sharded over
data parallel under megatron's distributed optimizer), activations at the micro-batch
(Korthikanti et al. 2022, with attention scores never materialised, as our kernel does) and
the logits; time at a stated MFU.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from ptobj.recipes.engine.train_config import TrainConfig

GIB = 2**30
DEFAULT_PEAK = 989e12          # H100 / H200 dense bf16 FLOP/s
EPOCHS_WARN = 4.0


@dataclass
class RunPlan:
    name: str
    gpus: int
    layout: dict
    params: int
    embedding_params: int
    vocab_size: int
    tokens_per_step: int
    steps: int
    tokens: int
    corpus_tokens: int | None
    corpus_note: str
    epochs: float | None
    held_out: str
    memory_gib: dict
    flops_per_token: float
    hours: float
    mfu: float
    peak_flops: float
    warnings: list[str] = field(default_factory=list)

    def text(self) -> str:
        m, lay = self.memory_gib, self.layout
        epochs = f"{self.epochs:.2f}" if self.epochs is not None else "unknown (the corpus size is unknown)"
        lines = [
            f"plan of {self.name} on {self.gpus} GPU(s) (tp {lay['tp']}, dp {lay['dp']}, micro-batch "
            f"{lay['micro_batch']}, grad accumulation {lay['grad_accum']}, {lay['precision']}, optimizer "
            f"{lay['optimizer']})",
            f"  parameters        {self.params / 1e6:,.1f}M ({self.embedding_params / 1e6:,.1f}M in the embedding, "
            f"vocabulary {self.vocab_size:,})",
            f"  tokens per step   {self.tokens_per_step:,}",
            f"  steps             {self.steps:,}",
            f"  tokens in all     {self.tokens / 1e9:,.3f}B",
            f"  corpus            {self.corpus_note}",
            f"  epochs            {epochs}",
            f"  held out          {self.held_out}",
            f"  memory per GPU    {m['total']:.1f} GiB = weights {m['weights']:.1f} + gradients {m['gradients']:.1f} "
            f"+ optimizer {m['optimizer']:.1f} + activations {m['activations']:.1f} + logits {m['logits']:.1f}",
            f"  time              {self.hours:,.1f} h at {self.mfu:.0%} MFU of {self.peak_flops / 1e12:,.0f} TFLOP/s "
            f"per GPU ({self.flops_per_token / 1e9:,.2f} GFLOP per token)",
        ]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def json(self) -> str:
        return json.dumps(dataclasses.asdict(self))


def _vocab(cfg: TrainConfig) -> int:
    """The ids the model will embed: the tokenizer's (reserved ids and pieces) and the sentinels."""
    from ptobj.objectives.sample import SpecialTokens

    pieces = cfg.data.tokenizer.vocab_size
    path = cfg.data.tokenizer.model_path
    if path and Path(path).is_file():
        from ptobj.data_pipeline.tokenizer import SentencePieceTokenizer

        pieces = SentencePieceTokenizer.load(path).num_pieces
    return SpecialTokens().first_regular + pieces + cfg.plan.sentinels


def _prepared_tokens(cfg: TrainConfig) -> tuple[int | None, str]:
    """(training tokens, what is known of the corpus) from the prepared manifest when there is one."""
    from ptobj.data_pipeline.build import MANIFEST, cache_key
    from ptobj.data_pipeline.corpus import NAMED_CORPORA, CorpusError, open_corpus

    c = cfg.data.corpus
    if c.source in NAMED_CORPORA or ("/" in c.source and not c.source.startswith(("/", ".", "~"))
                                     and not Path(c.source).exists()):
        return None, f"{c.source}: unknown, streaming from the hub" + (
            f" (at most {c.max_documents:,} documents)" if c.max_documents else "")
    try:
        key = cache_key(open_corpus(c, cache_dir=Path(cfg.data.cache_dir) / ".hf-cache"), c, cfg.data.tokenizer)
    except CorpusError as exc:
        return None, f"unknown ({exc})"
    manifest = Path(cfg.data.cache_dir) / key / MANIFEST
    if manifest.is_file():
        splits = json.loads(manifest.read_text())["splits"]
        train = splits["train"]["tokens"]
        return train, f"{c.source}: {train / 1e9:,.3f}B training tokens (prepared: {manifest.parent})"
    return None, f"{c.source}: unknown until prepared (ptobj prepare, or the first run)"


def plan_run(cfg: TrainConfig, *, gpus: int = 1, mfu: float = 0.4, peak: float = 0.0) -> RunPlan:
    import torch

    from ptobj.models.model import build_model
    from ptobj.models.parallel import destroy_parallel, init_parallel
    from ptobj.recipes.engine.logger import flops_per_token
    from ptobj.recipes.engine.resolve import resolve_model_config, resolve_precision, uses_distributed_optimizer

    p, s = cfg.parallel, cfg.schedule
    if gpus < 1 or gpus % p.tensor_parallel:
        raise ValueError(f"--gpus {gpus}: must be a positive multiple of parallel.tensor_parallel={p.tensor_parallel}")
    dp = gpus // p.tensor_parallel
    gpu = torch.device("cuda")                    # the layout a GPU run resolves to (nothing touches a GPU)
    vocab = _vocab(cfg)
    mc = resolve_model_config(cfg, vocab, gpu)
    precision, dist_opt = resolve_precision(cfg, gpu), uses_distributed_optimizer(cfg, gpu)
    pg = init_parallel(tp=1, pp=1, backend="gloo")
    try:
        with torch.device("meta"):
            model = build_model(dataclasses.replace(mc, params_dtype="float32"), pg, device=torch.device("meta"))
        params = sum(t.numel() for t in model.parameters())
        embedding = sum(t.numel() for n, t in model.named_parameters() if "embedding" in n)
    finally:
        destroy_parallel()
    seq, mb = cfg.data.seq_length, s.micro_batch_size
    tokens_per_step = mb * s.grad_accum_steps * dp * seq
    tokens = tokens_per_step * s.train_steps
    corpus_tokens, corpus_note = _prepared_tokens(cfg)
    epochs = tokens / corpus_tokens if corpus_tokens else None
    tp = p.tensor_parallel
    shard = params / tp
    w_bytes = 2 if (precision == "bf16" and dist_opt) else 4
    weights = shard * w_bytes
    gradients = shard * 4                          # fp32 gradient buffers (megatron's main grads)
    optimizer = shard * (12 if precision == "bf16" and dist_opt else 8) / (dp if dist_opt else 1)
    h, L = mc.hidden_size, mc.num_layers
    act_bytes = 2 if precision == "bf16" else 4
    per_layer = seq * mb * h * 34 * act_bytes / 2 / tp     # Korthikanti et al.: 34 s b h bytes in 16-bit
    activations = per_layer * L * (0.0 if mc.recompute_granularity == "full" else 1.0) + (
        seq * mb * h * act_bytes * L if mc.recompute_granularity == "full" else 0.0)
    logits = seq * mb * mc.vocab_size * 4 * 2 / tp         # fp32 logits and their gradient
    memory = {k: v / GIB for k, v in dict(weights=weights, gradients=gradients, optimizer=optimizer,
                                          activations=activations, logits=logits).items()}
    memory["total"] = sum(memory.values())
    fpt = flops_per_token(params, L, h, seq, mc.kind == "decoder")
    peak = peak or cfg.logging.peak_flops or DEFAULT_PEAK
    hours = tokens * fpt / (peak * gpus * mfu) / 3600
    c = cfg.data.corpus
    held = (f"{c.valid_documents:,} documents (smallest content hashes), floor {c.min_valid_documents}"
            if c.valid_documents else f"{c.valid_fraction:.2%} of documents by content hash, floor "
            f"{c.min_valid_documents}" if c.valid_fraction else "nothing")
    warnings = []
    if epochs is not None and epochs > EPOCHS_WARN:
        warnings.append(f"the run repeats its corpus {epochs:.1f} times (more than {EPOCHS_WARN:g}): a larger corpus "
                        "or fewer steps")
    if not c.holds_out and not cfg.plan.sampler.startswith("records"):
        warnings.append("nothing is held out: no evaluation (set data.corpus.valid_documents)")
    layout = {"tp": tp, "dp": dp, "micro_batch": mb, "grad_accum": s.grad_accum_steps, "precision": precision,
              "optimizer": "megatron distributed" if dist_opt else "torch AdamW"}
    return RunPlan(cfg.name, gpus, layout, params, embedding, mc.vocab_size, tokens_per_step, s.train_steps, tokens,
                   corpus_tokens, corpus_note, epochs, held, memory, fpt, hours, mfu, peak, warnings)
