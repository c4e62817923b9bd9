"""MacBERT (Cui et al. 2020): MLM as correction, with similar words instead of [MASK].

Per sample:

1. words come from ``word_start``; 15% of the words (``mask_rate``, met in
   expectation: a fractional budget keeps its last n-gram with the matching
   probability) are chosen as whole-word n-grams of 1/2/3/4 words with
   probabilities 40/30/20/10% (``objectives.masking.choose_span_set``);
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
from objectives.sample import Sample, SpecialTokens, check_rate, require_fields, check_transform_args
from objectives.similar_words import (
    SimilarWords,
    from_embedding_file,
    from_synonym_file,
)
from objectives.task import Task

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
        if not isinstance(self.seq_length, (int, np.integer)) or isinstance(self.seq_length, bool) \
                or self.seq_length < 3:
            raise ValueError(f"seq_length must be >= 3 ([CLS] x [SEP]), got {self.seq_length!r}")
        check_rate("mask_rate", self.mask_rate)
        masking.check_word_masking(self.ngram_probs, self.replace_probs)
        if self.similar_format not in SIMILAR_FORMATS:
            raise ValueError(f"similar_format must be one of {SIMILAR_FORMATS}, got {self.similar_format!r}")
        if not isinstance(self.neighbours, (int, np.integer)) or self.neighbours < 1:
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
    action = np.full(n_words, KEEP, np.int8)
    action[u[0] < p[0] + p[1]] = RANDOM_WORD
    action[u[0] < p[0]] = SIMILAR
    tok_word = np.repeat(np.arange(n_words), word_len)
    pos = np.arange(len(tokens)) - word_first[tok_word]
    sub = np.full(n_words, -1, np.int64)
    if len(table):
        want_sim = action == SIMILAR
        if want_sim.any():
            idx = table.lookup(tokens, word_first, word_len, tok_word=tok_word, pos=pos)
            sub = np.where(want_sim, table.pick_similar(idx, u[1]), -1)
        need_random = (action == RANDOM_WORD) | (want_sim & (sub < 0))
        if need_random.any():
            sub = np.where(need_random, table.pick_random(word_len, u[2]), sub)
    else:
        need_random = action != KEEP
    source = np.where(action == KEEP, 0, np.where(sub >= 0, np.where(need_random, 2, 1), 3)).astype(np.int8)

    tok_sub = sub[tok_word]
    if len(table):
        new = np.where(tok_sub >= 0, table.first_tokens[np.maximum(tok_sub, 0)], tokens)
        later = np.flatnonzero((pos > 0) & (tok_sub >= 0))        # 2nd.. tokens of multi-token substitutes
        if later.size:
            new[later] = table.words.reshape(-1)[tok_sub[later] * table.words.shape[1] + pos[later]]
    else:
        new = tokens.copy()
    rnd = np.flatnonzero(source[tok_word] == 3)
    if rnd.size:
        new[rnd] = rng.integers(low, high, size=rnd.size)
    return new, action, source


class MacBERT:
    """Whole-word n-gram masking with similar-word substitution (no [MASK])."""

    reads = ("tokens", "word_start")
    writes = ("tokens", "labels", "loss_mask", "position_ids", "segment_ids", "kv_start", "kv_end")

    def __init__(self, config: MacBERTConfig, *, special: SpecialTokens, vocab_size: int, tokenizer=None,
                 similar: SimilarWords | None = None):
        self.vocab_size = check_transform_args("MacBERT", config, MacBERTConfig, special, vocab_size)
        self.config = config
        self.special = special
        if similar is None and config.similar_words:
            similar = load_similar_words(config.similar_words, config.similar_format, tokenizer,
                                         neighbours=config.neighbours, min_similarity=config.min_similarity,
                                         first_regular=special.first_regular)
        self.similar = similar if similar is not None else _empty_table()
        self.ngram_probs = masking.ngram_length_probs(config.ngram_probs)
        self.replace_probs = masking.check_action_probs(config.replace_probs, "replace_probs")
        self._law = masking.SpanLaw(self.ngram_probs)
        self._positions = np.arange(int(config.seq_length), dtype=np.int32)

    # ------------------------------------------------------------------ core
    def substitute(self, rng: np.random.Generator, ctok: np.ndarray, cws: np.ndarray):
        """Corrupt chosen tokens ``ctok`` (chosen words laid end to end; ``cws`` True at
        each word's first token). Returns ``(new_tokens, action, source, word_len)``."""
        word_first = np.flatnonzero(cws)
        word_len = np.diff(np.append(word_first, len(ctok)))
        new, action, source = replace_words(rng, ctok.astype(np.int64), word_first, word_len, self.similar,
                                            replace_probs=self.replace_probs,
                                            low=self.special.first_regular, high=self.vocab_size)
        return new, action, source, word_len

    def choose(self, rng: np.random.Generator, word_start: np.ndarray, *, lengths=None, eligible=None):
        """Whole-word n-grams over a [B, L] grid (``word_start`` True at row starts and
        eligible-run starts); returns the :class:`objectives.masking.SpanSet`."""
        if eligible is not None:
            n_words = np.count_nonzero(word_start & eligible, axis=1)
        else:
            n_words = np.count_nonzero(word_start, axis=1)   # grids are False past each length
        return masking.choose_span_set(rng, word_start, length_probs=self.ngram_probs,
                                       budget_words=self.config.mask_rate * n_words,
                                       lengths=lengths, eligible=eligible)

    def corrupt_grid(self, rng: np.random.Generator, tokens: np.ndarray, word_start: np.ndarray, *,
                     lengths=None, eligible=None) -> tuple[np.ndarray, np.ndarray, dict]:
        """MacBERT on a [B, L] grid: the first ``lengths[b]`` tokens of each row, or the
        ``eligible`` ones (a word also starts where an eligible run begins). Returns
        ``(new_tokens, pos, info)``: ``pos`` = flat positions of the targets."""
        ws = _eligible_word_starts(word_start, eligible)
        if eligible is None and lengths is not None:
            ws &= np.arange(ws.shape[1])[None, :] < np.asarray(lengths)[:, None]
        spans = self.choose(rng, ws, lengths=lengths, eligible=eligible)
        pos, _ = spans.positions()
        new = tokens.copy()
        flat = new.reshape(-1)
        new_c, action, source, word_len = self.substitute(rng, flat[pos], ws.reshape(-1)[pos])
        flat[pos] = new_c
        return new, pos, {"spans": spans, "word_start": ws, "action": action, "source": source,
                          "word_len": word_len}

    # ------------------------------------------------------------------ API
    def batch(self, samples: Sequence[Mapping[str, np.ndarray]], rng: np.random.Generator) -> Sample:
        """[B, S] fields for a list of segments, vectorised over the batch."""
        S = int(self.config.seq_length)
        L = S - 2
        sp = self.special
        body, ws, n = _stack_segments(samples, L, "MacBERT", pad=sp.pad)
        B = len(samples)
        # reserved ids already in the input (other than unk) are copied, never targets
        eligible = None
        low = body < sp.first_regular
        if low.any():
            reserved = low & (body != sp.unk) & (np.arange(L)[None, :] < n[:, None])
            if reserved.any():
                eligible = (np.arange(L)[None, :] < n[:, None]) & ~reserved
                ws = _eligible_word_starts(ws, eligible)
        spans = self.choose(rng, ws, lengths=None if eligible is not None else n, eligible=eligible)
        pos, _ = spans.positions()
        flat_body = body.reshape(-1)
        orig = flat_body[pos]
        new_c, _, _, _ = self.substitute(rng, orig, ws.reshape(-1)[pos])
        opos = pos + (pos // max(L, 1)) * 2 + 1                 # body grid -> output grid
        tokens = np.empty((B, S), np.int32)
        tokens[:, 1:S - 1] = body
        tokens[:, 0] = sp.cls
        tokens[:, S - 1] = sp.pad
        tokens[np.arange(B), n + 1] = sp.sep
        tokens.reshape(-1)[opos] = new_c
        labels = np.full((B, S), sp.pad, np.int32)
        labels.reshape(-1)[opos] = orig
        loss_mask = np.zeros((B, S), np.float32)
        loss_mask.reshape(-1)[opos] = 1.0
        kv_end = np.empty((B, S), np.int32)
        kv_end[:] = (n + 2)[:, None]
        position_ids = np.empty((B, S), np.int32)
        position_ids[:] = np.arange(S, dtype=np.int32)
        return {
            "tokens": tokens,
            "labels": labels,
            "loss_mask": loss_mask,
            "position_ids": position_ids,
            "segment_ids": np.zeros((B, S), np.int32),
            "kv_start": np.zeros((B, S), np.int32),
            "kv_end": kv_end,
        }

    def choose_row(self, rng: np.random.Generator, body: np.ndarray, word_start: np.ndarray, width: int):
        """One segment's chosen n-grams, as the batch of one chooses them on a grid of
        ``width`` columns: ``(start, end, word_start)`` (the word starts the chooser saw)."""
        sp = self.special
        n = body.size
        ws = word_start.copy()
        if n:
            ws[0] = True
        reserved = body < sp.first_regular
        eligible = None
        if reserved.any():
            reserved &= body != sp.unk
            if reserved.any():
                eligible = ~reserved
                ws &= eligible
                ws[1:] |= eligible[1:] & ~eligible[:-1]
                ws[0] = eligible[0]
        if n == 0:
            return masking._NO_SPANS, masking._NO_SPANS, ws
        token_mode = eligible is None and (width <= 1 or (n == width and bool(ws[1:].all())))
        n_words = int(np.count_nonzero(ws))                  # ws is False where not eligible
        lo, hi = masking.row_spans(rng, ws, self.config.mask_rate * n_words, self._law, by_tokens=False,
                                   eligible=eligible, row_len=n if eligible is None else None,
                                   token_mode=token_mode)
        return lo, hi, ws

    def __call__(self, sample: Mapping[str, np.ndarray], rng: np.random.Generator) -> Sample:
        """One sample: the batch of one (same draws, same output), on a 1-D fast path."""
        if not masking.ONE_ROW_FAST_PATH:
            out = self.batch([sample], rng)
            return {k: np.asarray(v[0]) for k, v in out.items()}
        S = int(self.config.seq_length)
        sp = self.special
        body, ws = _segment_row(sample, S - 2, "MacBERT")
        lo, hi, ws = self.choose_row(rng, body, ws, S - 2)
        pos, _ = masking.row_positions(lo, hi)
        orig = body[pos]
        new_c = self.substitute(rng, orig, ws[pos])[0]
        n = body.size
        opos = pos + 1
        tokens = np.full(S, sp.pad, np.int32)
        tokens[0] = sp.cls
        tokens[1:n + 1] = body
        tokens[n + 1] = sp.sep
        tokens[opos] = new_c
        labels = np.full(S, sp.pad, np.int32)
        labels[opos] = orig
        loss_mask = np.zeros(S, np.float32)
        loss_mask[opos] = 1.0
        return {
            "tokens": tokens,
            "labels": labels,
            "loss_mask": loss_mask,
            "position_ids": self._positions.copy(),
            "segment_ids": np.zeros(S, np.int32),
            "kv_start": np.zeros(S, np.int32),
            "kv_end": np.full(S, n + 2, np.int32),
        }

    def __repr__(self) -> str:
        return f"MacBERT({self.config!r}, similar_words={len(self.similar)})"


def _eligible_word_starts(word_start: np.ndarray, eligible: np.ndarray | None) -> np.ndarray:
    """Word starts as the span chooser sees them: row starts, and with ``eligible``
    only eligible tokens, plus the first token of every eligible run."""
    ws = word_start.copy()
    ws[:, 0] = True
    if eligible is not None:
        ws &= eligible
        ws[:, 1:] |= eligible[:, 1:] & ~eligible[:, :-1]
        ws[:, 0] = eligible[:, 0]
    return ws


def _segment_row(sample: Mapping[str, np.ndarray], width: int, who: str,
                 extra: tuple[str, ...] = ()) -> tuple[np.ndarray, ...]:
    """One segment as :func:`_stack_segments` checks and cuts it, without padding:
    ``(tokens int32 [n], word_start bool [n], *extras bool [n])``, n <= ``width``
    (``word_start`` as given: column 0 is not forced)."""
    fields = ("tokens", "word_start") + tuple(extra)
    require_fields(sample, fields, who)
    cols = [np.asarray(sample[f]) for f in fields]
    if cols[0].ndim != 1:
        raise ValueError(f"{who}: tokens must be 1-D")
    n_all = cols[0].shape[0]
    for f, a in zip(fields[1:], cols[1:]):
        if a.ndim != 1 or a.shape[0] != n_all:
            raise ValueError(f"{who}: {f} must be 1-D with the length of tokens ({n_all}), got shape {a.shape}")
    return (cols[0][:width].astype(np.int32), *(a[:width].astype(bool) for a in cols[1:]))


def _stack_segments(samples: Sequence[Mapping[str, np.ndarray]], width: int, who: str,
                    extra: tuple[str, ...] = (), pad: int = 0) -> tuple:
    """Pad segments' ``tokens``/``word_start`` (and ``extra`` bool fields) into
    [B, width] grids (truncating; flags False past each length, ``word_start``
    True at column 0); returns ``(tokens, word_start, n, *extras)``."""
    B = len(samples)
    fields = ("tokens", "word_start") + tuple(extra)
    for s in samples:
        require_fields(s, fields, who)
    cols = [[np.asarray(s[f]) for s in samples] for f in fields]
    lens = np.fromiter((t.shape[0] if t.ndim == 1 else -1 for t in cols[0]), np.int64, B)
    if np.any(lens < 0):
        raise ValueError(f"{who}: tokens must be 1-D")
    for f, col in zip(fields[1:], cols[1:]):
        other = np.fromiter((a.shape[0] if a.ndim == 1 else -1 for a in col), np.int64, B)
        if not np.array_equal(other, lens):
            i = int(np.flatnonzero(other != lens)[0])
            raise ValueError(f"{who}: {f} must be 1-D with the length of tokens ({lens[i]}), "
                             f"got shape {col[i].shape}")
    n = np.minimum(lens, width)
    if np.any(lens > width):
        cols = [[a[:width] for a in col] for col in cols]
    grids = [np.full((B, width), pad, np.int32)] + [np.zeros((B, width), bool) for _ in fields[1:]]
    total = int(n.sum())
    if B == 1:                                  # one sample: plain copies
        for g, col in zip(grids, cols):
            g[0, :total] = col[0][:total]
    elif total:
        offs = np.cumsum(n) - n
        where = np.arange(total, dtype=np.int64) + np.repeat(np.arange(B, dtype=np.int64) * width - offs, n)
        for g, col in zip(grids, cols):
            g.reshape(-1)[where] = np.concatenate(col)
    if width:
        grids[1][:, 0] = True
    return (grids[0], grids[1], n, *grids[2:])


TASKS = (
    Task("macbert", MacBERT, MacBERTConfig, model="encoder", sampler="segment",
         input_length=lambda c: c.seq_length - 2, special=("cls", "sep", "pad")),
)
