"""Corpus -> tokenizer -> megatron indexed dataset -> samples -> batches.

    from ptobj.data_pipeline import prepare_corpus, CorpusConfig, TokenizerConfig
    prepared = prepare_corpus(CorpusConfig("stdlib-code"), TokenizerConfig(vocab_size=8000), "data/prepared")
    again = open_prepared(prepared.path)     # a prepared directory, opened on its own

Names are imported lazily, so ``import ptobj.data_pipeline`` stays cheap.
"""

from ptobj.extras import lazy_exports

_EXPORTS = {
    "CorpusConfig": "ptobj.data_pipeline.config",
    "TokenizerConfig": "ptobj.data_pipeline.config",
    "PrepareConfig": "ptobj.data_pipeline.config",
    "load_prepare_config": "ptobj.data_pipeline.config",
    "SentencePieceTokenizer": "ptobj.data_pipeline.tokenizer",
    "prepare_corpus": "ptobj.data_pipeline.build",
    "open_prepared": "ptobj.data_pipeline.build",
    "PreparedCorpus": "ptobj.data_pipeline.build",
    "TokenData": "ptobj.data_pipeline.indexed",
    "PackedContextSampler": "ptobj.data_pipeline.samplers",
    "SegmentSampler": "ptobj.data_pipeline.samplers",
    "SegmentPairSampler": "ptobj.data_pipeline.samplers",
    "SourceTargetSampler": "ptobj.data_pipeline.samplers",
    "BlendedSampler": "ptobj.data_pipeline.samplers",
    "ObjectiveDataset": "ptobj.data_pipeline.dataset",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
