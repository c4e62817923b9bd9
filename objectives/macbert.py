"""MacBERT (Cui et al. 2020): MLM as correction, with similar words instead of [MASK].

Per sample:

1. words come from ``word_start``; 15% of the words (``mask_rate``, met in
   expectation: a fractional budget keeps its last n-gram with the matching
   probability) are chosen as whole-word n-grams of 1/2/3/4 words with
   probabilities 40/30/20/10% (``objectives.masking.choose_spans``);
2. every chosen *word* independently is replaced by a similar word (80%), by a
   random word (10%) or kept (10%) (``replace_probs``); no [MASK] is ever used;
3. a word with no similar word in the table gets a random word instead.

Token lengths. Labels are the original tokens position by position, so a
substitute must have as many tokens as the word it replaces. The rule: the
similar-word table only holds candidates of the same token count (mismatched
ones are dropped when it is built, see ``objectives.similar_words``); a random
word is drawn from the table's words of the same token count, and where the
table has none of that length, each token of the word is replaced by a uniform
random regular id in ``[first_regular, vocab_size)``.

Input: a segment ``tokens`` [n] + ``word_start`` [n]. Output (length
``seq_length``): ``[CLS] tokens [SEP] PAD...`` (tokens truncated to
``seq_length - 2``), ``labels`` = original token where chosen (PAD elsewhere),
``loss_mask`` 1.0 there, ``position_ids`` 0.., ``segment_ids`` 0,
``kv_start``/``kv_end`` = every row sees the non-pad tokens ``[0, n+2)``.
An empty segment gives ``[CLS] [SEP]`` and no targets.

``MacBERT.batch(samples, rng)`` does a list of samples at once ([B, S] arrays);
it draws differently from per-sample calls, but is as deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from objectives import masking
from objectives.sample import Sample, SpecialTokens, check_rate, require_fields
from objectives.similar_words import (
    SimilarWords,
    from_embedding_file,
    from_synonym_file,
)

SIMILAR = 0
RANDOM_WORD = 1
KEEP = 2

SIMILAR_FORMATS = ("auto", "table", "synonyms", "embeddings")


@dataclass(frozen=True)
class MacBERTConfig:
    seq_length: int = 512
    mask_rate: float = 0.15                      # share of words chosen
    ngram_probs: tuple = (0.4, 0.3, 0.2, 0.1)    # P(n-gram of 1, 2, 3, 4 words)
    replace_probs: tuple = (0.8, 0.1, 0.1)       # similar word, random word, keep
    similar_words: str = ""                      # path; "" = no table (every word falls back to random)
    similar_format: str = "auto"                 # table (.npz) | synonyms (text) | embeddings (word2vec text)
    neighbours: int = 10                         # for embeddings files
    min_similarity: float = 0.0                  # for embeddings files

    def __post_init__(self):
        if int(self.seq_length) < 3:
            raise ValueError(f"seq_length must be >= 3 ([CLS] x [SEP]), got {self.seq_length!r}")
        check_rate("mask_rate", self.mask_rate)
        try:
            masking.ngram_length_probs(self.ngram_probs)
        except ValueError as e:
            raise ValueError(f"ngram_probs: {e}") from e
        try:
            masking.check_action_probs(self.replace_probs, "replace_probs")
        except ValueError as e:
            raise ValueError(f"replace_probs: {e}") from e
        if self.similar_format not in SIMILAR_FORMATS:
            raise ValueError(f"similar_format must be one of {SIMILAR_FORMATS}, got {self.similar_format!r}")
        if int(self.neighbours) < 1:
            raise ValueError(f"neighbours must be >= 1, got {self.neighbours!r}")


def load_similar_words(path: str, fmt: str = "auto", tokenizer=None, *, neighbours: int = 10,
                       min_similarity: float = 0.0, first_regular: int = 16) -> SimilarWords:
    """A table from a file: ``.npz`` (compiled), synonym text, or word2vec text (``.vec``)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"similar_words: no file {path}")
    if fmt == "auto":
        fmt = {".npz": "table", ".vec": "embeddings"}.get(p.suffix, "synonyms")
    if fmt == "table":
        return SimilarWords.load(p)
    if tokenizer is None:
        raise ValueError(f"similar_words {path}: a {fmt} file is text; pass tokenizer= to tokenise its words")
    if fmt == "synonyms":
        return from_synonym_file(p, tokenizer, first_regular=first_regular)
    return from_embedding_file(p, tokenizer, k=neighbours, min_similarity=min_similarity,
                               first_regular=first_regular)


def _empty_table() -> SimilarWords:
    return SimilarWords.from_neighbours({})


def replace_words(rng: np.random.Generator, tokens: np.ndarray, word_first: np.ndarray, word_len: np.ndarray,
                  table: SimilarWords, *, replace_probs, low: int, high: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Corrupt chosen words laid end to end in ``tokens`` (word i is
    ``tokens[word_first[i]:word_first[i]+word_len[i]]``).

    Returns ``(new_tokens, action, source)`` with per-word ``action`` in
    SIMILAR / RANDOM_WORD / KEEP and ``source``: 0 kept, 1 similar word from the
    table, 2 random table word, 3 random tokens (see the module's length rule).
    """
    n_words = len(word_first)
    p = np.asarray(replace_probs, np.float64)
    u = rng.random((3, n_words))
    action = np.where(u[0] < p[0], SIMILAR, np.where(u[0] < p[0] + p[1], RANDOM_WORD, KEEP)).astype(np.int8)
    sub = np.full(n_words, -1, np.int64)
    want_sim = action == SIMILAR
    if want_sim.any() and len(table):
        idx = table.lookup(tokens, word_first, word_len)
        sub = np.where(want_sim, table.pick_similar(idx, u[1]), -1)
    need_random = ((action == SIMILAR) & (sub < 0)) | (action == RANDOM_WORD)
    if need_random.any() and len(table):
        sub = np.where(need_random, table.pick_random(word_len, u[2]), sub)
    source = np.where(action == KEEP, 0, np.where(sub >= 0, np.where(need_random, 2, 1), 3)).astype(np.int8)

    tok_word = np.repeat(np.arange(n_words), word_len)
    pos = np.arange(len(tokens)) - np.repeat(word_first, word_len)
    tok_sub = sub[tok_word]
    new = tokens.copy()
    has_sub = tok_sub >= 0
    if has_sub.any():
        new[has_sub] = table.words[tok_sub[has_sub], pos[has_sub]]
    rnd = source[tok_word] == 3
    n_rnd = int(np.count_nonzero(rnd))
    if n_rnd:
        new[rnd] = rng.integers(low, high, size=n_rnd)
    return new, action, source


class MacBERT:
    """Whole-word n-gram masking with similar-word substitution (no [MASK])."""

    reads = ("tokens", "word_start")
    writes = ("tokens", "labels", "loss_mask", "position_ids", "segment_ids", "kv_start", "kv_end")

    def __init__(self, config: MacBERTConfig, *, special: SpecialTokens, vocab_size: int, tokenizer=None,
                 similar: SimilarWords | None = None):
        if not isinstance(config, MacBERTConfig):
            raise TypeError(f"MacBERT needs a MacBERTConfig, got {type(config).__name__}")
        if int(vocab_size) <= special.first_regular:
            raise ValueError(f"vocab_size must exceed first_regular={special.first_regular}, got {vocab_size}")
        self.config = config
        self.special = special
        self.vocab_size = int(vocab_size)
        if similar is None and config.similar_words:
            similar = load_similar_words(config.similar_words, config.similar_format, tokenizer,
                                         neighbours=config.neighbours, min_similarity=config.min_similarity,
                                         first_regular=special.first_regular)
        self.similar = similar if similar is not None else _empty_table()
        self.ngram_probs = masking.ngram_length_probs(config.ngram_probs)
        self.replace_probs = masking.check_action_probs(config.replace_probs, "replace_probs")

    # ------------------------------------------------------------------ core
    def corrupt_grid(self, rng: np.random.Generator, tokens: np.ndarray, word_start: np.ndarray,
                     eligible: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
        """MacBERT corruption of a [B, L] grid; ``eligible`` marks maskable tokens
        (not [CLS]/[SEP]/PAD). A word starts where ``word_start`` or where an
        eligible run begins. Returns ``(new_tokens, chosen, info)``."""
        el = eligible
        wstart = el & word_start
        wstart[:, 0] = el[:, 0]
        wstart[:, 1:] |= el[:, 1:] & ~el[:, :-1]
        n_words = wstart.sum(axis=1)
        span = masking.choose_spans(rng, wstart, length_probs=self.ngram_probs,
                                    budget_words=self.config.mask_rate * n_words, eligible=el)
        chosen = span >= 0
        flat_chosen = np.flatnonzero(chosen.ravel())
        new = tokens.copy()
        info = {"n_words": n_words, "span": span}
        if flat_chosen.size == 0:
            info.update(action=np.zeros(0, np.int8), source=np.zeros(0, np.int8), word_len=np.zeros(0, np.int64))
            return new, chosen, info
        ctok = tokens.ravel()[flat_chosen].astype(np.int64)
        word_first = np.flatnonzero(wstart.ravel()[flat_chosen])
        word_len = np.diff(np.append(word_first, len(flat_chosen)))
        new_c, action, source = replace_words(rng, ctok, word_first, word_len, self.similar,
                                              replace_probs=self.replace_probs,
                                              low=self.special.first_regular, high=self.vocab_size)
        new.ravel()[flat_chosen] = new_c
        info.update(action=action, source=source, word_len=word_len)
        return new, chosen, info

    # ------------------------------------------------------------------ API
    def batch(self, samples: Sequence[Mapping[str, np.ndarray]], rng: np.random.Generator) -> Sample:
        """[B, S] fields for a list of segments, vectorised over the batch."""
        S = int(self.config.seq_length)
        body, ws, n = _stack_segments(samples, S - 2, "MacBERT")
        B = len(samples)
        valid = np.arange(S - 2)[None, :] < n[:, None]
        new, chosen, _ = self.corrupt_grid(rng, body, ws, valid)
        sp = self.special
        tokens = np.full((B, S), sp.pad, np.int32)
        tokens[:, 1:S - 1] = np.where(valid, new, sp.pad)
        tokens[:, 0] = sp.cls
        rows = np.arange(B)
        tokens[rows, n + 1] = sp.sep
        labels = np.full((B, S), sp.pad, np.int32)
        labels[:, 1:S - 1] = np.where(chosen, body, sp.pad)
        loss_mask = np.zeros((B, S), np.float32)
        loss_mask[:, 1:S - 1] = chosen
        kv_end = np.repeat((n + 2).astype(np.int32)[:, None], S, axis=1)
        return {
            "tokens": tokens,
            "labels": labels,
            "loss_mask": loss_mask,
            "position_ids": np.tile(np.arange(S, dtype=np.int32), (B, 1)),
            "segment_ids": np.zeros((B, S), np.int32),
            "kv_start": np.zeros((B, S), np.int32),
            "kv_end": kv_end,
        }

    def __call__(self, sample: Mapping[str, np.ndarray], rng: np.random.Generator) -> Sample:
        out = self.batch([sample], rng)
        return {k: np.asarray(v[0]) for k, v in out.items()}

    def __repr__(self) -> str:
        return f"MacBERT({self.config!r}, similar_words={len(self.similar)})"


def _stack_segments(samples: Sequence[Mapping[str, np.ndarray]], width: int, who: str,
                    extra: tuple[str, ...] = ()) -> tuple:
    """Pad segments' ``tokens``/``word_start`` (and ``extra`` bool fields) into
    [B, width] grids (truncating); returns ``(tokens, word_start, n, *extras)``."""
    B = len(samples)
    tokens = np.zeros((B, width), np.int32)
    ws = np.zeros((B, width), bool)
    extras = [np.zeros((B, width), bool) for _ in extra]
    n = np.zeros(B, np.int64)
    for i, s in enumerate(samples):
        require_fields(s, ("tokens", "word_start") + extra, who)
        t = np.asarray(s["tokens"])
        w = np.asarray(s["word_start"])
        if t.ndim != 1 or w.shape != t.shape:
            raise ValueError(f"{who}: tokens and word_start must be 1-D of one length, got {t.shape} and {w.shape}")
        k = min(len(t), width)
        tokens[i, :k] = t[:k]
        ws[i, :k] = w[:k]
        for j, f in enumerate(extra):
            e = np.asarray(s[f])
            if e.shape != t.shape:
                raise ValueError(f"{who}: {f} must have the shape of tokens {t.shape}, got {e.shape}")
            extras[j][i, :k] = e[:k]
        n[i] = k
    if width:
        ws[:, 0] = True
    return (tokens, ws, n, *extras)
