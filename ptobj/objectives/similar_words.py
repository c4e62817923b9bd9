"""Similar-word sources for MacBERT, over words as token-id tuples.

A *word* is the tuple of token ids a tokenizer gives it in running text (a
word-start token and its continuations). Every source compiles into one
``SimilarWords`` table of flat numpy arrays, so MacBERT's lookups are
vectorised (hash -> ``searchsorted`` -> verify) and need numpy alone.

Length rule (labels are the original tokens, position by position): a
substitute always has the *same token count* as the word it replaces.
Candidates of another length are dropped when the table is built; a word left
with no candidate gets a random word instead (MacBERT's fallback).

Ways to build a table:

* ``SimilarWords.from_neighbours({word: [similar, ...]})`` -- any mapping.
* ``from_synonym_file(path, tokenizer)`` -- lines ``word syn1 syn2 ...``.
* ``from_embeddings(words, vectors, k)`` / ``from_embedding_file(path, tokenizer)``
  -- cosine nearest neighbours (word2vec text format for the file).
* ``from_corpus(segments, ...)`` -- PPMI + truncated SVD word vectors built in
  numpy from tokenised segments (``tokens`` + ``word_start``), then neighbours.
* ``SimilarWords.save(path)`` / ``SimilarWords.load(path)`` -- ``.npz``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

from ptobj.extras import require

Word = tuple[int, ...]

MAX_WORD_TOKENS = 16
_MULT = np.uint64(0x9E3779B97F4A7C15)
_POWERS = np.cumprod(np.concatenate(([np.uint64(1)], np.full(MAX_WORD_TOKENS - 1, _MULT, np.uint64))),
                     dtype=np.uint64)
_LEN_SALT = np.uint64(0xD6E8FEB86659FD93)


def hash_words(flat_tokens: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """uint64 key per word; words are runs ``flat_tokens[starts[i]:starts[i]+lengths[i]]``
    laid end to end (``starts`` = exclusive cumsum of ``lengths``), each 1..MAX_WORD_TOKENS long."""
    if len(starts) == 0:
        return np.zeros(0, np.uint64)
    pos = np.arange(len(flat_tokens)) - np.repeat(starts, lengths)
    with np.errstate(over="ignore"):
        contrib = (flat_tokens.astype(np.uint64) + np.uint64(1)) * _POWERS[pos]
        return np.add.reduceat(contrib, starts) ^ (lengths.astype(np.uint64) * _LEN_SALT)


@dataclass(frozen=True, eq=False)
class SimilarWords:
    """Compiled word -> same-length substitutes table.

    ``words`` [n, MAX_WORD_TOKENS] int32 (padded with -1) sorted by ``keys``;
    candidates of word i are ``cand_ids[cand_offsets[i]:cand_offsets[i+1]]``;
    ``by_length[L]`` lists the words of L tokens (the pool for random words).
    """

    words: np.ndarray
    lengths: np.ndarray
    keys: np.ndarray
    cand_offsets: np.ndarray
    cand_ids: np.ndarray

    def __post_init__(self):
        n = len(self.words)
        if self.words.ndim != 2 or self.words.shape[1] != MAX_WORD_TOKENS:
            raise ValueError(f"SimilarWords.words must be [n, {MAX_WORD_TOKENS}], got {self.words.shape}")
        if not (len(self.lengths) == len(self.keys) == n and len(self.cand_offsets) == n + 1):
            raise ValueError("SimilarWords: words/lengths/keys/cand_offsets sizes disagree")
        order = np.argsort(self.lengths, kind="stable")
        bounds = np.searchsorted(self.lengths[order], np.arange(MAX_WORD_TOKENS + 3))
        object.__setattr__(self, "_by_len_ids", order.astype(np.int32))
        object.__setattr__(self, "_by_len_start", bounds[:-1].astype(np.int64))
        object.__setattr__(self, "_by_len_count", np.diff(bounds).astype(np.int64))
        # one-token words: a direct token id -> table index map
        one = np.flatnonzero(self.lengths == 1)
        direct = np.full(int(self.words[one, 0].max()) + 1 if len(one) else 0, -1, np.int64)
        direct[self.words[one, 0]] = one
        object.__setattr__(self, "_single", direct)
        object.__setattr__(self, "_has_multi", bool(np.any(self.lengths > 1)))
        # first tokens alone: a small array that stays in cache for the common one-token gathers
        object.__setattr__(self, "first_tokens", np.ascontiguousarray(self.words[:, 0]))

    # ------------------------------------------------------------------ build
    @classmethod
    def from_neighbours(cls, neighbours: Mapping[Word, Sequence[Word]], *, first_regular: int = 16,
                        extra_words: Iterable[Word] = ()) -> "SimilarWords":
        """Any mapping word -> similar words. Words with a reserved id (< first_regular),
        empty or longer than MAX_WORD_TOKENS are dropped, and so are candidates of a
        different token length or equal to the word. ``extra_words`` only join the
        random-word pool."""
        def ok(w) -> bool:
            return 0 < len(w) <= MAX_WORD_TOKENS and min(w) >= first_regular

        vocab: dict[Word, None] = {}
        for w, sims in neighbours.items():
            w = tuple(int(t) for t in w)
            if ok(w):
                vocab[w] = None
                for s in sims:
                    s = tuple(int(t) for t in s)
                    if ok(s) and len(s) == len(w):
                        vocab[s] = None
        for w in extra_words:
            w = tuple(int(t) for t in w)
            if ok(w):
                vocab[w] = None
        words = list(vocab)
        lengths = np.array([len(w) for w in words], dtype=np.int32)
        flat = np.array([t for w in words for t in w], dtype=np.int64)
        starts = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64) if words else np.zeros(0, np.int64)
        keys = hash_words(flat, starts, lengths)
        order = np.argsort(keys, kind="stable")
        if len(order) and np.any(keys[order][1:] == keys[order][:-1]):
            raise ValueError("SimilarWords: two different words share a hash key (extremely unlikely); drop one")
        new_id = np.empty(len(words), np.int64)
        new_id[order] = np.arange(len(words))
        table = np.full((len(words), MAX_WORD_TOKENS), -1, np.int32)
        for i, w in enumerate(words):
            table[new_id[i], : len(w)] = w
        cands: list[list[int]] = [[] for _ in words]
        index = {w: i for i, w in enumerate(words)}
        for w, sims in neighbours.items():
            w = tuple(int(t) for t in w)
            if w not in index:
                continue
            seen = set()
            for s in sims:
                s = tuple(int(t) for t in s)
                j = index.get(s)
                if j is not None and s != w and len(s) == len(w) and j not in seen:
                    seen.add(j)
                    cands[new_id[index[w]]].append(int(new_id[j]))
        counts = np.array([len(c) for c in cands], dtype=np.int64)
        offsets = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
        cand_ids = np.array([j for c in cands for j in c], dtype=np.int32)
        return cls(table, lengths[order], keys[order], offsets, cand_ids)

    def save(self, path) -> None:
        np.savez(path, words=self.words, lengths=self.lengths, keys=self.keys,
                 cand_offsets=self.cand_offsets, cand_ids=self.cand_ids)

    @classmethod
    def load(cls, path) -> "SimilarWords":
        try:
            z = np.load(path)
            return cls(z["words"], z["lengths"], z["keys"], z["cand_offsets"], z["cand_ids"])
        except (OSError, KeyError, ValueError) as e:
            raise ValueError(f"{path}: not a SimilarWords table (.npz): {e}") from e

    # ----------------------------------------------------------------- lookup
    def __len__(self) -> int:
        return len(self.words)

    def neighbours(self, word: Sequence[int]) -> list[Word]:
        """Python view for inspection and tests."""
        w = np.asarray(word, np.int64)
        idx = self.lookup(w, np.array([0]), np.array([len(w)]))[0]
        if idx < 0:
            return []
        ids = self.cand_ids[self.cand_offsets[idx]: self.cand_offsets[idx + 1]]
        return [tuple(int(t) for t in self.words[j, : self.lengths[j]]) for j in ids]

    def lookup(self, flat_tokens: np.ndarray, starts: np.ndarray, lengths: np.ndarray, *,
               tok_word: np.ndarray | None = None, pos: np.ndarray | None = None) -> np.ndarray:
        """Table index per word (words laid end to end in ``flat_tokens``), -1 if absent.
        ``tok_word`` / ``pos`` (each token's word and place in it) may be passed if known.
        One-token words go through a direct id -> word table; longer ones are hashed,
        found by binary search and verified token by token."""
        n = len(starts)
        out = np.full(n, -1, np.int64)
        if n == 0 or len(self.keys) == 0:
            return out
        flat_tokens = np.asarray(flat_tokens, np.int64)
        single = lengths == 1
        first = flat_tokens[starts]
        direct = self._single
        ok = single & (first >= 0) & (first < len(direct))
        out[ok] = direct[first[ok]]
        if not self._has_multi:
            return out
        multi = ~single & (lengths <= MAX_WORD_TOKENS)
        if not multi.any():
            return out
        if tok_word is None:
            tok_word = np.repeat(np.arange(n), lengths)
            pos = np.arange(len(flat_tokens)) - starts[tok_word]
        sel = multi[tok_word]
        m_len = lengths[multi]
        m_start = np.cumsum(m_len) - m_len
        m_tok = flat_tokens[sel]
        keys = hash_words(m_tok, m_start, m_len)
        order = np.argsort(keys)                    # sorted needles search much faster
        idx = np.empty(len(keys), np.int64)
        idx[order] = np.searchsorted(self.keys, keys[order])
        idx = np.minimum(idx, len(self.keys) - 1)
        hit = self.keys[idx] == keys
        # verify token by token (guards against hash collisions)
        same = self.words.reshape(-1)[np.repeat(idx, m_len) * MAX_WORD_TOKENS + pos[sel]] == m_tok
        hit &= np.logical_and.reduceat(same, m_start) & (self.lengths[idx] == m_len)
        out[multi] = np.where(hit, idx, -1)
        return out

    def pick_similar(self, idx: np.ndarray, u: np.ndarray) -> np.ndarray:
        """One candidate per word (``u`` uniform in [0,1)); -1 where there is none."""
        safe = np.maximum(idx, 0)
        start = self.cand_offsets[safe]
        count = np.where(idx >= 0, self.cand_offsets[safe + 1] - start, 0)
        pick = start + np.minimum((u * count).astype(np.int64), np.maximum(count - 1, 0))
        has = count > 0
        out = np.full(len(idx), -1, np.int64)
        if has.any():
            out[has] = self.cand_ids[pick[has]]
        return out

    def pick_random(self, lengths: np.ndarray, u: np.ndarray) -> np.ndarray:
        """A random table word of the given token length; -1 where the table has none."""
        lengths = np.minimum(lengths, MAX_WORD_TOKENS + 1)
        count = self._by_len_count[lengths]
        start = self._by_len_start[lengths]
        pick = start + np.minimum((u * count).astype(np.int64), np.maximum(count - 1, 0))
        has = count > 0
        out = np.full(len(lengths), -1, np.int64)
        if has.any():
            out[has] = self._by_len_ids[pick[has]]
        return out


# ---------------------------------------------------------------------- helpers
def _words_of_segment(tokens: np.ndarray, word_start: np.ndarray) -> list[Word]:
    tokens = np.asarray(tokens)
    if len(tokens) == 0:
        return []
    ws = np.asarray(word_start, bool).copy()
    ws[0] = True
    cuts = np.flatnonzero(ws)[1:]
    return [tuple(int(t) for t in part) for part in np.split(tokens, cuts)]


def _encode_word(tokenizer, text: str) -> Word:
    return tuple(int(t) for t in tokenizer.encode(text))


def from_synonym_file(path, tokenizer, *, first_regular: int = 16) -> SimilarWords:
    """Text file, one entry per line: ``word syn1 syn2 ...`` (whitespace or tabs;
    ``#`` starts a comment). Each word is tokenised alone with ``tokenizer.encode``;
    for tokenizers whose pieces depend on context (a word-start marker), write the
    file in the form the words take in running text."""
    table: dict[Word, list[Word]] = {}
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise ValueError(f"synonym file {path}: {e}") from e
    for line in lines:
        parts = line.split("#", 1)[0].split()
        if len(parts) < 2:
            continue
        w = _encode_word(tokenizer, parts[0])
        table.setdefault(w, []).extend(_encode_word(tokenizer, p) for p in parts[1:])
    if not table:
        raise ValueError(f"synonym file {path}: no line of the form 'word synonym ...'")
    return SimilarWords.from_neighbours(table, first_regular=first_regular)


def nearest_neighbours(words: Sequence[Word], vectors: np.ndarray, k: int = 10,
                       min_similarity: float = 0.0, block: int = 1024) -> dict[Word, list[Word]]:
    """Top-``k`` cosine neighbours of each word among the words of the same token length."""
    vectors = np.asarray(vectors, np.float32)
    if vectors.ndim != 2 or len(vectors) != len(words):
        raise ValueError(f"vectors must be [len(words), dim], got {vectors.shape} for {len(words)} words")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = vectors / np.maximum(norms, 1e-12)
    lengths = np.array([len(w) for w in words])
    out: dict[Word, list[Word]] = {}
    for L in np.unique(lengths):
        ids = np.flatnonzero(lengths == L)
        if len(ids) < 2:
            continue
        group = unit[ids]
        kk = min(k, len(ids) - 1)
        for b in range(0, len(ids), block):
            sims = group[b: b + block] @ group.T
            rows = np.arange(sims.shape[0])
            sims[rows, b + rows] = -np.inf  # not its own neighbour
            top = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
            top_s = np.take_along_axis(sims, top, axis=1)
            order = np.argsort(-top_s, axis=1)
            top, top_s = np.take_along_axis(top, order, 1), np.take_along_axis(top_s, order, 1)
            for r in range(len(top)):
                good = top[r][top_s[r] >= min_similarity]
                if len(good):
                    out[words[ids[b + r]]] = [words[ids[j]] for j in good]
    return out


def from_embeddings(words: Sequence[Word], vectors: np.ndarray, k: int = 10, min_similarity: float = 0.0,
                    *, first_regular: int = 16) -> SimilarWords:
    nn = nearest_neighbours(words, vectors, k=k, min_similarity=min_similarity)
    return SimilarWords.from_neighbours(nn, first_regular=first_regular, extra_words=words)


def from_embedding_file(path, tokenizer, k: int = 10, min_similarity: float = 0.0, *,
                        first_regular: int = 16) -> SimilarWords:
    """word2vec text format: optional ``n dim`` header, then ``word v1 ... vdim`` per line."""
    words: list[Word] = []
    vecs: list[np.ndarray] = []
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                parts = line.rstrip("\n").split()
                if not parts or (lineno == 1 and len(parts) == 2):
                    continue
                try:
                    vecs.append(np.array(parts[1:], dtype=np.float32))
                except ValueError as e:
                    raise ValueError(f"embedding file {path} line {lineno}: {e}") from e
                words.append(_encode_word(tokenizer, parts[0]))
    except OSError as e:
        raise ValueError(f"embedding file {path}: {e}") from e
    dims = {len(v) for v in vecs}
    if len(dims) != 1:
        raise ValueError(f"embedding file {path}: rows have different dimensions {sorted(dims)}")
    return from_embeddings(words, np.stack(vecs), k=k, min_similarity=min_similarity, first_regular=first_regular)


def ppmi_svd_vectors(sequences: Sequence[np.ndarray], n_words: int, *, window: int = 2, dim: int = 64,
                     alpha: float = 0.75, seed: int = 0) -> np.ndarray:
    """Word vectors from co-occurrence counts: positive PMI (context smoothing
    ``alpha``) factorised by a randomised truncated SVD; ``sequences`` hold word
    ids (-1 = out of vocabulary, never counted)."""
    counts = np.zeros(n_words * n_words, np.float64)
    for seq in sequences:
        seq = np.asarray(seq, np.int64)
        for d in range(1, window + 1):
            a, b = seq[:-d], seq[d:]
            keep = (a >= 0) & (b >= 0)
            if keep.any():
                counts += np.bincount(a[keep] * n_words + b[keep], minlength=n_words * n_words)
    c = counts.reshape(n_words, n_words)
    c = c + c.T
    total = c.sum()
    if total == 0:
        return np.zeros((n_words, dim), np.float32)
    row = c.sum(1, keepdims=True)
    ctx = c.sum(0) ** alpha
    ctx = ctx / ctx.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        pmi = np.log(c / total) - np.log(row / total) - np.log(ctx)[None, :]
    ppmi = np.where(np.isfinite(pmi) & (pmi > 0), pmi, 0.0)
    dim = min(dim, n_words)
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(ppmi @ rng.standard_normal((n_words, min(n_words, dim + 10))))
    for _ in range(2):  # power iterations sharpen the spectrum
        q, _ = np.linalg.qr(ppmi @ (ppmi.T @ q))
    u, s, _ = np.linalg.svd(q.T @ ppmi, full_matrices=False)
    return ((q @ u)[:, :dim] * np.sqrt(s[:dim])).astype(np.float32)


def from_corpus(segments: Iterable[Mapping[str, np.ndarray]], *, max_words: int = 5000, min_count: int = 2,
                window: int = 2, dim: int = 64, k: int = 10, min_similarity: float = 0.3,
                first_regular: int = 16, seed: int = 0) -> SimilarWords:
    """Neighbours from the corpus itself: segments with ``tokens`` and ``word_start``
    (as the data pipeline yields them) -> word vocabulary (most frequent
    ``max_words`` seen >= ``min_count`` times) -> PPMI+SVD vectors -> cosine
    neighbours of the same token length."""
    docs = [_words_of_segment(s["tokens"], s["word_start"]) for s in segments]
    freq = Counter(w for d in docs for w in d if len(w) <= MAX_WORD_TOKENS and min(w) >= first_regular)
    vocab = [w for w, c in freq.most_common(max_words) if c >= min_count]
    if len(vocab) < 2:
        raise ValueError(f"from_corpus: fewer than 2 words seen >= {min_count} times; give more text")
    index = {w: i for i, w in enumerate(vocab)}
    seqs = [np.array([index.get(w, -1) for w in d], np.int64) for d in docs]
    vectors = ppmi_svd_vectors(seqs, len(vocab), window=window, dim=dim, seed=seed)
    return from_embeddings(vocab, vectors, k=k, min_similarity=min_similarity, first_regular=first_regular)


def chinese_word_starts(text: str, tokens: Sequence[int], tokenizer, cut=None) -> np.ndarray:
    """``word_start`` flags for ``tokens = tokenizer.encode(text)`` of Chinese text.

    Chinese has no spaces, so word boundaries come from a segmenter (``cut``:
    text -> list of words; default ``jieba.lcut``). Each token is located in the
    text by decoding it alone and matching it after the previous token
    (whitespace skipped); a token is a word start when it begins at a
    segmenter boundary. A token that cannot be located (e.g. unknown piece) starts
    a word. Not a hot path: run it once when preparing data.
    """
    if cut is None:
        require("data", "jieba", by="chinese_word_starts")
        import jieba  # lazy: objectives import with numpy alone

        jieba.setLogLevel(60)
        cut = jieba.lcut
    bounds = set()
    pos = 0
    for w in cut(text):
        bounds.add(pos)
        pos += len(w)
    out = np.zeros(len(tokens), bool)
    ptr = 0
    for i, t in enumerate(tokens):
        piece = tokenizer.decode([int(t)]).strip()
        while ptr < len(text) and text[ptr].isspace():
            ptr += 1
        if piece and text.startswith(piece, ptr):
            out[i] = ptr in bounds
            ptr += len(piece)
        elif piece:
            found = text.find(piece, ptr)
            out[i] = True if found < 0 else (found in bounds)
            if found >= 0:
                ptr = found + len(piece)
        else:
            out[i] = True
    if len(out):
        out[0] = True
    return out
