"""Wire data_pipeline and objectives into the datasets a run reads.

* the corpus is prepared once (global rank 0; the others wait for its completion marker);
* the sampler and its sample length come from the objective's plan
  (``cfg.plan``, derived from the Task declarations when the config was built);
* train / held-out :class:`ptobj.data_pipeline.dataset.ObjectiveDataset` objects map a
  global sample position to a transformed sample, deterministically;
* held-out suites are the ones the objectives declare (e.g. FIM: left-to-right
  loss on plain contexts and the loss on all-FIM contexts; encoders: the
  training transform itself, for cloze / SOP / NSP accuracy).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptobj.recipes.engine.distributed import DistInfo
from ptobj.recipes.engine.train_config import TrainConfig, eval_suites


@dataclass
class RunData:
    prepared: Any  # ptobj.data_pipeline.build.PreparedCorpus (None for objectives that read records)
    tokenizer: Any
    train: Any  # ObjectiveDataset
    evals: dict[str, Any] = field(default_factory=dict)  # name -> ObjectiveDataset (held-out)
    # the tokenizer's reserved ids plus the span sentinels the objective declares, after its pieces
    special: Any = None
    vocab_size: int = 0  # ids the model embeds: the tokenizer's and the sentinels
    # what the data has to say at the start of a run (an instruction mixture's shares), and files the
    # run folder keeps ({name: text}, e.g. mixture.json)
    notes: list[str] = field(default_factory=list)
    run_files: dict[str, str] = field(default_factory=dict)


def prepare(cfg: TrainConfig, info: DistInfo, progress: bool = True):
    """The prepared corpus, built once: global rank 0 prepares it into ``data.cache_dir`` (on a
    filesystem every node sees), every other rank waits for its completion marker (the manifest of
    the renamed directory) and opens it; if rank 0 fails, it leaves a failure marker with its error
    and the others stop with it. No collective call waits on the preparation, so a corpus that
    takes hours to prepare runs into no process-group timeout."""
    from ptobj.data_pipeline.build import MANIFEST, cache_key, open_prepared, prepare_corpus
    from ptobj.data_pipeline.corpus import CorpusError, open_corpus

    out = Path(cfg.data.cache_dir)
    key = cache_key(open_corpus(cfg.data.corpus, cache_dir=out / ".hf-cache"), cfg.data.corpus, cfg.data.tokenizer)
    failed = out / f".failed-{key}"
    if info.is_main:
        failed.unlink(missing_ok=True)
        try:
            return prepare_corpus(cfg.data.corpus, cfg.data.tokenizer, out, workers=cfg.data.prepare_workers,
                                  progress=progress)
        except BaseException as exc:
            if info.world_size > 1:
                out.mkdir(parents=True, exist_ok=True)
                failed.write_text(f"{type(exc).__name__}: {exc}")
            raise
    deadline = time.monotonic() + cfg.data.prepare_wait_minutes * 60
    while not (out / key / MANIFEST).is_file():
        if failed.is_file():
            raise CorpusError(f"rank 0 could not prepare the corpus: {failed.read_text()}")
        if time.monotonic() > deadline:
            raise CorpusError(f"waited {cfg.data.prepare_wait_minutes} min for rank 0 to prepare {out / key}; "
                              "is data.cache_dir on a filesystem every node sees? (data.prepare_wait_minutes)")
        time.sleep(2.0)
    return open_prepared(out / key)


def sampler_for(plan, token_data, seed: int, special, shuffle: bool = True, transform=None):
    """The sampler an objective's plan asks for, cutting ``plan.input_length`` tokens
    (``packed_documents``: packing what ``transform.documents`` makes of each document)."""
    from ptobj.data_pipeline import samplers

    n = plan.input_length
    if plan.sampler == "packed":
        return samplers.PackedContextSampler(token_data, n - 1, seed=seed, shuffle=shuffle, special=special)
    if plan.sampler == "packed_documents":
        from ptobj.data_pipeline.packed_documents import PackedDocumentSampler

        if not callable(getattr(transform, "documents", None)):
            raise ValueError(f"objective: sampler 'packed_documents' needs a transform with a document stage "
                             f"(documents(batch, streams)); {type(transform).__name__} has none")
        return PackedDocumentSampler(token_data, n - 1, transform.documents, seed=seed, shuffle=shuffle,
                                     special=special)
    if plan.sampler == "segment":
        return samplers.SegmentSampler(token_data, n, seed=seed, shuffle=shuffle)
    if plan.sampler == "segment_pair":
        return samplers.SegmentPairSampler(token_data, n, seed=seed, shuffle=shuffle)
    raise ValueError(f"objective plan: unknown sampler {plan.sampler!r}")


RECORD_SAMPLERS = ("records_packed", "records")


def record_tokenizer(cfg: TrainConfig):
    """The tokenizer of a run that reads records: the init_from run's own (the weights' ids), or
    ``data.tokenizer.model_path``."""
    from ptobj.data_pipeline.tokenizer import SentencePieceTokenizer
    from ptobj.recipes.engine.config import ConfigError

    if cfg.init_from:
        from ptobj.data_pipeline.build import TOKENIZER_FILE

        path = Path(cfg.init_from) / TOKENIZER_FILE
        if not path.is_file():
            raise ConfigError(f"init_from: {path} not found; is {cfg.init_from} a run directory written by "
                              "ptobj.recipes.train?")
    elif cfg.data.tokenizer.model_path:
        path = Path(cfg.data.tokenizer.model_path)
    else:
        raise ConfigError(f"objective {cfg.plan.sampler!r} reads records, which need a trained tokenizer: set "
                          "init_from (a run directory) or data.tokenizer.model_path")
    return SentencePieceTokenizer.load(path)


def read_records(cfg: TrainConfig):
    """The records of a run that reads records, before anything else is built (so an unreadable
    source, or a hub dataset with no hub, fails first): (rows, label), or the datasets of an
    instruction mixture (ptobj.data_pipeline.instructions)."""
    rc, cache = cfg.data.records, str(Path(cfg.data.cache_dir) / "records")
    if rc.mixture is not None:
        from ptobj.data_pipeline.instructions import load_mixture

        return load_mixture(rc.mixture, cache)
    from ptobj.data_pipeline.records import load_records

    return load_records(rc, cache_dir=cache)


def build_record_data(cfg: TrainConfig, transform, kw: dict, tok, records=None) -> RunData:
    """Train / held-out datasets of records (SFT, reward models; see ptobj.data_pipeline.records)."""
    from ptobj.data_pipeline.dataset import ObjectiveDataset
    from ptobj.data_pipeline.records import RecordSampler, encode_records, split_records
    from ptobj.objectives import registry

    plan, rc = cfg.plan, cfg.data.records
    records = read_records(cfg) if records is None else records
    seed = cfg.schedule.seed
    notes, run_files = [], {}
    if rc.mixture is not None:  # instruction datasets, each example rendered through a template it draws
        from ptobj.data_pipeline.instructions import InstructionSampler, mixture_json, plan_mixture

        if getattr(transform, "record_kind", None) != "conversation":
            from ptobj.recipes.engine.config import ConfigError

            raise ConfigError(f"data.records.mixture: renders conversations (SFT records); objective "
                              f"{cfg.objective.name!r} reads {getattr(transform, 'record_kind', None)!r} records")
        mixed = plan_mixture(records, rc.mixture, valid_fraction=rc.valid_fraction, seed=seed)
        notes, run_files = mixed.table().splitlines(), {"mixture.json": mixture_json(mixed)}
        valid_idx = mixed.valid_examples()

        def sampler(examples, transform, seed):
            return InstructionSampler(mixed.train, examples, transform.encode_record, tok.encode, plan.input_length,
                                      pack=plan.sampler == "records_packed", seed=seed, special=kw["special"],
                                      fill=getattr(transform, "record_fill", None))

        train_idx = mixed.examples()
    else:
        rows, label = records
        train_idx, valid_idx = split_records(rows, rc.valid_fraction)

        def sampler(indices, transform, seed):
            return RecordSampler(encode_records(rows, indices, transform, tok, rc, label), plan.input_length,
                                 pack=plan.sampler == "records_packed", seed=seed, special=kw["special"],
                                 fill=getattr(transform, "record_fill", None), label=f"records {label}",
                                 record_ids=indices)

    train = ObjectiveDataset(sampler(train_idx, transform, seed), transform, seed=seed)
    evals = {}
    if valid_idx:
        eval_seed = cfg.eval.seed if cfg.eval.seed is not None else seed + 1
        for name, suite in eval_suites(cfg).items():
            suite_transform = registry.build_spec(suite.spec, **kw)
            if registry.plan(suite.spec).sampler != plan.sampler:
                raise ValueError(f"eval.suites.{name}: a held-out suite of a records objective reads the same "
                                 "records; its sampler differs")
            evals[name] = ObjectiveDataset(sampler(valid_idx, suite_transform, eval_seed), suite_transform,
                                           seed=eval_seed)
    return RunData(prepared=None, tokenizer=tok, train=train, evals=evals, special=kw["special"],
                   vocab_size=tok.vocab_size + plan.sentinels, notes=notes, run_files=run_files)


def build_run_data(cfg: TrainConfig, info: DistInfo, progress: bool = True) -> RunData:
    from ptobj.data_pipeline.dataset import ObjectiveDataset
    from ptobj.objectives import registry

    if cfg.plan.sampler in RECORD_SAMPLERS:
        records = read_records(cfg)
        tok = record_tokenizer(cfg)
        special = tok.special.with_sentinels(tok.vocab_size, cfg.plan.sentinels)
        kw = dict(special=special, vocab_size=tok.vocab_size, tokenizer=tok)
        try:
            transform = registry.build_spec(cfg.objective_spec, **kw)
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"objective: {exc}") from exc
        return build_record_data(cfg, transform, kw, tok, records)
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
    train = ObjectiveDataset(sampler_for(plan, prepared.train, seed, special, transform=transform), transform,
                             seed=seed)
    evals = {}
    if prepared.valid is not None:
        # a fixed held-out stream: same samples at every evaluation (and, with eval.seed, in every run)
        eval_seed = cfg.eval.seed if cfg.eval.seed is not None else seed + 1
        for name, suite in eval_suites(cfg).items():
            suite_plan = registry.plan(suite.spec)
            suite_transform = registry.build_spec(suite.spec, **kw)
            sampler = sampler_for(suite_plan, prepared.valid, eval_seed, special, transform=suite_transform)
            evals[name] = ObjectiveDataset(sampler, suite_transform, seed=eval_seed)
            own = {f.name for f in plan.fields}
            if suite.fields or not {f.name for f in suite_plan.fields} <= own:
                evals[name] = Feeding(evals[name], suite.fields, own)
    return RunData(prepared=prepared, tokenizer=tok, train=train, evals=evals, special=special,
                   vocab_size=tok.vocab_size + plan.sentinels)


class Feeding:
    """A held-out dataset whose samples carry only what the trained model reads: the contract
    fields and the extra fields of the model's own heads, after ``renames`` (so a model is
    evaluated on another objective's data: ALBERT's NSP-trained model on SOP pairs)."""

    def __init__(self, dataset, renames: dict, model_fields: set):
        from ptobj.objectives.sample import CONTRACT_FIELDS

        self.dataset, self.renames = dataset, dict(renames)
        self.keep = set(CONTRACT_FIELDS) | set(model_fields)

    def _feed(self, sample: dict) -> dict:
        out = {self.renames.get(k, k): v for k, v in sample.items()}
        return {k: v for k, v in out.items() if k in self.keep}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, position):
        return self._feed(self.dataset[position])

    def read(self, positions):
        return self._feed(self.dataset.read(positions))
