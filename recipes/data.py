"""Wire data_pipeline and objectives into the datasets a run reads.

* the corpus is prepared once (rank 0 first, the others reuse the cache);
* the sampler and its sample length come from the objective's plan
  (``cfg.plan``, derived from the Task declarations when the config was built);
* train / held-out :class:`data_pipeline.dataset.ObjectiveDataset` objects map a
  global sample position to a transformed sample, deterministically;
* held-out suites are the ones the objectives declare (e.g. FIM: left-to-right
  loss on plain contexts and the loss on all-FIM contexts; encoders: the
  training transform itself, for cloze / SOP / NSP accuracy).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from recipes.distributed import DistInfo
from recipes.train_config import TrainConfig


@dataclass
class RunData:
    prepared: Any  # data_pipeline.build.PreparedCorpus
    tokenizer: Any
    train: Any  # ObjectiveDataset
    evals: dict[str, Any] = field(default_factory=dict)  # name -> ObjectiveDataset (held-out)
    # the tokenizer's reserved ids plus the span sentinels the objective declares, after its pieces
    special: Any = None
    vocab_size: int = 0  # ids the model embeds: the tokenizer's and the sentinels


def prepare(cfg: TrainConfig, info: DistInfo, progress: bool = True):
    from data_pipeline.build import prepare_corpus

    out = cfg.data.cache_dir
    if info.is_main:
        prepared = prepare_corpus(cfg.data.corpus, cfg.data.tokenizer, out, workers=cfg.data.prepare_workers,
                                  progress=progress)
    info.barrier()
    if not info.is_main:
        prepared = prepare_corpus(cfg.data.corpus, cfg.data.tokenizer, out, workers=1, progress=False)
    return prepared


def sampler_for(plan, token_data, seed: int, special, shuffle: bool = True):
    """The sampler an objective's plan asks for, cutting ``plan.input_length`` tokens."""
    from data_pipeline import samplers

    n = plan.input_length
    if plan.sampler == "packed":
        return samplers.PackedContextSampler(token_data, n - 1, seed=seed, shuffle=shuffle, special=special)
    if plan.sampler == "segment":
        return samplers.SegmentSampler(token_data, n, seed=seed, shuffle=shuffle)
    if plan.sampler == "segment_pair":
        return samplers.SegmentPairSampler(token_data, n, seed=seed, shuffle=shuffle)
    raise ValueError(f"objective plan: unknown sampler {plan.sampler!r}")


def build_run_data(cfg: TrainConfig, info: DistInfo, progress: bool = True) -> RunData:
    from data_pipeline.dataset import ObjectiveDataset
    from objectives import registry

    prepared = prepare(cfg, info, progress=progress)
    tok = prepared.tokenizer
    plan = cfg.plan
    special = tok.special.with_sentinels(tok.vocab_size, plan.sentinels)
    kw = dict(special=special, vocab_size=tok.vocab_size, tokenizer=tok)
    try:
        transform = registry.build_spec(cfg.objective_spec, **kw)
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"objective: {exc}") from exc
    seed = cfg.schedule.seed
    train = ObjectiveDataset(sampler_for(plan, prepared.train, seed, special), transform, seed=seed)
    evals = {}
    if prepared.valid is not None:
        for name, spec in plan.evals.items():
            suite = registry.plan(spec)
            # a fixed held-out stream: same samples at every evaluation
            evals[name] = ObjectiveDataset(sampler_for(suite, prepared.valid, seed + 1, special),
                                           registry.build_spec(spec, **kw), seed=seed + 1)
    return RunData(prepared=prepared, tokenizer=tok, train=train, evals=evals, special=special,
                   vocab_size=tok.vocab_size + plan.sentinels)
