"""Corpus -> tokenizer -> megatron indexed dataset -> samples -> batches.

    from data_pipeline import prepare_corpus, CorpusConfig, TokenizerConfig
    prepared = prepare_corpus(CorpusConfig("stdlib-code"), TokenizerConfig(vocab_size=8000), "data/prepared")
    again = open_prepared(prepared.path)     # a prepared directory, opened on its own

Names are imported lazily, so ``import data_pipeline`` stays cheap.
"""

from importlib import import_module

_EXPORTS = {
    "CorpusConfig": "data_pipeline.config",
    "TokenizerConfig": "data_pipeline.config",
    "PrepareConfig": "data_pipeline.config",
    "load_prepare_config": "data_pipeline.config",
    "SentencePieceTokenizer": "data_pipeline.tokenizer",
    "prepare_corpus": "data_pipeline.build",
    "open_prepared": "data_pipeline.build",
    "PreparedCorpus": "data_pipeline.build",
    "TokenData": "data_pipeline.indexed",
    "PackedContextSampler": "data_pipeline.samplers",
    "SegmentSampler": "data_pipeline.samplers",
    "SegmentPairSampler": "data_pipeline.samplers",
    "SourceTargetSampler": "data_pipeline.samplers",
    "BlendedSampler": "data_pipeline.samplers",
    "ObjectiveDataset": "data_pipeline.dataset",
    "collate": "data_pipeline.collate",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'data_pipeline' has no attribute {name!r}")
