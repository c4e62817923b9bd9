"""Pretraining objectives as pure, seeded numpy transforms (no torch needed).

Transforms and configs are exported lazily (``from ptobj.objectives import MacBERT``
imports ``ptobj.objectives.macbert`` on first use), so importing the package stays
cheap and ``ptobj.objectives.registry`` can resolve names on demand.
"""

from ptobj.extras import lazy_exports

from ptobj.objectives.sample import CONTRACT_FIELDS, Batch, ConfiguredTransform, Sample, SpecialTokens, Transform, row, stack
from ptobj.objectives.streams import RowStreams
from ptobj.objectives import intervals, streams

_LAZY = {
    "Compose": "ptobj.objectives.compose",
    "MixByWeight": "ptobj.objectives.compose",
    "MacBERT": "ptobj.objectives.macbert",
    "MacBERTConfig": "ptobj.objectives.macbert",
    "SimilarWords": "ptobj.objectives.similar_words",
    "chinese_word_starts": "ptobj.objectives.similar_words",
    "SOP": "ptobj.objectives.sentence_pairs",
    "SOPConfig": "ptobj.objectives.sentence_pairs",
    "NSP": "ptobj.objectives.sentence_pairs",
    "NSPConfig": "ptobj.objectives.sentence_pairs",
    "CausalLM": "ptobj.objectives.causal_lm",
    "CausalLMConfig": "ptobj.objectives.causal_lm",
    "FIM": "ptobj.objectives.fim",
    "FIMConfig": "ptobj.objectives.fim",
    "MLM": "ptobj.objectives.mlm",
    "MLMConfig": "ptobj.objectives.mlm",
    "SpanBERT": "ptobj.objectives.spanbert",
    "SpanBERTConfig": "ptobj.objectives.spanbert",
    "UniLM": "ptobj.objectives.unilm",
    "UniLMConfig": "ptobj.objectives.unilm",
    "build": "ptobj.objectives.registry",
    "build_spec": "ptobj.objectives.registry",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())


# ``import *`` takes the eager names and this part's transforms (the other lazy names on demand)
__all__ = ["CONTRACT_FIELDS", "Batch", "Sample", "SpecialTokens", "Transform", "ConfiguredTransform", "RowStreams", "row", "stack",
           "intervals", "streams", "Compose", "MixByWeight",
           "MacBERT", "MacBERTConfig", "SimilarWords", "SOP", "SOPConfig", "NSP", "NSPConfig", "build", "build_spec"]
