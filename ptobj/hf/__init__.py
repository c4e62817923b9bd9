"""The objectives inside Hugging Face training: tokenizer adapter, collators, ``datasets.map`` helpers.

    from transformers import Trainer, TrainingArguments
    from ptobj.hf import EpochCallback, HFTokens, SOPCollator, preprocess

    tokens = HFTokens(tokenizer)                                   # any fast tokenizer
    data = preprocess.add_index(preprocess.tokenize(dataset, tokens, sentences="prose"))
    collator = SOPCollator(tokens, seq_length=128, seed=0)
    Trainer(model=model, args=TrainingArguments(..., remove_unused_columns=False), train_dataset=data,
            data_collator=collator, callbacks=[EpochCallback(collator)]).train()

Modules: :mod:`ptobj.hf.tokens` (ids, special tokens, word starts), :mod:`ptobj.hf.collators`,
:mod:`ptobj.hf.keys` (how rows are keyed), :mod:`ptobj.hf.masks` (row intervals as HF masks),
:mod:`ptobj.hf.preprocess`. Names are imported lazily.
"""

from ptobj.extras import lazy_exports, require

require("hf", "torch", "transformers", "tokenizers", by=__name__)

_EXPORTS = {
    "HFTokens": "ptobj.hf.tokens",
    "add_fim_tokens": "ptobj.hf.tokens",
    "add_sentinel_tokens": "ptobj.hf.tokens",
    "resize_embeddings": "ptobj.hf.tokens",
    "SampleKeys": "ptobj.hf.keys",
    "EpochCallback": "ptobj.hf.keys",
    "ObjectiveCollator": "ptobj.hf.collators",
    "MLMCollator": "ptobj.hf.collators",
    "SpanBERTCollator": "ptobj.hf.collators",
    "MacBERTCollator": "ptobj.hf.collators",
    "SOPCollator": "ptobj.hf.collators",
    "NSPCollator": "ptobj.hf.collators",
    "UniLMCollator": "ptobj.hf.collators",
    "FIMCollator": "ptobj.hf.collators",
    "CausalLMCollator": "ptobj.hf.collators",
    "Seq2SeqCollator": "ptobj.hf.collators",
    "PrecomputedCollator": "ptobj.hf.collators",
    "preprocess": "ptobj.hf.preprocess",
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

__all__ = sorted(_EXPORTS)
