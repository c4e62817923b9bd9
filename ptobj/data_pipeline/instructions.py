"""Instruction tuning as FLAN did it: labelled datasets phrased through templates, mixed.

Templates are data: one YAML file per dataset (``ptobj/data_pipeline/templates/``,
``embedded:NAME``, or any file), read by :func:`load_templates`::

    dataset: review_sentiment                 # its name (default: the file's stem)
    cluster: sentiment                        # its task cluster (held out together)
    task: classification                      # classification (the answer is an option) | generation
    source: embedded:flan_tiny/review_sentiment   # its records (a mixture entry may name another)
    split: train                              # hub datasets: the training split
    eval_split: validation                    # hub datasets: the split a held-out cluster is scored on
    fields: [review, label]                   # the record columns the templates may name
    answer: label                             # the column holding the answer: text, an index into
                                              # the options, or a list of texts (any one is right)
    options: [negative, positive]             # classification: the choices (or options_field: a
                                              # column holding each record's own)
    templates:                                # the task as it is (FLAN: ten)
      - user: "{review}\\nWas this review positive or negative?"
        assistant: "{answer}"
    turned:                                   # the task turned around (FLAN: up to three)
      - user: "Write a {answer} review."
        assistant: "{review}"

A template has a ``user`` and an ``assistant`` text (and an optional ``system``
text); ``{name}`` is a record column named in ``fields``, ``{answer}`` the
answer's text and ``{options}`` the options block (``{{`` and ``}}`` are literal
braces). Any other name is an error naming the file, the template and the field,
when the file is read; so is the answer column by its own name (``{answer}``
stands for it, and an option being ranked takes its place there). For a classification task the options block (FLAN's
``OPTIONS:`` then ``- option`` per line) is appended to the user turn of every
template that does not place it; turned-around templates get none.

:func:`render` turns (template, record) into a conversation, the SFT records of
:mod:`ptobj.objectives.sft` (system / user / assistant turns), so the SFT objective,
its loss mask and its packing are the only implementation of the training.
The template drawn for an example is keyed by ``(seed, epoch, index)`` through
:mod:`ptobj.objectives.streams` (purpose ``instruction.template``, a draw site per
dataset; :func:`draw_templates`): the same key gives the same template, and
each epoch draws anew among all of the dataset's templates, the turned-around
ones included, uniformly.

:func:`load_mixture` reads a mixture's datasets (:mod:`ptobj.data_pipeline.mixture`);
:func:`plan_mixture` holds out ``valid_fraction`` of each training dataset's records,
computes the shares, and lists the examples of an epoch; :class:`InstructionSampler`
packs them (whole conversations, several per row, as SFT packs its records) by the
longest rendering of each example, so a row holds the example whatever template
an epoch draws. :func:`zero_shot_prompts` gives the items a held-out cluster is scored on.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ptobj.data_pipeline import mixture as mix
from ptobj.data_pipeline.corpus import CorpusError
from ptobj.data_pipeline.records import RecordsConfig, RecordSampler, is_valid_document, load_records
from ptobj.extras import require
from ptobj.objectives import streams
from ptobj.objectives.sample import SpecialTokens
from ptobj.objectives.streams import RowStreams

TEMPLATES_DIR = Path(__file__).parent / "templates"
TASKS = ("classification", "generation")
SPECIAL_FIELDS = ("answer", "options")
OPTIONS_HEADER = "OPTIONS:"
_FIELD = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_KEYS = {"dataset", "cluster", "task", "source", "subset", "split", "eval_split", "fields", "answer", "options",
         "options_field", "templates", "turned", "description"}
_TEMPLATE_KEYS = ("system", "user", "assistant")


class TemplateError(CorpusError):
    """A templates file, or a record it cannot render; the message names the file (or record),
    the template and the field."""


# ----------------------------------------------------------------------------- templates


@dataclass(frozen=True)
class Template:
    name: str                  # "templates[3]" / "turned[0]", as the file lists it
    user: str
    assistant: str
    system: str = ""
    turned: bool = False

    def texts(self) -> dict[str, str]:
        return {k: getattr(self, k) for k in _TEMPLATE_KEYS if getattr(self, k)}


@dataclass(frozen=True)
class TemplateSet:
    """One dataset's templates (a YAML file, see the module doc)."""

    dataset: str
    cluster: str
    task: str
    fields: tuple[str, ...]
    answer: str
    templates: tuple[Template, ...]          # forward ones, then the turned-around ones
    options: tuple[str, ...] = ()
    options_field: str = ""
    source: str = ""
    subset: str = ""
    split: str = "train"
    eval_split: str = ""
    path: str = ""

    @property
    def forward(self) -> tuple[Template, ...]:
        return tuple(t for t in self.templates if not t.turned)

    @property
    def turned(self) -> tuple[Template, ...]:
        return tuple(t for t in self.templates if t.turned)


def template_fields(text: str) -> list[str]:
    """The ``{name}`` fields of a template text, in order (``{{`` / ``}}`` are literal braces);
    a lone brace is an error."""
    out = []
    for m in _FIELD.finditer(text):
        if m.group(0) in ("{{", "}}"):
            continue
        if m.group(1) is None:
            raise ValueError(f"a lone {m.group(0)!r} at character {m.start()} (write {m.group(0) * 2} for a brace)")
        out.append(m.group(1))
    return out


def fill(text: str, values: Mapping[str, str]) -> str:
    """``text`` with its fields replaced by ``values`` (every field must be there)."""
    def one(m):
        if m.group(0) == "{{":
            return "{"
        if m.group(0) == "}}":
            return "}"
        return values[m.group(1)]
    return _FIELD.sub(one, text)


def templates_path(spec: str, where: str = "templates") -> Path:
    """``embedded:NAME`` (``ptobj/data_pipeline/templates/NAME.yaml``) or a YAML file."""
    if spec.startswith("embedded:"):
        name = spec.removeprefix("embedded:")
        path = (TEMPLATES_DIR / f"{name}.yaml").resolve()
        if not path.is_relative_to(TEMPLATES_DIR.resolve()) or not path.is_file():
            raise TemplateError(f"{where}: no embedded templates {name!r}; known: {embedded_templates()}")
        return path
    path = Path(spec).expanduser()
    if not path.is_file():
        raise TemplateError(f"{where}: templates file {path} does not exist (or is not a file)")
    return path


def embedded_templates() -> list[str]:
    return sorted(p.stem for p in TEMPLATES_DIR.glob("*.yaml"))


def load_templates(spec: str | Path, where: str = "templates") -> TemplateSet:
    """Read and check a templates file (``embedded:NAME`` or a path); errors name the file, the
    template and the field."""
    require("data", "yaml", by=__name__)
    import yaml

    path = templates_path(str(spec), where)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise TemplateError(f"templates file {path}: not valid YAML: {exc}") from None
    return templates_from_dict(data, str(path), default_name=path.stem)


def templates_from_dict(data: Any, label: str, default_name: str = "") -> TemplateSet:
    """A :class:`TemplateSet` from a templates file's content (``label`` names it in errors)."""
    at = f"templates file {label}"
    if not isinstance(data, dict):
        raise TemplateError(f"{at}: expected a mapping at the top, got {type(data).__name__}")
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise TemplateError(f"{at}: unknown key {unknown[0]!r}; known: {sorted(_KEYS)}")

    def text(key: str, default: str = "") -> str:
        v = data.get(key, default)
        if v is None:
            v = default
        if not isinstance(v, str):
            raise TemplateError(f"{at}: {key}: expected text, got {v!r}")
        return v

    dataset, cluster, task = text("dataset", default_name), text("cluster"), text("task", "classification")
    if not dataset:
        raise TemplateError(f"{at}: dataset: empty")
    if not cluster:
        raise TemplateError(f"{at}: cluster: empty; name the task cluster (nli, sentiment, qa, ...)")
    if task not in TASKS:
        raise TemplateError(f"{at}: task: {task!r} is not one of {TASKS}")
    fields = data.get("fields")
    if not isinstance(fields, list) or not fields or not all(isinstance(f, str) and f.isidentifier() for f in fields):
        raise TemplateError(f"{at}: fields: expected a list of column names, got {fields!r}")
    answer, options, options_field = text("answer"), data.get("options") or [], text("options_field")
    if answer not in fields:
        raise TemplateError(f"{at}: answer: {answer!r} is not one of the fields {fields}")
    clash = [f for f in fields if (f == "answer" and f != answer) or (f == "options" and f != options_field)]
    if clash:
        raise TemplateError(f"{at}: fields: a column named {clash[0]!r} that is not the {clash[0]} column; "
                            "{answer} is the answer's text and {options} the options block")
    if not isinstance(options, list) or not all(isinstance(o, str) and o for o in options):
        raise TemplateError(f"{at}: options: expected a list of texts, got {options!r}")
    if len(set(options)) != len(options):
        raise TemplateError(f"{at}: options: an option named twice: {options}")
    if task == "classification":
        if bool(options) == bool(options_field):
            raise TemplateError(f"{at}: a classification task needs options (a list) or options_field (a column), "
                                "one of them")
        if options_field and options_field not in fields:
            raise TemplateError(f"{at}: options_field: {options_field!r} is not one of the fields {fields}")
        if options and len(options) < 2:
            raise TemplateError(f"{at}: options: a classification task needs at least 2, got {options}")
    elif options or options_field:
        raise TemplateError(f"{at}: options: a generation task has none (task: classification ranks them)")
    known = [f for f in fields if f not in (answer, options_field, *SPECIAL_FIELDS)] + ["answer"]
    if task == "classification":
        known.append("options")
    templates = []
    for group in ("templates", "turned"):
        listed = data.get(group) or []
        if not isinstance(listed, list) or (group == "templates" and not listed):
            raise TemplateError(f"{at}: {group}: expected a list of templates ({{user, assistant}} each), "
                                f"got {listed!r}")
        for i, t in enumerate(listed):
            name = f"{group}[{i}]"
            if not isinstance(t, dict):
                raise TemplateError(f"{at}: {name}: expected a mapping of {_TEMPLATE_KEYS}, got {t!r}")
            bad = sorted(set(t) - set(_TEMPLATE_KEYS))
            if bad:
                raise TemplateError(f"{at}: {name}: unknown key {bad[0]!r}; a template has {list(_TEMPLATE_KEYS)}")
            for key in _TEMPLATE_KEYS:
                v = t.get(key, "")
                if key != "system" and (not isinstance(v, str) or not v.strip()):
                    raise TemplateError(f"{at}: {name}.{key}: expected non-empty text, got {v!r}")
                if not isinstance(v, str):
                    raise TemplateError(f"{at}: {name}.{key}: expected text, got {v!r}")
                try:
                    used = template_fields(v)
                except ValueError as exc:
                    raise TemplateError(f"{at}: {name}.{key}: {exc}") from None
                for f in used:
                    if f in (answer, options_field) and f not in SPECIAL_FIELDS:
                        raise TemplateError(f"{at}: {name}.{key}: {{{f}}} is the {'answer' if f == answer else 'options'}"
                                            f" column; write {{{'answer' if f == answer else 'options'}}}")
                    if f not in known:
                        raise TemplateError(f"{at}: {name}.{key}: unknown field {{{f}}}; the fields are "
                                            f"{', '.join(known)}")
            if group == "templates" and "answer" not in template_fields(t["assistant"]):
                raise TemplateError(f"{at}: {name}.assistant: a template of the task as it is answers with "
                                    "{answer} (how its options are ranked and its answers matched)")
            templates.append(Template(name, t["user"], t["assistant"], t.get("system") or "", group == "turned"))
    return TemplateSet(dataset=dataset, cluster=cluster, task=task, fields=tuple(fields), answer=answer,
                       templates=tuple(templates), options=tuple(options), options_field=options_field,
                       source=text("source"), subset=text("subset"), split=text("split", "train") or "train",
                       eval_split=text("eval_split"), path=label)


# ----------------------------------------------------------------------------- rendering


def options_block(options: Sequence[str]) -> str:
    """FLAN's options suffix: ``OPTIONS:`` then ``- option`` per line."""
    return "\n".join([OPTIONS_HEADER, *(f"- {o}" for o in options)])


def _scalar(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TemplateError(f"{where}: expected text or a number, got {type(value).__name__}")
    return str(value)


def record_options(ts: TemplateSet, record: Mapping, where: str) -> tuple[str, ...]:
    """The choices of a classification record (the file's, or its own column's)."""
    if ts.task != "classification":
        return ()
    if not ts.options_field:
        return ts.options
    value = record.get(ts.options_field)
    if not isinstance(value, list) or len(value) < 2 or not all(isinstance(o, str) and o for o in value):
        raise TemplateError(f"{where}.{ts.options_field}: expected a list of at least 2 options, got {value!r}")
    return tuple(value)


def answers(ts: TemplateSet, record: Mapping, where: str) -> tuple[list[str], int | None]:
    """(the acceptable answer texts, the first being the one trained on; the index of the answer
    among the options for a classification task, else None)."""
    if ts.answer not in record or record[ts.answer] is None:
        raise TemplateError(f"{where}: no field {ts.answer!r} (the answer); the record has {sorted(record)}")
    value = record[ts.answer]
    at = f"{where}.{ts.answer}"
    if ts.task == "classification":
        options = record_options(ts, record, where)
        if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
            if not 0 <= int(value) < len(options):
                raise TemplateError(f"{at}: {int(value)} is not an index into the {len(options)} options {list(options)}")
            return [options[int(value)]], int(value)
        if isinstance(value, str):
            if value not in options:
                raise TemplateError(f"{at}: {value!r} is not one of the options {list(options)}")
            return [value], options.index(value)
        raise TemplateError(f"{at}: expected an option (text) or its index, got {value!r}")
    if isinstance(value, list):
        texts = [_scalar(v, at) for v in value]
        if not texts or not all(t.strip() for t in texts):
            raise TemplateError(f"{at}: expected a non-empty list of non-empty answers, got {value!r}")
        return texts, None
    text = _scalar(value, at)
    if not text.strip():
        raise TemplateError(f"{at}: an empty answer")
    return [text], None


def values(ts: TemplateSet, record: Mapping, where: str, answer: str | None = None) -> dict[str, str]:
    """The texts a template's fields take for ``record`` (``answer``: another answer text, e.g. an
    option being ranked)."""
    out = {}
    for f in ts.fields:
        if f in (ts.answer, ts.options_field):
            continue
        if f not in record or record[f] is None:
            raise TemplateError(f"{where}: no field {f!r}; the record has {sorted(record)}")
        out[f] = _scalar(record[f], f"{where}.{f}")
    texts, _ = answers(ts, record, where)
    out["answer"] = texts[0] if answer is None else answer
    out["options"] = options_block(record_options(ts, record, where)) if ts.task == "classification" else ""
    return out


def prompt_messages(ts: TemplateSet, template: Template, record: Mapping, where: str = "record") -> list[dict]:
    """The template's system and user turns for ``record``: the prompt, the options block
    appended to the user turn of a classification task's forward template (unless placed)."""
    vals = values(ts, record, where)
    at = f"{where} ({ts.dataset} {template.name})"
    try:
        user = fill(template.user, vals)
        system = fill(template.system, vals) if template.system else ""
    except KeyError as exc:  # load_templates checked the names; a hand-made Template may not be
        raise TemplateError(f"{at}: unknown field {{{exc.args[0]}}}") from None
    if ts.task == "classification" and not template.turned and "options" not in template_fields(template.user) \
            and "options" not in template_fields(template.system):
        user = f"{user}\n\n{vals['options']}"
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]


def assistant_text(ts: TemplateSet, template: Template, record: Mapping, where: str = "record",
                   answer: str | None = None) -> str:
    """The template's assistant turn for ``record`` (with ``answer`` in place of the record's)."""
    try:
        return fill(template.assistant, values(ts, record, where, answer))
    except KeyError as exc:
        raise TemplateError(f"{where} ({ts.dataset} {template.name}): unknown field {{{exc.args[0]}}}") from None


def render(ts: TemplateSet, template: Template, record: Mapping, where: str = "record") -> list[dict]:
    """(template, record) -> a conversation ``[system?, user, assistant]`` (an SFT record)."""
    return [*prompt_messages(ts, template, record, where),
            {"role": "assistant", "content": assistant_text(ts, template, record, where)}]


def check_record(ts: TemplateSet, record: Mapping, where: str) -> None:
    """Fail, naming the record and field, when ``record`` cannot fill the templates."""
    if not isinstance(record, Mapping):
        raise TemplateError(f"{where}: expected a mapping of columns, got {type(record).__name__}")
    values(ts, record, where)


# ----------------------------------------------------------------------------- the template draw

_PURPOSE = "instruction.template"


def draw_templates(count: int, seed: int, epoch, index, dataset: str) -> np.ndarray:
    """The template (0 .. count-1) of each example ``(seed, epoch, index)`` of ``dataset``: uniform,
    keyed through :mod:`ptobj.objectives.streams` (purpose ``instruction.template``, a site per
    dataset). ``epoch`` and ``index`` are ints or arrays (broadcast); int64 [B]."""
    if count < 1:
        raise ValueError(f"draw_templates: count must be >= 1, got {count}")
    rows = RowStreams.for_rows(int(seed), epoch, index, purpose=_PURPOSE)
    return rows.integers_at(streams.site(f"instructions.template:{dataset}"), np.arange(len(rows)), 0, 0, count)


# ----------------------------------------------------------------------------- a mixture


@dataclass
class Dataset:
    """One dataset of a mixture, read: its templates and records."""

    templates: TemplateSet
    rows: list[dict]
    label: str          # where the records came from
    where: str          # the config entry (data.records.mixture.datasets.3)
    held_out: bool

    @property
    def name(self) -> str:
        return self.templates.dataset

    @property
    def cluster(self) -> str:
        return self.templates.cluster


def load_mixture(cfg: mix.MixtureConfig, cache_dir: str | None = None, where: str = "data.records.mixture",
                 only_held_out: bool = False) -> list[Dataset]:
    """Read every dataset of the mixture (training ones from their training split, held-out ones
    from their evaluation split) and check that each record fills its templates."""
    sets = [load_templates(d.templates, f"{where}.datasets.{i}.templates") for i, d in enumerate(cfg.datasets)]
    names = [ts.dataset for ts in sets]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise TemplateError(f"{where}.datasets: dataset {twice[0]!r} listed twice")
    clusters = sorted({ts.cluster for ts in sets})
    for c in cfg.held_out:
        if c not in clusters:
            raise TemplateError(f"{where}.held_out: no dataset of cluster {c!r}; the clusters are {clusters}")
    if not only_held_out and not [ts for ts in sets if ts.cluster not in cfg.held_out]:
        raise TemplateError(f"{where}.held_out: {list(cfg.held_out)} leaves no dataset to train on")
    out = []
    for i, (entry, ts) in enumerate(zip(cfg.datasets, sets)):
        held = ts.cluster in cfg.held_out
        if only_held_out and not held:
            continue
        at = f"{where}.datasets.{i}"
        split = (entry.eval_split or ts.eval_split or entry.split or ts.split) if held else (entry.split or ts.split)
        rc = RecordsConfig(source=entry.source or ts.source, subset=entry.subset or ts.subset, split=split,
                           max_records=entry.max_records)
        if not rc.source:
            raise TemplateError(f"{at}.source: empty, and {ts.path} names no source")
        rows, label = load_records(rc, cache_dir, where=f"{at}.source")
        for r, row in enumerate(rows):
            check_record(ts, row, f"records {label}: record {r}")
        out.append(Dataset(ts, rows, label, at, held))
    return out


@dataclass(frozen=True)
class Example:
    """An example of an epoch: record ``record`` of dataset ``dataset`` (an index into the plan's
    datasets), its template drawn by ``key`` (the example's index within its dataset)."""

    dataset: int
    record: int
    key: int


@dataclass
class MixturePlan:
    """The training side of a mixture: shares, the examples of an epoch, the held-out records."""

    config: mix.MixtureConfig
    datasets: list[Dataset]                 # training datasets, then held-out ones
    train_ids: list[list[int]]              # per training dataset: its training records
    valid_ids: list[list[int]]              # per training dataset: its held-out records (valid_fraction)
    shares: list[float]
    per_epoch: list[int]                    # c_d: examples per mixture epoch
    passes: int                             # mixture epochs per sampler epoch
    seed: int

    @property
    def train(self) -> list[Dataset]:
        return [d for d in self.datasets if not d.held_out]

    @property
    def held_out(self) -> list[Dataset]:
        return [d for d in self.datasets if d.held_out]

    def examples(self) -> list[Example]:
        """The examples of one sampler epoch: dataset d's ``c_d * P`` slots, slot j holding its
        training record ``perm_d[j mod n_d]`` (``perm_d`` drawn from the seed)."""
        out = []
        for d, (ds, ids, c) in enumerate(zip(self.train, self.train_ids, self.per_epoch)):
            if not ids or not c:
                continue
            perm = streams.generator("instruction.mixture", self.seed, streams.site(ds.name)).permutation(len(ids))
            out += [Example(d, ids[int(perm[j % len(ids)])], j) for j in range(c * self.passes)]
        return out

    def valid_examples(self) -> list[Example]:
        """Each held-out record of the training datasets once."""
        return [Example(d, r, j) for d, ids in enumerate(self.valid_ids) for j, r in enumerate(ids)]

    def report(self) -> dict:
        """What ``mixture.json`` holds: the rates and each dataset's share."""
        cfg = self.config
        rate = {"examples": "examples-proportional", "temperature": "temperature-scaled (T5)"}[cfg.rate]
        return {
            "rate": cfg.rate, "description": rate, "cap": cfg.cap, "temperature": cfg.temperature,
            "examples_per_mixture_epoch": sum(self.per_epoch), "passes_per_epoch": self.passes,
            "examples_per_epoch": sum(self.per_epoch) * self.passes, "held_out_clusters": list(cfg.held_out),
            "datasets": [{"dataset": d.name, "cluster": d.cluster, "source": d.label, "task": d.templates.task,
                          "templates": len(d.templates.forward), "turned": len(d.templates.turned),
                          "records": len(d.rows), "train_records": len(t), "heldout_records": len(v),
                          "share": s, "per_mixture_epoch": c, "per_epoch": c * self.passes}
                         for d, t, v, s, c in zip(self.train, self.train_ids, self.valid_ids, self.shares,
                                                  self.per_epoch)],
            "held_out": [{"dataset": d.name, "cluster": d.cluster, "source": d.label, "task": d.templates.task,
                          "templates": len(d.templates.forward), "records": len(d.rows)} for d in self.held_out],
        }

    def table(self) -> str:
        """The shares as printed at the start of a run."""
        r = self.report()
        how = f"cap K={r['cap']}" if r["cap"] else "no cap"
        if r["rate"] == "temperature":
            how += f", T={r['temperature']:g}"
        held = ", ".join(f"{c} ({', '.join(d['dataset'] for d in r['held_out'] if d['cluster'] == c)})"
                         for c in r["held_out_clusters"]) or "none"
        lines = [f"[mixture] {r['description']}, {how}: {len(r['datasets'])} datasets in "
                 f"{len({d['cluster'] for d in r['datasets']})} clusters, {r['examples_per_mixture_epoch']} examples "
                 f"per mixture epoch, {r['passes_per_epoch']} mixture epoch(s) ({r['examples_per_epoch']} examples) per "
                 f"sampler epoch; held out (zero-shot): {held}",
                 f"  {'dataset':<20} {'cluster':<12} {'train':>6} {'valid':>6} {'share':>8} {'per epoch':>9}  templates"]
        for d in r["datasets"]:
            lines.append(f"  {d['dataset']:<20} {d['cluster']:<12} {d['train_records']:>6} {d['heldout_records']:>6} "
                         f"{d['share']:>8.4f} {d['per_mixture_epoch']:>9}  {d['templates']}+{d['turned']} turned")
        return "\n".join(lines)


def plan_mixture(datasets: Sequence[Dataset], cfg: mix.MixtureConfig, *, valid_fraction: float = 0.0,
                 seed: int = 0) -> MixturePlan:
    """Shares and examples of a mixture: ``valid_fraction`` of each training dataset's records held
    out (by content hash), the rest mixed by ``cfg.rate``."""
    train = [d for d in datasets if not d.held_out]
    held = [d for d in datasets if d.held_out]
    train_ids, valid_ids = [], []
    for d in train:
        t, v = [], []
        for r, row in enumerate(d.rows):
            text = json.dumps(row, sort_keys=True, ensure_ascii=False, default=str)
            (v if is_valid_document(text, valid_fraction) else t).append(r)
        if not t:
            raise TemplateError(f"{d.where}: {d.label}: no training records left after valid_fraction="
                                f"{valid_fraction}")
        train_ids.append(t)
        valid_ids.append(v)
    sizes = [len(t) for t in train_ids]
    shares = mix.rates(sizes, rate=cfg.rate, cap=cfg.cap, temperature=cfg.temperature)
    per_epoch = mix.counts(shares, mix.epoch_size(sizes, cfg.cap))
    return MixturePlan(cfg, [*train, *held], train_ids, valid_ids, shares, per_epoch,
                       mix.passes(sizes, per_epoch), int(seed))


class InstructionSampler(RecordSampler):
    """Packed rows of rendered examples: each epoch renders example ``i`` with the template
    :func:`draw_templates` gives ``(seed, epoch, example.key)`` and encodes it as the transform
    encodes a conversation (``encode_record``: SFT's chat template and response mask). Packing
    is the record sampler's, once, by each example's longest rendering."""

    def __init__(self, datasets: Sequence[Dataset], examples: Sequence[Example], encode_record: Callable,
                 encode: Callable[[str], Sequence[int]], length: int, *, pack: bool = True, seed: int = 0,
                 shuffle: bool = True, special: SpecialTokens | None = None, fill: dict | None = None,
                 label: str = "instruction mixture"):
        if not examples:
            raise CorpusError(f"{label}: no examples to sample")
        self.datasets, self.examples = list(datasets), list(examples)
        self._encode_record, self._encode = encode_record, encode
        bound: dict[tuple[int, int], int] = {}
        fields = None
        for ex in self.examples:
            k = (ex.dataset, ex.record)
            if k in bound:
                continue
            ds = self.datasets[ex.dataset]
            lengths = []
            for t in range(len(ds.templates.templates)):
                enc = self._encoded(ex, t)
                fields = fields or list(enc)
                lengths.append(len(enc["tokens"]))
            bound[k] = max(lengths)
        self.bounds = [bound[(ex.dataset, ex.record)] for ex in self.examples]
        self._setup(self.bounds, fields, length, pack=pack, seed=seed, shuffle=shuffle, special=special, fill=fill,
                    label=label, record_ids=None)

    def _encoded(self, ex: Example, template: int) -> dict:
        ds = self.datasets[ex.dataset]
        where = f"records {ds.label}: record {ex.record}"
        messages = render(ds.templates, ds.templates.templates[template], ds.rows[ex.record], where)
        try:
            return self._encode_record(messages, self._encode, where)
        except ValueError as exc:
            raise CorpusError(str(exc)) from None

    def template_of(self, i: int, epoch: int) -> int:
        """The template example ``i`` takes in ``epoch``."""
        ex = self.examples[i]
        ds = self.datasets[ex.dataset]
        return int(draw_templates(len(ds.templates.templates), self.seed, epoch, ex.key, ds.name)[0])

    def record(self, r: int, epoch: int) -> dict:
        return self._encoded(self.examples[r], self.template_of(r, epoch))


# ----------------------------------------------------------------------------- held-out prompts


@dataclass(frozen=True)
class Prompt:
    """One zero-shot item under one template: the prompt turns and the candidate assistant turns
    (classification: one per option, ``label`` the right one; generation: one per acceptable answer)."""

    dataset: str
    cluster: str
    task: str
    record: int
    template: str
    messages: tuple = ()
    targets: tuple[str, ...] = ()
    label: int | None = None


def zero_shot_prompts(ds: Dataset, *, max_items: int = 0, templates: int = 0, seed: int = 0) -> list[Prompt]:
    """A held-out dataset's items (all records, or a seeded subset of ``max_items``), each under
    every forward template (``templates`` = 0) or under ``templates`` of them drawn per item
    (keyed by ``(seed, record)``)."""
    ts = ds.templates
    n = len(ds.rows)
    records = np.arange(n)
    if max_items and max_items < n:
        perm = streams.generator("instruction.mixture", int(seed), streams.site(f"zero_shot:{ts.dataset}"))
        records = np.sort(perm.permutation(n)[:max_items])
    forward = ts.forward
    if templates and templates < len(forward):
        u = RowStreams.for_rows(int(seed), 0, records, purpose=_PURPOSE).uniform(
            streams.site(f"instructions.zero_shot:{ts.dataset}"), len(forward))
        chosen = np.sort(np.argsort(u, axis=1, kind="stable")[:, :templates], axis=1)
    else:
        chosen = np.tile(np.arange(len(forward)), (len(records), 1))
    out = []
    for r, picks in zip(records.tolist(), chosen):
        row = ds.rows[r]
        where = f"records {ds.label}: record {r}"
        texts, label = answers(ts, row, where)
        for t in picks.tolist():
            tpl = forward[t]
            cands = record_options(ts, row, where) if ts.task == "classification" else texts
            out.append(Prompt(ts.dataset, ts.cluster, ts.task, r, tpl.name,
                              tuple(prompt_messages(ts, tpl, row, where)),
                              tuple(assistant_text(ts, tpl, row, where, answer=c) for c in cands), label))
    return out


def mixture_json(plan: MixturePlan) -> str:
    return json.dumps(plan.report(), indent=1)


def chance(prompts: Sequence[Prompt]) -> float:
    """The expected accuracy of a uniform guess among each classification prompt's options."""
    cls = [p for p in prompts if p.task == "classification"]
    return math.fsum(1.0 / len(p.targets) for p in cls) / len(cls) if cls else math.nan
