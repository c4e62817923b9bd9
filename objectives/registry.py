"""Objectives by name, imported lazily, built from plain config dicts (YAML).

    t = build("macbert", {"seq_length": 128}, special=SpecialTokens(), vocab_size=32000)

A name maps to ``"module:Class"`` strings, so this module imports nothing until
``build`` is called and a user can register an objective of their own. Config
dicts become the objective's frozen config dataclass; unknown keys are rejected
with the key named; lists become tuples (YAML has no tuples).

Specs combine objectives: ``{"name": ..., "config": {...}}``,
``{"compose": [spec, ...]}`` and ``{"mix": [{"weight": w, **spec}, ...]}``.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Mapping

from objectives.sample import SpecialTokens

_REGISTRY: dict[str, tuple[str, str]] = {
    "causal_lm": ("objectives.causal_lm:CausalLM", "objectives.causal_lm:CausalLMConfig"),
    "fim": ("objectives.fim:FIM", "objectives.fim:FIMConfig"),
    "mlm": ("objectives.mlm:MLM", "objectives.mlm:MLMConfig"),
    "spanbert": ("objectives.spanbert:SpanBERT", "objectives.spanbert:SpanBERTConfig"),
    "unilm": ("objectives.unilm:UniLM", "objectives.unilm:UniLMConfig"),
    "macbert": ("objectives.macbert:MacBERT", "objectives.macbert:MacBERTConfig"),
    "sop": ("objectives.sentence_pairs:SOP", "objectives.sentence_pairs:SOPConfig"),
    "nsp": ("objectives.sentence_pairs:NSP", "objectives.sentence_pairs:NSPConfig"),
}


def names() -> list[str]:
    return sorted(_REGISTRY)


def register(name: str, transform: str, config: str) -> None:
    """Add (or replace) an objective: ``register("mine", "pkg.mod:Mine", "pkg.mod:MineConfig")``."""
    for ref in (transform, config):
        if ":" not in ref:
            raise ValueError(f"register({name!r}): {ref!r} must look like 'module:Class'")
    _REGISTRY[name] = (transform, config)


def _load(ref: str):
    module, _, attr = ref.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ImportError(f"cannot load {ref!r}: {e}") from e


def _entry(name: str) -> tuple[str, str]:
    if name not in _REGISTRY:
        raise KeyError(f"unknown objective {name!r}; known: {names()}")
    return _REGISTRY[name]


def transform_class(name: str):
    return _load(_entry(name)[0])


def config_class(name: str):
    return _load(_entry(name)[1])


def _tuplify(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuplify(v) for v in value)
    return value


def make_config(name: str, config: Mapping[str, Any] | None = None):
    """Dict -> the objective's config dataclass (unknown keys rejected by name)."""
    cls = config_class(name)
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        if not isinstance(config, cls):
            raise TypeError(f"{name}: config is a {type(config).__name__}, expected {cls.__name__}")
        return config
    config = dict(config or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"{name}: unknown config key(s) {unknown}; {cls.__name__} accepts {sorted(known)}")
    return cls(**{k: _tuplify(v) for k, v in config.items()})


def build(name: str, config: Mapping[str, Any] | None = None, *, special: SpecialTokens | None = None,
          vocab_size: int, tokenizer=None, **extra):
    """Build the named objective. ``extra`` goes to the constructor (e.g. MacBERT's ``similar``)."""
    cfg = make_config(name, config)
    return transform_class(name)(cfg, special=special or SpecialTokens(), vocab_size=vocab_size,
                                 tokenizer=tokenizer, **extra)


def build_spec(spec: Mapping[str, Any], *, special: SpecialTokens | None = None, vocab_size: int,
               tokenizer=None):
    """Build from a nested spec: ``{"name", "config"}``, ``{"compose": [...]}`` or ``{"mix": [...]}``."""
    from objectives.compose import Compose, MixByWeight

    kw = dict(special=special, vocab_size=vocab_size, tokenizer=tokenizer)
    keys = set(spec)
    if "compose" in keys:
        if keys != {"compose"}:
            raise ValueError(f"compose spec takes only 'compose', got keys {sorted(keys)}")
        return Compose([build_spec(s, **kw) for s in spec["compose"]])
    if "mix" in keys:
        extra = keys - {"mix", "tag_field"}
        if extra:
            raise ValueError(f"mix spec takes 'mix' and 'tag_field', got unknown {sorted(extra)}")
        members = []
        for m in spec["mix"]:
            if "weight" not in m:
                raise ValueError(f"mix member {dict(m)} lacks 'weight'")
            rest = {k: v for k, v in m.items() if k != "weight"}
            members.append((m["weight"], build_spec(rest, **kw)))
        return MixByWeight(members, tag_field=spec.get("tag_field"))
    extra = keys - {"name", "config"}
    if "name" not in keys or extra:
        raise ValueError(f"objective spec needs 'name' (and optional 'config'); got keys {sorted(keys)}")
    return build(spec["name"], spec.get("config"), **kw)
