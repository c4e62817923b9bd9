"""Token data on disk in megatron-core's own ``.bin/.idx`` format.

Two parallel indexed datasets per split: ``<prefix>`` holds token ids and
``<prefix>_word_start`` holds uint8 word-start flags with identical sequence
lengths. Each megatron "sequence" is one sentence (a line block for code) and
``document_indices`` group sentences into documents, as megatron's BERT data
does. Reading goes through megatron's ``IndexedDataset`` (mmap); samplers use
flat zero-copy views of the whole token stream.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from ptobj.extras import require

require("train", "torch", "megatron", by=__name__)

import numpy as np
from megatron.core.datasets.indexed_dataset import (
    DType,
    IndexedDataset,
    IndexedDatasetBuilder,
    get_bin_path,
    get_idx_path,
)

WORD_START_SUFFIX = "_word_start"
_INDEX_HEADER = b"MMIDIDX\x00\x00"


class IndexedDataError(ValueError):
    """Missing or corrupt ``.bin/.idx`` files; the message names the file."""


def token_dtype(vocab_size: int) -> type:
    return np.uint16 if vocab_size < 65500 else np.int32


class SplitWriter:
    """Writes one split (tokens + word starts) document by document."""

    def __init__(self, prefix: str | os.PathLike, vocab_size: int):
        self.prefix = str(prefix)
        self.tokens = IndexedDatasetBuilder(get_bin_path(self.prefix), dtype=token_dtype(vocab_size))
        self.word_start = IndexedDatasetBuilder(get_bin_path(self.prefix + WORD_START_SUFFIX), dtype=np.uint8)
        self.documents = 0
        self.sentences = 0
        self.num_tokens = 0

    def add_document(self, tokens: np.ndarray, word_start: np.ndarray, sentence_lengths: np.ndarray) -> None:
        lengths = [int(n) for n in sentence_lengths]
        self.tokens.add_document(tokens, lengths)
        self.word_start.add_document(word_start.astype(np.uint8, copy=False), lengths)
        self.documents += 1
        self.sentences += len(lengths)
        self.num_tokens += int(tokens.size)

    def finalize(self) -> None:
        self.tokens.finalize(get_idx_path(self.prefix))
        self.word_start.finalize(get_idx_path(self.prefix + WORD_START_SUFFIX))


def _check_files(prefix: str, itemsize_of_code) -> None:
    """Fail with a message naming the file before megatron's asserts would fire."""
    idx, bin_ = get_idx_path(prefix), get_bin_path(prefix)
    for path in (idx, bin_):
        if not os.path.isfile(path):
            raise IndexedDataError(f"indexed dataset file {path} is missing")
    size = os.path.getsize(idx)
    with open(idx, "rb") as fh:
        head = fh.read(34)
    if len(head) < 34 or head[:9] != _INDEX_HEADER or int.from_bytes(head[9:17], "little") != 1:
        raise IndexedDataError(f"indexed dataset index {idx} is corrupt (bad header)")
    code = head[17]
    try:
        itemsize = DType.size(int(code))
    except Exception as exc:
        raise IndexedDataError(f"indexed dataset index {idx} is corrupt (dtype code {code})") from exc
    n_seq = int.from_bytes(head[18:26], "little")
    n_doc = int.from_bytes(head[26:34], "little")
    if size != 34 + n_seq * (4 + 8) + n_doc * 8:
        raise IndexedDataError(
            f"indexed dataset index {idx} is corrupt: {size} bytes, expected {34 + n_seq * 12 + n_doc * 8}"
        )
    lengths = np.fromfile(idx, dtype=np.int32, count=n_seq, offset=34)
    if (lengths < 0).any():
        raise IndexedDataError(f"indexed dataset index {idx} is corrupt (negative sequence length)")
    expected = int(lengths.sum(dtype=np.int64)) * itemsize
    if os.path.getsize(bin_) != expected:
        raise IndexedDataError(
            f"indexed dataset data {bin_} is corrupt or truncated: {os.path.getsize(bin_)} bytes, "
            f"its index {idx} says {expected}"
        )
    if n_seq == 0:
        raise IndexedDataError(f"indexed dataset {prefix} is empty (no sequences)")


def open_indexed(prefix: str | os.PathLike) -> IndexedDataset:
    prefix = str(prefix)
    _check_files(prefix, None)
    try:
        return IndexedDataset(prefix, mmap=True)
    except (AssertionError, ValueError, OSError) as exc:
        raise IndexedDataError(f"cannot read indexed dataset {prefix}: {exc}") from exc


@dataclass
class TokenData:
    """One split: megatron IndexedDatasets for tokens and word starts, plus flat numpy views.

    ``tokens`` / ``word_start`` are the whole split as flat memory-mapped arrays;
    ``sentence_offsets[i]`` is the first token of sentence ``i`` (with a final end);
    ``document_sentences[d]`` is the first sentence of document ``d`` (with a final end).
    """

    prefix: str
    dataset: IndexedDataset
    word_start_dataset: IndexedDataset

    @classmethod
    def open(cls, prefix: str | os.PathLike) -> "TokenData":
        prefix = str(prefix)
        tokens = open_indexed(prefix)
        word_start = open_indexed(prefix + WORD_START_SUFFIX)
        if not np.array_equal(tokens.sequence_lengths, word_start.sequence_lengths) or not np.array_equal(
            tokens.document_indices, word_start.document_indices
        ):
            raise IndexedDataError(
                f"{prefix}{WORD_START_SUFFIX} does not match {prefix}: sequence lengths or documents differ"
            )
        return cls(prefix, tokens, word_start)

    def __getstate__(self):
        return {"prefix": self.prefix}

    def __setstate__(self, state):
        fresh = TokenData.open(state["prefix"])
        self.__dict__.update(fresh.__dict__)

    @cached_property
    def tokens(self) -> np.ndarray:
        ds = self.dataset
        return ds.bin_reader.read(dtype=ds.index.dtype, count=int(self.sentence_offsets[-1]), offset=0)

    @cached_property
    def word_start(self) -> np.ndarray:
        ds = self.word_start_dataset
        return ds.bin_reader.read(dtype=np.uint8, count=int(self.sentence_offsets[-1]), offset=0).view(np.bool_)

    @cached_property
    def sentence_offsets(self) -> np.ndarray:
        lengths = self.dataset.sequence_lengths
        out = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=out[1:])
        return out

    @cached_property
    def document_sentences(self) -> np.ndarray:
        return np.asarray(self.dataset.document_indices, dtype=np.int64)

    @cached_property
    def document_offsets(self) -> np.ndarray:
        """Token offset of each document start, with a final end."""
        return self.sentence_offsets[self.document_sentences]

    @property
    def num_documents(self) -> int:
        return len(self.document_sentences) - 1

    @property
    def num_sentences(self) -> int:
        return len(self.sentence_offsets) - 1

    @property
    def num_tokens(self) -> int:
        return int(self.sentence_offsets[-1])

    def document_lengths(self) -> np.ndarray:
        return np.diff(self.document_offsets)

    def document_tokens(self, d: int) -> np.ndarray:
        return self.tokens[self.document_offsets[d] : self.document_offsets[d + 1]]


def split_files(prefix: str | os.PathLike) -> list[Path]:
    prefix = str(prefix)
    return [Path(p) for p in (get_bin_path(prefix), get_idx_path(prefix),
                              get_bin_path(prefix + WORD_START_SUFFIX), get_idx_path(prefix + WORD_START_SUFFIX))]
