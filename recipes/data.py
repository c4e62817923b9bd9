"""Wire data_pipeline and objectives into the datasets a run reads.

* the corpus is prepared once (rank 0 first, the others reuse the cache);
* the objective spec gets ``seq_length`` filled in where its configs want it;
* train / held-out :class:`data_pipeline.dataset.ObjectiveDataset` objects map a
  global sample position to a transformed sample, deterministically;
* evaluation sets follow the objective: left-to-right loss for decoders, FIM
  loss on 100% FIM-transformed data when FIM is trained, and the training
  transform itself (cloze / SOP / NSP accuracy) for encoders.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Mapping

from recipes.distributed import DistInfo
from recipes.train_config import TrainConfig

DECODER_OBJECTIVES = {"causal_lm", "fim"}


@dataclass
class RunData:
    prepared: Any  # data_pipeline.build.PreparedCorpus
    tokenizer: Any
    train: Any  # ObjectiveDataset
    evals: dict[str, Any] = field(default_factory=dict)  # name -> ObjectiveDataset (held-out)
    spec: dict = field(default_factory=dict)  # resolved objective spec


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


def leaves(spec: Mapping[str, Any]) -> list[dict]:
    """The ``{name, config}`` leaves of a (compose / mix) spec, in order."""
    if "compose" in spec:
        return [leaf for s in spec["compose"] for leaf in leaves(s)]
    if "mix" in spec:
        return [leaf for s in spec["mix"] for leaf in leaves(s)]
    return [dict(spec)]


def with_seq_length(spec: Mapping[str, Any], seq_length: int) -> dict:
    """Copy of ``spec`` whose leaf configs get ``seq_length`` where their class has that field."""
    import dataclasses

    from objectives import registry

    spec = copy.deepcopy(dict(spec))
    if "compose" in spec:
        spec["compose"] = [with_seq_length(s, seq_length) for s in spec["compose"]]
        return spec
    if "mix" in spec:
        spec["mix"] = [with_seq_length(s, seq_length) for s in spec["mix"]]
        return spec
    if "name" not in spec:
        raise ValueError(f"objective.spec: need 'name', 'compose' or 'mix', got keys {sorted(spec)}")
    cls = registry.config_class(spec["name"])
    config = dict(spec.get("config") or {})
    if "seq_length" in {f.name for f in dataclasses.fields(cls)}:
        given = config.get("seq_length")
        if given is None:
            config["seq_length"] = seq_length
        elif int(given) != seq_length:
            raise ValueError(f"objective.spec: {spec['name']}.seq_length={given} differs from data.seq_length={seq_length}")
    spec["config"] = config
    return spec


def eval_specs(spec: Mapping[str, Any], model_kind: str, seq_length: int) -> dict[str, dict]:
    """Held-out evaluation suites for a training spec (name -> spec)."""
    if model_kind == "decoder":
        out = {"ltr": {"name": "causal_lm", "config": {"seq_length": seq_length}}}
        fim_leaves = [leaf for leaf in leaves(spec) if leaf.get("name") == "fim"]
        if fim_leaves:
            config = dict(fim_leaves[0].get("config") or {})
            config["fim_rate"] = 1.0
            out["fim"] = {"name": "fim", "config": config}
        return out
    return {"heldout": dict(spec)}


def sampler_for(cfg: TrainConfig, token_data, seed: int, special, shuffle: bool = True):
    from data_pipeline import samplers

    S = cfg.data.seq_length
    kind = cfg.data.sampler
    if kind == "packed":
        return samplers.PackedContextSampler(token_data, S, seed=seed, shuffle=shuffle, special=special)
    if kind == "segment":
        return samplers.SegmentSampler(token_data, max(1, S - 2), seed=seed, shuffle=shuffle)
    if kind == "segment_pair":
        return samplers.SegmentPairSampler(token_data, max(2, S - 3), seed=seed, shuffle=shuffle)
    raise ValueError(f"data.sampler: unknown kind {kind!r}")


def build_run_data(cfg: TrainConfig, info: DistInfo, progress: bool = True) -> RunData:
    from data_pipeline.dataset import ObjectiveDataset
    from objectives import registry

    prepared = prepare(cfg, info, progress=progress)
    tok = prepared.tokenizer
    special = tok.special
    S = cfg.data.seq_length
    spec = with_seq_length(cfg.objective.spec, S)
    kw = dict(special=special, vocab_size=tok.vocab_size, tokenizer=tok)
    try:
        transform = registry.build_spec(spec, **kw)
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"objective.spec: {exc}") from exc
    seed = cfg.schedule.seed
    train = ObjectiveDataset(sampler_for(cfg, prepared.train, seed, special), transform, seed=seed)
    evals = {}
    if prepared.valid is not None:
        for name, espec in eval_specs(spec, cfg.model.kind, S).items():
            et = registry.build_spec(with_seq_length(espec, S), **kw)
            # a fixed held-out stream: same samples at every evaluation
            evals[name] = ObjectiveDataset(sampler_for(cfg, prepared.valid, seed + 1, special), et, seed=seed + 1)
    return RunData(prepared=prepared, tokenizer=tok, train=train, evals=evals, spec=spec)
