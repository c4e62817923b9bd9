"""Objectives by name: their Task declarations, typed specs, and what a spec implies.

    t = build("macbert", {"seq_length": 128}, special=SpecialTokens(), vocab_size=32000)

Every module of this package that defines ``TASKS`` (see :mod:`ptobj.objectives.task`)
is found on first use; ``register(task)`` adds an objective of one's own.

A *spec* names what to train, as plain data (YAML) or typed:

* ``{"name": "fim", "config": {...}}``  ->  :class:`Objective` (name + typed config)
* ``{"compose": [spec, ...]}``          ->  :class:`Composed` (run in order)
* ``{"mix": [{"weight": w, **spec}, ...], "tag_field": ...}``  ->  :class:`Mixed`

:func:`parse` converts plain data to the typed tree once, naming the dotted path
of any bad key or value; :func:`plan` derives from a typed spec what the rest of
the system needs (model kind, sampler and input length, losses and their extra
fields, segment types, held-out suites), refusing specs whose parts disagree.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any, Mapping, Union

from ptobj.objectives.sample import SpecialTokens
from ptobj.objectives.task import SERVES, ExtraField, Task

_TASKS: dict[str, Task] = {}
_DISCOVERED = False


def _discover() -> None:
    """Import the package's modules once and collect their ``TASKS``."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    from ptobj import objectives

    found: dict[str, Task] = {}
    for info in pkgutil.iter_modules(objectives.__path__):
        module = importlib.import_module(f"{objectives.__name__}.{info.name}")
        for task in getattr(module, "TASKS", ()):
            if task.name in found:
                raise RuntimeError(f"objective {task.name!r} is declared twice "
                                   f"({found[task.name].transform.__module__} and {module.__name__})")
            found[task.name] = task
    for name, task in found.items():
        _TASKS.setdefault(name, task)  # register() before discovery wins
    _DISCOVERED = True


def names() -> list[str]:
    _discover()
    return sorted(_TASKS)


def register(task: Task) -> None:
    """Add (or replace) an objective declared outside this package."""
    if not isinstance(task, Task):
        raise TypeError(f"register: expected an ptobj.objectives.task.Task, got {type(task).__name__}")
    _discover()
    _TASKS[task.name] = task


def task(name: str) -> Task:
    _discover()
    if name not in _TASKS:
        raise KeyError(f"unknown objective {name!r}; known: {names()}")
    return _TASKS[name]


def transform_class(name: str) -> type:
    return task(name).transform


def config_class(name: str) -> type:
    return task(name).config


# ----------------------------------------------------------------------------- typed specs


@dataclass(frozen=True)
class Objective:
    name: str
    config: Any  # the objective's frozen config dataclass


@dataclass(frozen=True)
class Composed:
    parts: tuple


@dataclass(frozen=True)
class Mixed:
    members: tuple  # ((weight, spec), ...)
    tag_field: str | None = None


Spec = Union[Objective, Composed, Mixed]


def _tuplify(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuplify(v) for v in value)
    return value


def make_config(name: str, config: Mapping[str, Any] | None = None, *, defaults: Mapping[str, Any] | None = None,
                where: str | None = None):
    """Dict -> the objective's config dataclass. Unknown keys are rejected by name; ``defaults``
    fill fields the dict leaves out (e.g. ``seq_length`` from the data config) and must agree
    with the dict where it sets them. Errors start with ``where`` (default: the name)."""
    where = where or name
    cls = config_class(name)
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        if not isinstance(config, cls):
            raise TypeError(f"{where}: config is a {type(config).__name__}, expected {cls.__name__}")
        config = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    config = dict(config or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"{where}.{unknown[0]}: unknown key; {cls.__name__} knows {sorted(known)}")
    for key, value in (defaults or {}).items():
        if key not in known:
            continue
        if config.get(key) is None:
            config[key] = value
        elif config[key] != value:
            raise ValueError(f"{where}.{key}={config[key]!r} differs from the data's {key}={value!r}")
    try:
        return cls(**{k: _tuplify(v) for k, v in config.items()})
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{where}: {exc}") from exc


def parse(spec: Mapping[str, Any] | Spec, *, defaults: Mapping[str, Any] | None = None,
          where: str = "objective") -> Spec:
    """Plain spec -> typed spec (a typed spec passes through, re-checked against ``defaults``)."""
    if isinstance(spec, Objective):
        return Objective(spec.name, make_config(spec.name, spec.config, defaults=defaults, where=f"{where}.config"))
    if isinstance(spec, Composed):
        return Composed(tuple(parse(p, defaults=defaults, where=f"{where}.compose.{i}")
                              for i, p in enumerate(spec.parts)))
    if isinstance(spec, Mixed):
        return Mixed(tuple((w, parse(s, defaults=defaults, where=f"{where}.mix.{i}"))
                           for i, (w, s) in enumerate(spec.members)), spec.tag_field)
    if not isinstance(spec, Mapping):
        raise ValueError(f"{where}: expected a mapping, got {spec!r}")
    keys = set(spec)
    if "compose" in keys:
        if keys != {"compose"}:
            raise ValueError(f"{where}: a compose spec takes only 'compose', got keys {sorted(keys)}")
        parts = spec["compose"]
        if not parts:
            raise ValueError(f"{where}.compose: must not be empty")
        return Composed(tuple(parse(p, defaults=defaults, where=f"{where}.compose.{i}") for i, p in enumerate(parts)))
    if "mix" in keys:
        extra = keys - {"mix", "tag_field"}
        if extra:
            raise ValueError(f"{where}.{sorted(extra)[0]}: unknown key; a mix spec takes 'mix' and 'tag_field'")
        members = []
        if not spec["mix"]:
            raise ValueError(f"{where}.mix: must not be empty")
        for i, m in enumerate(spec["mix"]):
            if not isinstance(m, Mapping) or "weight" not in m:
                raise ValueError(f"{where}.mix.{i}: needs 'weight' beside the objective, got {m!r}")
            rest = {k: v for k, v in m.items() if k != "weight"}
            members.append((float(m["weight"]), parse(rest, defaults=defaults, where=f"{where}.mix.{i}")))
        return Mixed(tuple(members), spec.get("tag_field"))
    extra = keys - {"name", "config"}
    if "name" not in keys:
        raise ValueError(f"{where}: needs 'name' (or 'compose' / 'mix'); got keys {sorted(keys)}")
    if extra:
        raise ValueError(f"{where}.{sorted(extra)[0]}: unknown key; an objective spec takes 'name' and 'config'")
    name = spec["name"]
    try:
        task(name)
    except KeyError as exc:
        raise ValueError(f"{where}.name: {exc.args[0]}") from None
    return Objective(name, make_config(name, spec.get("config"), defaults=defaults, where=f"{where}.config"))


def to_dict(spec: Spec) -> dict:
    """Typed spec -> plain data (what :func:`parse` reads)."""
    if isinstance(spec, Objective):
        return {"name": spec.name, "config": {f.name: _plain(getattr(spec.config, f.name))
                                              for f in dataclasses.fields(spec.config)}}
    if isinstance(spec, Composed):
        return {"compose": [to_dict(p) for p in spec.parts]}
    out = {"mix": [{"weight": w, **to_dict(s)} for w, s in spec.members]}
    if spec.tag_field:
        out["tag_field"] = spec.tag_field
    return out


def _plain(value):
    return [_plain(v) for v in value] if isinstance(value, tuple) else value


def leaves(spec: Spec) -> list[Objective]:
    if isinstance(spec, Objective):
        return [spec]
    if isinstance(spec, Composed):
        return [leaf for p in spec.parts for leaf in leaves(p)]
    return [leaf for _, s in spec.members for leaf in leaves(s)]


# ----------------------------------------------------------------------------- what a spec implies


@dataclass(frozen=True)
class Plan:
    """What a (typed) spec needs from the rest of the system."""

    model: str                          # "decoder" | "encoder"
    sampler: str
    input_length: int                   # tokens per raw sample (the least any reader holds)
    losses: dict                        # loss name -> head kind
    fields: tuple[ExtraField, ...]      # extra sample fields, one entry per name
    segment_types: int
    evals: dict                         # held-out suite name -> typed spec
    special: tuple[str, ...]
    sentinels: int                      # span sentinels the tokenizer must reserve
    needs_tokenizer: bool
    evaluations: dict                   # name -> ptobj.objectives.task.Evaluation (beyond held-out losses)


def _first_input(spec: Spec) -> list[Objective]:
    """The leaves that read raw samples (the first of a composition; every member of a mix)."""
    if isinstance(spec, Objective):
        return [spec]
    if isinstance(spec, Composed):
        return _first_input(spec.parts[0])
    return [leaf for _, s in spec.members for leaf in _first_input(s)]


def _agree(values: dict[str, Any], what: str) -> Any:
    distinct = set(values.values())
    if len(distinct) != 1:
        raise ValueError(f"objective: the parts disagree on {what}: "
                         + ", ".join(f"{k} -> {v!r}" for k, v in values.items()))
    return distinct.pop()


def plan(spec: Spec) -> Plan:
    """Derive the :class:`Plan` of a typed spec; parts that disagree are an error naming them."""
    all_leaves = leaves(spec)
    if not all_leaves:
        raise ValueError("objective: the spec has no objectives")
    tasks = [(leaf, task(leaf.name)) for leaf in all_leaves]
    model = _agree({leaf.name: t.model for leaf, t in tasks}, "the model kind")
    readers = [(leaf, task(leaf.name)) for leaf in _first_input(spec)]
    wanted = {leaf.name: t.sampler_for(leaf.config) for leaf, t in readers}
    serving = [s for s, fed in SERVES.items() if set(wanted.values()) <= set(fed)]
    if not serving:
        _agree(wanted, "the sampler")
    sampler = min(serving, key=lambda s: len(SERVES[s]))  # the plainest sampler that feeds them all
    if sampler == "packed_documents" and len(readers) != 1:
        raise ValueError("objective: a document-level stage (sampler 'packed_documents') rewrites documents "
                         "before packing for one objective; it cannot feed a mix "
                         f"({', '.join(leaf.name for leaf, _ in readers)})")
    # the sampler cuts what every reader holds whole (a wider member pads instead of dropping tokens)
    length = min(int(t.input_length(leaf.config)) for leaf, t in readers)
    losses: dict[str, str] = {}
    for leaf, t in tasks:
        for loss, kind in t.losses_for(leaf.config).items():
            if losses.setdefault(loss, kind) != kind:
                raise ValueError(f"objective: loss {loss!r} is computed by head {losses[loss]!r} in one part "
                                 f"and {kind!r} in {leaf.name!r}")
    fields = {}
    for leaf, t in tasks:
        for f in t.fields_for(leaf.config):
            fields.setdefault(f.name, f)
    evals: dict[str, Spec] = {}
    default_suite = False
    for leaf, t in tasks:
        if t.evals is None:
            default_suite = True
            continue
        for suite, (name, config) in t.evals(leaf.config).items():
            evals.setdefault(suite, Objective(name, config))
    if default_suite:
        evals.setdefault("heldout", spec)
    return Plan(model=model, sampler=sampler, input_length=length, losses=losses, fields=tuple(fields.values()),
                segment_types=max(t.segment_types for _, t in tasks), evals=evals,
                special=tuple(dict.fromkeys(s for _, t in tasks for s in t.special)),
                sentinels=max(t.sentinels_for(leaf.config) for leaf, t in tasks),
                needs_tokenizer=any(t.needs_tokenizer for _, t in tasks),
                evaluations={name: ev for leaf, t in tasks for name, ev in t.evaluations_for(leaf.config).items()})


# ----------------------------------------------------------------------------- building


def build(name: str, config: Mapping[str, Any] | Any = None, *, special: SpecialTokens | None = None,
          vocab_size: int, tokenizer=None, **extra):
    """Build the named objective. ``extra`` goes to the constructor (e.g. MacBERT's ``similar``).
    Without ``special``, the default reserved ids with the sentinels the objective declares."""
    cfg = make_config(name, config)
    special = special or SpecialTokens().with_sentinels(vocab_size, task(name).sentinels_for(cfg))
    return transform_class(name)(cfg, special=special, vocab_size=vocab_size, tokenizer=tokenizer, **extra)


def build_spec(spec: Mapping[str, Any] | Spec, *, special: SpecialTokens | None = None, vocab_size: int,
               tokenizer=None):
    """Build the transform of a spec (plain or typed). A mix fills the extra fields its chosen member
    did not write with the declared neutral values."""
    from ptobj.objectives.compose import Compose, MixByWeight

    spec = parse(spec)
    kw = dict(special=special, vocab_size=vocab_size, tokenizer=tokenizer)
    if isinstance(spec, Objective):
        return build(spec.name, spec.config, **kw)
    if isinstance(spec, Composed):
        return Compose([build_spec(p, **kw) for p in spec.parts])
    fill = {f.name: ("per_token" if f.per_token else "scalar", f.neutral) for f in plan(spec).fields}
    return MixByWeight([(w, build_spec(s, **kw)) for w, s in spec.members], fill=fill,
                       tag_field=spec.tag_field)
