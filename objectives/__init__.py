"""Pretraining objectives as pure, seeded numpy transforms (no torch needed).

Transforms and configs are exported lazily (``from objectives import MacBERT``
imports ``objectives.macbert`` on first use), so importing the package stays
cheap and ``objectives.registry`` can resolve names on demand.
"""

import importlib

from objectives.sample import CONTRACT_FIELDS, Batch, ConfiguredTransform, Sample, SpecialTokens, Transform, row, stack
from objectives.streams import RowStreams
from objectives import intervals, streams

_LAZY = {
    "Compose": "objectives.compose",
    "MixByWeight": "objectives.compose",
    "MacBERT": "objectives.macbert",
    "MacBERTConfig": "objectives.macbert",
    "SimilarWords": "objectives.similar_words",
    "chinese_word_starts": "objectives.similar_words",
    "SOP": "objectives.sentence_pairs",
    "SOPConfig": "objectives.sentence_pairs",
    "NSP": "objectives.sentence_pairs",
    "NSPConfig": "objectives.sentence_pairs",
    "CausalLM": "objectives.causal_lm",
    "CausalLMConfig": "objectives.causal_lm",
    "FIM": "objectives.fim",
    "FIMConfig": "objectives.fim",
    "MLM": "objectives.mlm",
    "MLMConfig": "objectives.mlm",
    "SpanBERT": "objectives.spanbert",
    "SpanBERTConfig": "objectives.spanbert",
    "UniLM": "objectives.unilm",
    "UniLMConfig": "objectives.unilm",
    "build": "objectives.registry",
    "build_spec": "objectives.registry",
}


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'objectives' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__():
    return sorted(list(globals()) + list(_LAZY))


# ``import *`` takes the eager names and this part's transforms (the other lazy names on demand)
__all__ = ["CONTRACT_FIELDS", "Batch", "Sample", "SpecialTokens", "Transform", "ConfiguredTransform", "RowStreams", "row", "stack",
           "intervals", "streams", "Compose", "MixByWeight",
           "MacBERT", "MacBERTConfig", "SimilarWords", "SOP", "SOPConfig", "NSP", "NSPConfig", "build", "build_spec"]
