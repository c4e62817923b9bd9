"""``datasets.map`` helpers (batched): text columns -> the fields the collators read.

    data = tokenize(raw, tokens, text_field="text", sentences="prose")   # input_ids, word_start, sentence_start
    data = add_index(data)                                                # index: how collators key rows
    nsp = add_random_segments(data, seed=0)                               # NSP's other-document B
    contexts = pack_contexts(tokenize(code, tokens), tokens, 513)         # FIM / causal LM / T5: 512 + 1 ids
    ready = apply_objective(data, MLMCollator(tokens, seq_length=128))    # precomputed; PrecomputedCollator

Ids are the tokenizer's own (the collators map them into the transforms' ids). Word
starts come from ``word_ids()``; sentence starts from a splitter (``"prose"``: after
``.!?`` or a blank line; ``"code"``: blocks of lines between blank lines, as
:mod:`ptobj.data_pipeline.sentences` cuts our own corpora; or any callable ``text -> pieces``
whose pieces concatenate to the text), placed on the first token that reaches past
each sentence's first character (offsets from the tokenizer).
"""

from __future__ import annotations

from typing import Callable

from ptobj.extras import require

require("hf", "datasets", by=__name__)

import numpy as np

from ptobj.data_pipeline.sentences import split_sentences
from ptobj.hf.tokens import HFTokens
from ptobj.objectives.streams import RowStreams, site

_SITE_OTHER = site("hf.preprocess.other_document")


def _splitter(sentences) -> Callable[[str], list[str]] | None:
    if sentences is None or callable(sentences):
        return sentences
    if sentences in ("prose", "code"):
        return lambda text: split_sentences(text, sentences)
    raise ValueError(f"sentences must be None, 'prose', 'code' or a callable text -> pieces, got {sentences!r}")


def sentence_starts(offsets, pieces: list[str], text: str) -> list[int]:
    """1 on the first token of each sentence: the first token whose end offset passes the
    sentence's first character (token 0 always starts one)."""
    if "".join(pieces) != text:
        raise ValueError("sentences: the splitter's pieces do not concatenate to the text")
    out = [0] * len(offsets)
    if not out:
        return out
    ends = np.array([e for _, e in offsets], np.int64)
    firsts = np.cumsum([0] + [len(p) for p in pieces[:-1]])
    j = np.searchsorted(ends, firsts, side="right")
    for k in j[j < len(out)].tolist():
        out[k] = 1
    out[0] = 1
    return out


def encode_texts(tokens: HFTokens, texts: list[str], *, sentences=None) -> dict[str, list]:
    """One batch of texts -> ``input_ids``, ``word_start`` (and ``sentence_start`` when
    ``sentences`` names a splitter), lists per text."""
    split = _splitter(sentences)
    enc = tokens.tokenize(texts, offsets=split is not None)
    out = {"input_ids": enc["input_ids"], "word_start": enc["word_start"]}
    if split is not None:
        out["sentence_start"] = [sentence_starts(off, split(t), t) for off, t in zip(enc["offset_mapping"], texts)]
    return out


def tokenize(dataset, tokens: HFTokens, *, text_field: str = "text", sentences=None, batch_size: int = 1000,
             num_proc: int | None = None, keep_columns: bool = False):
    """``dataset`` with ``input_ids``, ``word_start`` (and ``sentence_start``) from its text column;
    the other columns are dropped unless ``keep_columns``."""
    if text_field not in dataset.column_names:
        raise KeyError(f"tokenize: the dataset has no text column {text_field!r}; it has {dataset.column_names}")
    _splitter(sentences)
    return dataset.map(lambda b: encode_texts(tokens, b[text_field], sentences=sentences), batched=True,
                       batch_size=batch_size, num_proc=num_proc,
                       remove_columns=None if keep_columns else dataset.column_names)


def add_index(dataset, field: str = "index"):
    """An ``index`` column (the row number): what collators key each sample's randomness by."""
    if field in dataset.column_names:
        raise ValueError(f"add_index: the dataset has a column {field!r} already")
    return dataset.map(lambda b, idx: {field: list(idx)}, batched=True, with_indices=True)


def pack_contexts(dataset, tokens: HFTokens, context_length: int, *, batch_size: int = 1000):
    """Documents (``input_ids``) joined by the tokenizer's eos and cut into rows of exactly
    ``context_length`` ids (``seq_length + 1`` for FIM, the causal LM and T5): the packed
    contexts of our GPT sampler. As ``run_clm``'s ``group_texts``, each map batch's tail
    that fills no row is dropped."""
    n = int(context_length)
    if n < 2:
        raise ValueError(f"pack_contexts: context_length must be >= 2, got {context_length!r}")
    tokens.require(("eot",), "pack_contexts")
    eos = tokens.named["eot"]
    if "input_ids" not in dataset.column_names:
        raise KeyError(f"pack_contexts: the dataset has no 'input_ids' column; it has {dataset.column_names}")

    def pack(batch):
        flat = np.concatenate([np.append(np.asarray(ids, np.int64), eos) for ids in batch["input_ids"]]) \
            if batch["input_ids"] else np.zeros(0, np.int64)
        rows = flat[: flat.size // n * n].reshape(-1, n)
        return {"input_ids": rows.tolist()}

    return dataset.map(pack, batched=True, batch_size=batch_size, remove_columns=dataset.column_names)


def add_random_segments(dataset, *, seed: int, field: str = "input_ids"):
    """NSP's negatives: each row gets ``random_input_ids`` / ``random_word_start``, another row's
    (uniform over the others, from the row's own stream keyed by ``(seed, row)``, so the pick
    never depends on batching)."""
    n = len(dataset)
    if n < 2:
        raise ValueError(f"add_random_segments: needs at least 2 rows, the dataset has {n}")
    for f in (field, "word_start"):
        if f not in dataset.column_names:
            raise KeyError(f"add_random_segments: the dataset has no {f!r} column; it has {dataset.column_names}")

    def pick(batch, idx):
        idx = np.asarray(idx, np.int64)
        streams = RowStreams.for_rows(seed, 0, idx, purpose="sampler.pick")
        other = (idx + 1 + streams.integers_at(_SITE_OTHER, np.arange(idx.size), 0, 0, n - 1)) % n
        rows = dataset[other.tolist()]
        return {"random_input_ids": rows[field], "random_word_start": rows["word_start"]}

    return dataset.map(pick, batched=True, with_indices=True)


def apply_objective(dataset, collator, *, epoch: int = 0, batch_size: int = 256, num_proc: int | None = None):
    """Precompute: each row through ``collator``'s transform, keyed ``(seed, epoch, index)`` by its
    ``index`` column (or its row number), written as the model's fields at the full
    ``seq_length`` (a 4-D mask as its ``kv_start``/``kv_end`` intervals);
    :class:`ptobj.hf.collators.PrecomputedCollator` stacks the rows."""
    field = collator.keys.index_field
    has_index = field is not None and field in dataset.column_names

    def apply(batch, idx):
        features = [dict(zip(batch, values)) for values in zip(*batch.values())]
        index = np.asarray(batch[field] if has_index else idx, np.int64)
        out = collator.apply(features, RowStreams.for_rows(collator.keys.seed, int(epoch), index))
        return {k: v.tolist() for k, v in collator.to_hf(out, trim=False).items()}

    return dataset.map(apply, batched=True, with_indices=True, batch_size=batch_size, num_proc=num_proc,
                       remove_columns=dataset.column_names)
