"""MacBERT (Cui et al. 2020): MLM as correction, with similar words instead of [MASK].

Per sample:

1. words come from ``word_start``; 15% of the words (``mask_rate``, met in
   expectation, fractional budgets too) are chosen as whole-word n-grams of
   1/2/3/4 words with probabilities 40/30/20/10% (``ptobj.objectives.masking.choose_spans``);
2. every chosen *word* independently is replaced by a similar word (80%), by a
   random word (10%) or kept (10%) (``replace_probs``); no [MASK] is ever used;
3. a word with no similar word in the table gets a random word instead.

Token lengths. Labels are the original tokens position by position, so a
substitute must have as many tokens as the word it replaces. The rule: the
similar-word table only holds candidates of the same token count (mismatched
ones are dropped when it is built, see ``ptobj.objectives.similar_words``); a random
word is drawn from the table's words of the same token count, and where the
table has none of that length, each token of the word is replaced by a uniform
random regular id in ``[first_regular, vocab_size)``.

Input: a segment ``tokens`` [n] + ``word_start`` [n]. Output (length
``seq_length``): ``[CLS] tokens [SEP] PAD...`` (tokens truncated to
``seq_length - 2``), ``labels`` = original token where chosen (PAD elsewhere),
``loss_mask`` 1.0 there, ``position_ids`` 0.., ``segment_ids`` 0,
``kv_start``/``kv_end`` = every row sees the non-pad tokens ``[0, n+2)``.
An empty segment gives ``[CLS] [SEP]`` and no targets.

``MacBERT.batch(batch, streams)`` builds [B, S] arrays for a batch of segments,
row b drawing from its own stream; ``MacBERT(...)(sample, seed, epoch=, index=)``
is the batch of one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ptobj.objectives import masking
from ptobj.objectives.mlm import body_to_output, flag_grid, maskable, segment_grid, set_targets, single_segment_fields
from ptobj.objectives.sample import Batch, ConfiguredTransform, SpecialTokens, check_rate
from ptobj.objectives.task import Task
from ptobj.objectives.streams import RowStreams, site
from ptobj.objectives.similar_words import (
    SimilarWords,
    from_embedding_file,
    from_synonym_file,
)

SIMILAR = 0
RANDOM_WORD = 1
KEEP = 2

SIMILAR_FORMATS = ("auto", "table", "synonyms", "embeddings")

_SITE_ACTION = site("macbert.action")
_SITE_SIMILAR = site("macbert.similar")
_SITE_RANDOM_WORD = site("macbert.random_word")
_SITE_RANDOM_ID = site("macbert.random_id")


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


def replace_words(streams: RowStreams, tokens: np.ndarray, word_first: np.ndarray, word_len: np.ndarray,
                  table: SimilarWords, *, rows: np.ndarray, cols: np.ndarray, replace_probs, low: int,
                  high: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Corrupt chosen words laid end to end in ``tokens`` (word i is
    ``tokens[word_first[i]:word_first[i]+word_len[i]]``); token j sits at row
    ``rows[j]``, column ``cols[j]`` of the batch, and draws come from that row's stream
    at the word's first column (the word's choices) or the token's column (random ids).

    Returns ``(new_tokens, action, source)`` with per-word ``action`` in
    SIMILAR / RANDOM_WORD / KEEP and ``source``: 0 kept, 1 similar word from the
    table, 2 random table word, 3 random tokens (see the module's length rule).
    """
    n_words = len(word_first)
    p = np.asarray(replace_probs, np.float64)
    w_row, w_col = rows[word_first], cols[word_first]
    u0 = streams.uniform_at(_SITE_ACTION, w_row, w_col)
    action = np.full(n_words, KEEP, np.int8)
    action[u0 < p[0] + p[1]] = RANDOM_WORD
    action[u0 < p[0]] = SIMILAR
    tok_word = np.arange(n_words).repeat(word_len)
    if not len(table):                                   # every substituted word: random tokens
        random_tok = (action != KEEP)[tok_word]
        source = np.where(action == KEEP, 0, 3).astype(np.int8)
        new = tokens.copy()
    else:
        pos = np.arange(len(tokens)) - word_first[tok_word]
        sub = np.full(n_words, -1, np.int64)
        want_sim = action == SIMILAR
        if want_sim.any():
            idx = table.lookup(tokens, word_first, word_len, tok_word=tok_word, pos=pos)
            sub = np.where(want_sim, table.pick_similar(idx, streams.uniform_at(_SITE_SIMILAR, w_row, w_col)), -1)
        need_random = (action == RANDOM_WORD) | (want_sim & (sub < 0))
        if need_random.any():
            u2 = streams.uniform_at(_SITE_RANDOM_WORD, w_row, w_col)
            sub = np.where(need_random, table.pick_random(word_len, u2), sub)
        source = np.where(action == KEEP, 0, np.where(sub >= 0, np.where(need_random, 2, 1), 3)).astype(np.int8)
        tok_sub = sub[tok_word]
        new = np.where(tok_sub >= 0, table.first_tokens[np.maximum(tok_sub, 0)], tokens)
        later = ((pos > 0) & (tok_sub >= 0)).nonzero()[0]   # 2nd.. tokens of multi-token substitutes
        if later.size:
            new[later] = table.words.reshape(-1)[tok_sub[later] * table.words.shape[1] + pos[later]]
        random_tok = (source == 3)[tok_word]
    rnd = random_tok.nonzero()[0]
    if rnd.size:
        new[rnd] = streams.integers_at(_SITE_RANDOM_ID, rows[rnd], cols[rnd], low, high)
    return new, action, source


class MacBERT(ConfiguredTransform):
    """Whole-word n-gram masking with similar-word substitution (no [MASK])."""

    config_type = MacBERTConfig
    reads = ("tokens", "word_start")
    writes = ("tokens", "labels", "loss_mask", "position_ids", "segment_ids", "kv_start", "kv_end")

    def __init__(self, config: MacBERTConfig, *, special: SpecialTokens, vocab_size: int, tokenizer=None,
                 similar: SimilarWords | None = None):
        super().__init__(config, special=special, vocab_size=vocab_size)
        if similar is None and config.similar_words:
            similar = load_similar_words(config.similar_words, config.similar_format, tokenizer,
                                         neighbours=config.neighbours, min_similarity=config.min_similarity,
                                         first_regular=special.first_regular)
        self.similar = similar if similar is not None else _empty_table()
        self.ngram_probs = masking.ngram_length_probs(config.ngram_probs)
        self.replace_probs = masking.check_action_probs(config.replace_probs, "replace_probs")
        self._law = masking.SpanLaw(self.ngram_probs)

    # ------------------------------------------------------------------ parts (SOP/NSP reuse them)
    def choose(self, streams: RowStreams, word_start: np.ndarray, *, lengths=None, eligible=None) -> masking.SpanSet:
        """Whole-word n-grams over a [B, W] grid, ``mask_rate`` of each row's words (as
        :func:`ptobj.objectives.masking.effective_word_starts` counts them)."""
        return masking.choose_spans(streams, word_start, length_probs=self._law, word_share=self.config.mask_rate,
                                    lengths=lengths, eligible=eligible)

    def substitute(self, streams: RowStreams, tokens: np.ndarray, pos: np.ndarray,
                   word_first: np.ndarray) -> np.ndarray:
        """In place on ``tokens`` [B, S]: corrupt the chosen words at the flat positions ``pos``
        (ascending; ``word_first`` True where a chosen word begins). Draws are keyed by each
        word's (row, column) in ``tokens``. Returns each chosen word's action."""
        flat = tokens.reshape(-1)
        first = word_first.nonzero()[0]
        word_len = np.diff(first, append=pos.size)
        rows, cols = np.divmod(pos, tokens.shape[1])
        new, action, _ = replace_words(streams, flat[pos].astype(np.int64), first, word_len, self.similar,
                                       rows=rows, cols=cols, replace_probs=self.replace_probs,
                                       low=self.special.first_regular, high=self.vocab_size)
        flat[pos] = new
        return action

    def apply(self, batch: Batch, streams: RowStreams) -> Batch:
        S = int(self.config.seq_length)
        sp = self.special
        body, n = segment_grid(batch, S - 2, self.vocab_size, "MacBERT")
        ws = flag_grid(batch, "word_start", body, "MacBERT")
        out = single_segment_fields(body, n, S, sp)
        B, W = body.shape
        if W == 0:
            return out
        # reserved ids already in the input (other than unk) are copied, never targets
        eligible = maskable(body, n, sp)
        lengths = n if eligible is None else None
        ws = masking.effective_word_starts(ws, lengths=lengths, eligible=eligible)
        spans = self.choose(streams, ws, lengths=lengths, eligible=eligible)
        pos, _ = spans.positions()
        opos = body_to_output(pos, W, S)
        set_targets(out, opos)
        self.substitute(streams, out["tokens"], opos, ws.reshape(-1)[pos])
        return out

    def __repr__(self) -> str:
        return f"MacBERT({self.config!r}, similar_words={len(self.similar)})"


TASKS = (
    Task("macbert", MacBERT, MacBERTConfig, model="encoder", sampler="segment",
         input_length=lambda c: c.seq_length - 2, special=("cls", "sep", "pad")),
)
