"""Samplers: every sample is a pure function of ``(seed, epoch, index)``.

A sampler has ``len(sampler)`` samples per epoch and ``sampler.sample(epoch,
index) -> dict[str, np.ndarray]``. Randomness comes from
``np.random.default_rng([seed, epoch, ...])`` (per-epoch orders) and
``mix64(seed, epoch, index, ...)`` (per-sample picks) only, so any read order, any
number of DataLoader workers and any resume point give the same samples.
The index -> position mappings are numpy (cumsum / searchsorted / repeat), and
token reads are slices or one fancy-index gather from the memory-mapped data.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import numpy as np

from data_pipeline.indexed import TokenData
from objectives.sample import SpecialTokens

_STREAM_ORDER, _STREAM_PICK = 0, 1


_M64 = (1 << 64) - 1


def epoch_rng(seed: int, epoch: int, *extra: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(epoch), *map(int, extra)])


def mix64(*values: int) -> int:
    """A 64-bit hash (splitmix64 finaliser chained over the values): a cheap, deterministic
    per-sample random draw where building a Generator would cost more than the read."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = ((h ^ (int(v) & _M64)) * 0xBF58476D1CE4E5B9) & _M64
        h ^= h >> 31
        h = (h * 0x94D049BB133111EB) & _M64
        h ^= h >> 29
    return h


class _EpochCache:
    """Tiny LRU for per-epoch permutations (a worker reads one or two epochs at a time)."""

    def __init__(self, build, size: int = 2):
        self._build, self._size, self._items = build, size, OrderedDict()

    def __call__(self, epoch: int):
        if epoch in self._items:
            self._items.move_to_end(epoch)
            return self._items[epoch]
        value = self._items[epoch] = self._build(epoch)
        if len(self._items) > self._size:
            self._items.popitem(last=False)
        return value


def _check_index(sampler, epoch: int, index: int) -> None:
    if epoch < 0 or not 0 <= index < len(sampler):
        raise IndexError(f"{type(sampler).__name__}: (epoch={epoch}, index={index}) out of range; "
                         f"{len(sampler)} samples per epoch")


class PackedContextSampler:
    """GPT contexts of ``seq_length + 1`` tokens from documents joined by EOT.

    Each epoch shuffles the document order globally; sample ``i`` is stream
    positions ``[i*S, i*S + S + 1)`` (consecutive contexts share one token, as
    megatron's GPT dataset does), so every token is a target once per epoch.
    """

    def __init__(self, data: TokenData, seq_length: int, *, seed: int = 0, shuffle: bool = True,
                 special: SpecialTokens | None = None):
        if seq_length < 1:
            raise ValueError(f"seq_length must be >= 1, got {seq_length}")
        self.data, self.seq_length, self.seed, self.shuffle = data, int(seq_length), int(seed), shuffle
        self.eot = (special or SpecialTokens()).eot
        self._doc_len = data.document_lengths()
        self._doc_off = data.document_offsets[:-1]
        stream = int(self._doc_len.sum()) + len(self._doc_len)
        self._len = (stream - 1) // self.seq_length
        if self._len < 1:
            raise ValueError(f"{data.prefix}: documents are shorter than a sample: {stream} tokens with EOTs, "
                             f"a context needs seq_length + 1 = {self.seq_length + 1}")
        self._epoch = _EpochCache(self._order)

    def __len__(self) -> int:
        return self._len

    def _order(self, epoch: int):
        n = len(self._doc_len)
        perm = epoch_rng(self.seed, epoch, _STREAM_ORDER).permutation(n) if self.shuffle else np.arange(n)
        ends = np.cumsum(self._doc_len[perm] + 1)  # stream end (exclusive) of each doc incl. its EOT
        return perm, ends

    def sample(self, epoch: int, index: int) -> dict[str, np.ndarray]:
        _check_index(self, epoch, index)
        perm, ends = self._epoch(epoch)
        start = index * self.seq_length
        stop = start + self.seq_length + 1
        k0 = int(np.searchsorted(ends, start, side="right"))
        k1 = int(np.searchsorted(ends, stop - 1, side="right")) + 1
        docs = perm[k0:k1]
        seg_end = ends[k0:k1]  # exclusive, includes EOT
        seg_start = seg_end - (self._doc_len[docs] + 1)
        lo = np.maximum(seg_start, start)
        hi = np.minimum(seg_end, stop)
        if len(docs) == 1:  # fast path: one document (plus maybe its EOT)
            a = self._doc_off[docs[0]] + (lo[0] - seg_start[0])
            n_tok = min(hi[0], seg_end[0] - 1) - lo[0]
            out = np.empty(self.seq_length + 1, dtype=np.int32)
            out[:n_tok] = self.data.tokens[a : a + n_tok]
            out[n_tok:] = self.eot
            return {"tokens": out}
        counts = hi - lo
        which = np.repeat(np.arange(len(docs)), counts)
        pos = np.arange(start, stop) 
        within = pos - seg_start[which]
        is_eot = within == self._doc_len[docs][which]
        src = self._doc_off[docs][which] + within
        src[is_eot] = 0
        out = self.data.tokens[src].astype(np.int32)
        out[is_eot] = self.eot
        return {"tokens": out}


class _SegmentTable:
    """Segments of whole consecutive sentences, up to ``max_tokens``, tiling each document.

    Greedy packing: a segment starting at sentence ``s`` takes sentences while they
    fit in ``max_tokens`` (at least one, truncated if longer); the next segment
    starts at the next sentence. The chain of starts is followed for all documents
    at once (one numpy step per segment of the longest document).
    """

    def __init__(self, data: TokenData, max_tokens: int):
        so, ds = data.sentence_offsets, data.document_sentences
        n_sent = data.num_sentences
        sent_doc = np.repeat(np.arange(data.num_documents), np.diff(ds))
        doc_end = ds[1:][sent_doc]  # first sentence after each sentence's document
        fits = np.searchsorted(so, so[:-1] + max_tokens, side="right") - 1
        nxt = np.minimum(np.maximum(fits, np.arange(1, n_sent + 1)), doc_end)
        frontier = ds[:-1][np.diff(ds) > 0]
        starts = []
        while frontier.size:
            starts.append(frontier)
            step = nxt[frontier]
            frontier = step[step < doc_end[frontier]]
        self.first_sentence = np.sort(np.concatenate(starts)) if starts else np.zeros(0, np.int64)
        self.start = so[self.first_sentence]
        self.stop = np.minimum(so[nxt[self.first_sentence]], self.start + max_tokens)
        self.document = sent_doc[self.first_sentence]
        self.num_sentences = nxt[self.first_sentence] - self.first_sentence


class SegmentSampler:
    """One segment of up to ``max_tokens`` tokens from one document, starting at a sentence start.

    Fields: ``tokens`` int32 [n], ``word_start`` bool [n] (first token always a
    word start), ``sentence_start`` bool [n]. For SpanBERT / MLM / UniLM.
    """

    min_sentences = 1

    def __init__(self, data: TokenData, max_tokens: int, *, seed: int = 0, min_tokens: int = 1,
                 shuffle: bool = True):
        if max_tokens < 1 or min_tokens < 1 or min_tokens > max_tokens:
            raise ValueError(f"need 1 <= min_tokens <= max_tokens, got min_tokens={min_tokens}, "
                             f"max_tokens={max_tokens}")
        self.data, self.max_tokens, self.seed, self.shuffle = data, int(max_tokens), int(seed), shuffle
        self.table = _SegmentTable(data, self.max_tokens)
        t = self.table
        self.segments = np.flatnonzero((t.stop - t.start >= min_tokens) & (t.num_sentences >= self.min_sentences))
        if len(self.segments) == 0:
            raise ValueError(
                f"{data.prefix}: documents are shorter than a sample: no segment has >= {min_tokens} tokens"
                f" and >= {self.min_sentences} sentence(s) (longest document: {data.document_lengths().max()} tokens)")
        self._epoch = _EpochCache(self._order)

    def __len__(self) -> int:
        return len(self.segments)

    def _order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return self.segments
        return self.segments[epoch_rng(self.seed, epoch, _STREAM_ORDER).permutation(len(self.segments))]

    def _segment(self, seg: int, prefix: str = "") -> dict[str, np.ndarray]:
        t, data = self.table, self.data
        a, b = int(t.start[seg]), int(t.stop[seg])
        word_start = data.word_start[a:b].copy()
        word_start[0] = True
        out = {f"{prefix}tokens": data.tokens[a:b].astype(np.int32), f"{prefix}word_start": word_start}
        if not prefix:
            s0 = t.first_sentence[seg]
            starts = data.sentence_offsets[s0 : s0 + t.num_sentences[seg]] - a
            sentence_start = np.zeros(b - a, dtype=bool)
            sentence_start[starts] = True
            out["sentence_start"] = sentence_start
        return out

    def segment_id(self, epoch: int, index: int) -> int:
        _check_index(self, epoch, index)
        return int(self._epoch(epoch)[index])

    def sample(self, epoch: int, index: int) -> dict[str, np.ndarray]:
        return self._segment(self.segment_id(epoch, index))


class SegmentPairSampler(SegmentSampler):
    """A chunk of >= 2 consecutive sentences of one document (the transform cuts A|B at a
    sentence start, for SOP / NSP) plus ``random_tokens`` / ``random_word_start``: a
    segment of another document (the NSP negative), drawn from ``(seed, epoch, index)``.
    """

    min_sentences = 2

    def __init__(self, data: TokenData, max_tokens: int, *, seed: int = 0, min_tokens: int = 2,
                 shuffle: bool = True):
        super().__init__(data, max_tokens, seed=seed, min_tokens=min_tokens, shuffle=shuffle)
        if data.num_documents < 2:
            raise ValueError(f"{data.prefix}: a segment pair sampler needs >= 2 documents, got {data.num_documents}")

    def sample(self, epoch: int, index: int) -> dict[str, np.ndarray]:
        seg = self.segment_id(epoch, index)
        out = self._segment(seg)
        doc = self.table.document[seg]
        n = len(self.table.start)
        for attempt in range(16):
            other = mix64(self.seed, epoch, index, _STREAM_PICK, attempt) % n
            if self.table.document[other] != doc:
                break
        else:  # a corpus dominated by one document: scan to the next other document
            other = int(np.flatnonzero(self.table.document != doc)[0])
        out.update(self._segment(other, prefix="random_"))
        return out


class SourceTargetSampler(SegmentSampler):
    """Source/target pairs for seq2seq objectives (UniLM seq2seq, MASS).

    A segment of >= 2 sentences is cut at a sentence start chosen from
    ``(seed, epoch, index)``: ``source_tokens`` are the sentences before the cut
    (their last ``max_source_tokens``), ``target_tokens`` the ones after (their
    first ``max_target_tokens``); ``source_word_start`` / ``target_word_start``
    go with them.
    """

    min_sentences = 2

    def __init__(self, data: TokenData, max_source_tokens: int, max_target_tokens: int, *, seed: int = 0,
                 shuffle: bool = True):
        self.max_source_tokens, self.max_target_tokens = int(max_source_tokens), int(max_target_tokens)
        super().__init__(data, self.max_source_tokens + self.max_target_tokens, seed=seed, min_tokens=2,
                         shuffle=shuffle)

    def sample(self, epoch: int, index: int) -> dict[str, np.ndarray]:
        seg = self.segment_id(epoch, index)
        s = self._segment(seg)
        cuts = np.flatnonzero(s["sentence_start"])[1:]
        cut = int(cuts[mix64(self.seed, epoch, index, _STREAM_PICK) % len(cuts)])
        a = max(0, cut - self.max_source_tokens)
        b = min(len(s["tokens"]), cut + self.max_target_tokens)
        src_ws = s["word_start"][a:cut].copy()
        src_ws[0] = True
        tgt_ws = s["word_start"][cut:b].copy()
        tgt_ws[0] = True
        return {"source_tokens": s["tokens"][a:cut], "source_word_start": src_ws,
                "target_tokens": s["tokens"][cut:b], "target_word_start": tgt_ws}


def blend_schedule(weights: Sequence[float], size: int) -> tuple[np.ndarray, np.ndarray]:
    """(dataset_index, dataset_sample_index) for ``size`` draws in exact proportions.

    Dataset ``d``'s ``k``-th draw is scheduled at time ``(k + 0.5) / w_d``; merging
    all schedules keeps every prefix within one sample of ``w_d * i``, as
    megatron's blended dataset does, without a sequential loop.
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or len(w) == 0 or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"blend weights must be non-negative with a positive sum, got {list(weights)}")
    w = w / w.sum()
    times, ids, ks = [], [], []
    for d, wd in enumerate(w):
        if wd == 0:
            continue
        k = np.arange(int(np.ceil(wd * size)) + 1)
        times.append((k + 0.5) / wd)
        ids.append(np.full(len(k), d))
        ks.append(k)
    times, ids, ks = map(np.concatenate, (times, ids, ks))
    order = np.lexsort((ids, times))[:size]
    return ids[order].astype(np.int64), ks[order].astype(np.int64)


class BlendedSampler:
    """Weighted blend of samplers in exact proportions; ``size`` samples per epoch.

    Sub-sampler ``d`` contributes ``c_d`` samples per blended epoch; its ``j``-th
    one in blended epoch ``e`` is its global draw ``e * c_d + j``, wrapping into
    the sub-sampler's own later epochs as needed.
    """

    def __init__(self, samplers: Sequence, weights: Sequence[float], size: int | None = None):
        if len(samplers) != len(weights):
            raise ValueError(f"BlendedSampler: {len(samplers)} samplers but {len(weights)} weights")
        self.samplers = list(samplers)
        self.size = int(size if size is not None else sum(len(s) for s in samplers))
        if self.size < 1:
            raise ValueError(f"BlendedSampler: size must be >= 1, got {self.size}")
        self.dataset_index, self.dataset_sample_index = blend_schedule(weights, self.size)
        self.counts = np.bincount(self.dataset_index, minlength=len(self.samplers))

    def __len__(self) -> int:
        return self.size

    def sample(self, epoch: int, index: int) -> dict[str, np.ndarray]:
        _check_index(self, epoch, index)
        d = int(self.dataset_index[index])
        g = epoch * int(self.counts[d]) + int(self.dataset_sample_index[index])
        sub = self.samplers[d]
        sub_epoch, sub_index = divmod(g, len(sub))
        return sub.sample(sub_epoch, sub_index)
