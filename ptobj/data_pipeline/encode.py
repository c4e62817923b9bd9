"""Tokenise documents into flat arrays, in worker processes.

Imports only numpy, sentencepiece and the sentence splitter (no torch or
megatron), so a spawned worker stays light too. Chunks come back in corpus
order (ordered ``imap``).
"""

from __future__ import annotations

from itertools import islice
from multiprocessing import get_all_start_methods, get_context
from typing import Iterable, Iterator

import numpy as np

from ptobj.data_pipeline.corpus import is_held_out
from ptobj.data_pipeline.sentences import split_sentences
from ptobj.data_pipeline.tokenizer import SentencePieceTokenizer

_WORKER: dict = {}


def _init_worker(proto: bytes, mode: str, valid_bound: int, min_chars: int, max_chars: int) -> None:
    _WORKER.update(tok=SentencePieceTokenizer(proto), mode=mode, valid=valid_bound, min_chars=min_chars,
                   max_chars=max_chars)


def _encode_chunk(docs: list[str]) -> dict:
    """Encode a chunk of documents into flat arrays (cheap to send between processes)."""
    tok: SentencePieceTokenizer = _WORKER["tok"]
    tokens, word_start, sent_lengths, doc_sentences, valid = [], [], [], [], []
    skipped = 0
    for text in docs:
        if len(text.strip()) < max(1, _WORKER["min_chars"]) or (_WORKER["max_chars"] and len(text) > _WORKER["max_chars"]):
            skipped += 1
            continue
        ids, lengths = tok.encode_flat(split_sentences(text, _WORKER["mode"]))
        lengths = lengths[lengths > 0]  # a sentence that encodes to nothing is dropped
        if ids.size == 0:
            skipped += 1
            continue
        tokens.append(ids)
        word_start.append(tok.word_start(ids))
        sent_lengths.append(lengths)
        doc_sentences.append(len(lengths))
        valid.append(is_held_out(text, _WORKER["valid"]))
    cat = (lambda xs, dt: np.concatenate(xs).astype(dt, copy=False) if xs else np.zeros(0, dt))
    return {
        "tokens": cat(tokens, np.int32),
        "word_start": cat(word_start, np.uint8),
        "sentence_lengths": cat(sent_lengths, np.int64),
        "doc_sentences": np.asarray(doc_sentences, dtype=np.int64),
        "valid": np.asarray(valid, dtype=bool),
        "skipped": skipped,
        "chars": sum(len(t) for t in docs),
    }


def _chunks(docs: Iterable[str], size: int) -> Iterator[list[str]]:
    it = iter(docs)
    while chunk := list(islice(it, size)):
        yield chunk


def encode_documents(docs: Iterable[str], tokenizer: SentencePieceTokenizer, mode: str, *, valid_bound: int,
                     min_chars: int = 1, max_chars: int = 0, workers: int = 1,
                     chunk_documents: int = 64) -> Iterator[dict]:
    """Encoded chunks in corpus order; a document is held out when its content hash lies below
    ``valid_bound`` (:func:`ptobj.data_pipeline.corpus.is_held_out`); ``workers > 1`` uses a process
    pool (ordered imap)."""
    args = (tokenizer._proto, mode, valid_bound, min_chars, max_chars)
    if workers == 1:
        _init_worker(*args)
        yield from map(_encode_chunk, _chunks(docs, chunk_documents))
        return
    # fork: workers start at once with the tokenizer's bytes (spawn / forkserver would re-import
    # the caller's __main__, e.g. a training script with torch, in every worker); the workers
    # run only sentencepiece and numpy, never torch, so threads in the parent do not matter
    ctx = get_context("fork" if "fork" in get_all_start_methods() else "spawn")
    with ctx.Pool(workers, _init_worker, args) as pool:
        yield from pool.imap(_encode_chunk, _chunks(docs, chunk_documents))
