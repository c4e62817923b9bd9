"""Samplers: every sample is a pure function of ``(seed, epoch, index)``.

A sampler has ``len(sampler)`` samples per epoch and reads a whole batch at once:
``sampler.read(epoch, index)`` with int arrays (one row per sample) returns a
batch in the form :mod:`ptobj.objectives.sample` describes (per-token fields
right-padded, ``length`` per row); ``sampler.sample(epoch, index)`` is row 0 of
the batch of one. ``read(..., fields=...)`` may leave out what no consumer reads
(``SegmentPairSampler`` then skips the other document's segment). Randomness comes from ``ptobj.objectives.streams`` only: a
permutation per epoch from ``generator("sampler.order", seed, epoch)`` and
per-sample picks from the row streams of purpose ``"sampler.pick"``, so no
sampler draw can coincide with a transform's, and any read order, batch, number
of DataLoader workers and resume point give the same samples. The index ->
position mappings are numpy (cumsum / searchsorted / repeat) over the whole
batch, and token reads are one fancy-index gather from the memory-mapped data.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Sequence

import numpy as np

from ptobj.data_pipeline.indexed import TokenData
from ptobj.objectives import streams
from ptobj.objectives.sample import Batch, SpecialTokens, row, windows
from ptobj.objectives.streams import RowStreams

_SITE_OTHER = streams.site("samplers.other_segment")
_SITE_CUT = streams.site("samplers.source_target_cut")


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


def checked_rows(sampler, epoch, index) -> tuple[np.ndarray, np.ndarray]:
    """(epoch, index) as checked int64 arrays of one shape."""
    epoch, index = np.asarray(epoch, np.int64).reshape(-1), np.asarray(index, np.int64).reshape(-1)
    if epoch.shape != index.shape:
        epoch, index = np.broadcast_arrays(epoch, index)
    if epoch.size and (epoch.min() < 0 or index.min() < 0 or index.max() >= len(sampler)):
        bad = int(np.flatnonzero((epoch < 0) | (index < 0) | (index >= len(sampler)))[0])
        raise IndexError(f"{type(sampler).__name__}: (epoch={int(epoch[bad])}, index={int(index[bad])}) out of range; "
                         f"{len(sampler)} samples per epoch")
    return epoch, index


def _by_epoch(epoch: np.ndarray):
    """(epoch value, rows of that epoch) for each epoch in a batch (usually one)."""
    if epoch.size and epoch.min() == epoch.max():
        yield int(epoch[0]), slice(None)
        return
    for e in np.unique(epoch):
        yield int(e), np.flatnonzero(epoch == e)


def context_stream(data: TokenData, seq_length: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(document lengths, document offsets, contexts per epoch) of ``data`` read as one stream
    of documents joined by EOT, cut into contexts of ``seq_length + 1`` ids that share one
    id with the next; an error names the data when not even one context fits."""
    doc_len = data.document_lengths()
    stream = int(doc_len.sum()) + len(doc_len)
    n = (stream - 1) // seq_length
    if n < 1:
        raise ValueError(f"{data.prefix}: documents are shorter than a sample: {stream} tokens with EOTs, "
                         f"a context needs seq_length + 1 = {seq_length + 1}")
    return doc_len, data.document_offsets[:-1], n


class _Sampler:
    """The single-sample view every sampler shares: row 0 of the batch of one."""

    def sample(self, epoch: int, index: int) -> dict[str, np.ndarray]:
        return row(self.read([epoch], [index]), 0)

    def read(self, epoch, index, fields=None) -> Batch:
        raise NotImplementedError


class PackedContextSampler(_Sampler):
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
        self._doc_len, self._doc_off, self._len = context_stream(data, self.seq_length)
        self._epoch = _EpochCache(self._order)

    def __len__(self) -> int:
        return self._len

    def _order(self, epoch: int):
        n = len(self._doc_len)
        perm = streams.generator("sampler.order", self.seed, epoch).permutation(n) if self.shuffle else np.arange(n)
        length = self._doc_len[perm] + 1                 # each document with its EOT
        ends = np.cumsum(length)                          # stream end (exclusive) of each slot
        return perm, ends, ends - length, self._doc_off[perm], self._doc_len[perm]

    def read(self, epoch, index, fields=None) -> Batch:
        epoch, index = checked_rows(self, epoch, index)
        L = self.seq_length + 1
        out = np.empty((epoch.size, L), np.int32)
        for e, rows in _by_epoch(epoch):
            out[rows] = self._contexts(e, index[rows])
        return {"tokens": out}

    def _contexts(self, epoch: int, index: np.ndarray) -> np.ndarray:
        perm, ends, starts, offs, lens = self._epoch(epoch)
        B, L = index.size, self.seq_length + 1
        start = index * self.seq_length
        k0 = np.searchsorted(ends, start, side="right")                   # slot holding each first token
        k1 = np.searchsorted(ends, start + L - 1, side="right")           # ... and each last token
        n_seg = k1 - k0 + 1
        seg_row = np.repeat(np.arange(B), n_seg)
        seg = k0[seg_row] + np.arange(seg_row.size) - np.repeat(np.cumsum(n_seg) - n_seg, n_seg)
        lo = np.maximum(starts[seg], start[seg_row])
        hi = np.minimum(ends[seg], start[seg_row] + L)
        count = hi - lo
        slot = np.repeat(seg, count)
        within = np.arange(B * L, dtype=np.int64) - np.repeat(np.cumsum(count) - count, count) \
            + np.repeat(lo - starts[seg], count)                           # position inside the slot's document
        is_eot = within == lens[slot]
        out = self.data.tokens[np.where(is_eot, 0, offs[slot] + within)].astype(np.int32)
        out[is_eot] = self.eot
        return out.reshape(B, L)


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


class SegmentSampler(_Sampler):
    """One segment of up to ``max_tokens`` tokens from one document, starting at a sentence start.

    Fields: ``tokens`` int32 [n], ``word_start`` bool [n] (first token always a
    word start), ``sentence_start`` bool [n]. For SpanBERT / MLM / UniLM. A batch
    is as wide as its longest segment.
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
        return self.segments[streams.generator("sampler.order", self.seed, epoch).permutation(len(self.segments))]

    def segment_ids(self, epoch, index) -> np.ndarray:
        """The segment (row of the segment table) of each (epoch, index)."""
        epoch, index = checked_rows(self, epoch, index)
        seg = np.empty(epoch.size, np.int64)
        for e, rows in _by_epoch(epoch):
            seg[rows] = self._epoch(e)[index[rows]]
        return seg

    def _segments(self, seg: np.ndarray, prefix: str = "", sentences: bool = True) -> Batch:
        """Tokens / word starts (/ sentence starts) of table segments ``seg``, padded."""
        t, data = self.table, self.data
        a = t.start[seg]
        n = t.stop[seg] - a
        W = int(n.max(initial=0))
        tokens = windows(data.tokens, a, n, W, np.int32)
        word_start = windows(data.word_start, a, n, W, bool)
        if W:
            word_start[:, 0] = n > 0
        out = {f"{prefix}tokens": tokens, f"{prefix}word_start": word_start}
        if sentences:
            k = t.num_sentences[seg]
            s_row = np.repeat(np.arange(seg.size), k)
            s_idx = np.repeat(t.first_sentence[seg] - (np.cumsum(k) - k), k) + np.arange(s_row.size)
            col = data.sentence_offsets[s_idx] - a[s_row]
            sentence_start = np.zeros((seg.size, W), bool)
            keep = col < n[s_row]                       # a segment cut at max_tokens ends mid-sentence
            sentence_start[s_row[keep], col[keep]] = True
            out[f"{prefix}sentence_start"] = sentence_start
        out[f"{prefix}length"] = n.astype(np.int64)
        return out

    def read(self, epoch, index, fields=None) -> Batch:
        return self._segments(self.segment_ids(epoch, index))


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

    def read(self, epoch, index, fields=None) -> Batch:
        epoch, index = checked_rows(self, epoch, index)
        seg = self.segment_ids(epoch, index)
        out = self._segments(seg)
        if fields is not None and not any(f.startswith("random_") for f in fields):
            return out                                  # no consumer reads the other segment
        doc = self.table.document
        n = len(self.table.start)
        picks = RowStreams.for_rows(self.seed, epoch, index, purpose="sampler.pick")
        rows = np.arange(seg.size)
        other = np.full(seg.size, -1, np.int64)
        for attempt in range(16):
            todo = rows[other < 0]
            if not todo.size:
                break
            cand = picks.integers_at(_SITE_OTHER, todo, attempt, 0, n)
            other[todo[doc[cand] != doc[seg[todo]]]] = cand[doc[cand] != doc[seg[todo]]]
        for r in rows[other < 0]:                      # a corpus dominated by one document: scan on
            other[r] = int(np.flatnonzero(doc != doc[seg[r]])[0])
        out.update(self._segments(other, prefix="random_", sentences=False))
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

    def read(self, epoch, index, fields=None) -> Batch:
        epoch, index = checked_rows(self, epoch, index)
        seg = self.segment_ids(epoch, index)
        t, data = self.table, self.data
        a0 = t.start[seg]
        # the cut: the start of one of the segment's sentences 1 .. k-1, uniformly
        k = t.num_sentences[seg]
        u = RowStreams.for_rows(self.seed, epoch, index, purpose="sampler.pick").uniform(_SITE_CUT, 1)[:, 0]
        j = 1 + np.minimum((u * (k - 1)).astype(np.int64), k - 2)
        cut = data.sentence_offsets[t.first_sentence[seg] + j]
        src_a = np.maximum(a0, cut - self.max_source_tokens)
        tgt_b = np.minimum(t.stop[seg], cut + self.max_target_tokens)
        out: Batch = {}
        for name, lo, hi in (("source_", src_a, cut), ("target_", cut, tgt_b)):
            n = hi - lo
            W = int(n.max(initial=0))
            tokens = windows(data.tokens, lo, n, W, np.int32)
            ws = windows(data.word_start, lo, n, W, bool)
            if W:
                ws[:, 0] = n > 0
            out.update({f"{name}tokens": tokens, f"{name}word_start": ws, f"{name}length": n.astype(np.int64)})
        return out


def blend_schedule(weights: Sequence[float], size: int) -> tuple[np.ndarray, np.ndarray]:
    """(dataset_index, dataset_sample_index) for ``size`` draws in exact proportions.

    Tijdeman's chairman-assignment rule (1980): with ``n`` datasets of positive weight
    and ``sigma = 1 / (2n - 2)``, draw ``t`` goes, among the datasets at least ``sigma``
    behind their share (``w_d * t - count_d >= sigma``), to the one whose next draw is
    due first (smallest ``(count_d + 1 - sigma) / w_d``, the lowest index on a tie).
    Every prefix then stays within ``1 - sigma`` (< 1) sample of ``w_d * t`` for every
    dataset. (Giving each draw to the dataset furthest behind, megatron's rule, drifts
    past one sample, e.g. 1.03 with weights 2.53, 8.31, 9.19, 0.25, 0.25.) One pass of
    plain Python over the draws (1-2 s per million draws with a few datasets), once per
    sampler.
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or len(w) == 0 or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"blend weights must be non-negative with a positive sum, got {list(weights)}")
    share = (w / w.sum()).tolist()
    datasets = [d for d in range(len(share)) if share[d] > 0]
    sigma = 1.0 / (2 * len(datasets) - 2) if len(datasets) > 1 else 0.0
    count = [0] * len(share)
    ids, ks = [0] * int(size), [0] * int(size)
    for i in range(int(size)):
        due, pick = math.inf, datasets[0]
        for d in datasets:
            if share[d] * (i + 1) - count[d] >= sigma - 1e-12:
                when = (count[d] + 1 - sigma) / share[d]
                if when < due:
                    due, pick = when, d
        ids[i], ks[i] = pick, count[pick]
        count[pick] += 1
    return np.array(ids, np.int64), np.array(ks, np.int64)


class BlendedSampler(_Sampler):
    """Weighted blend of samplers in exact proportions; ``size`` samples per epoch.

    Sub-sampler ``d`` contributes ``c_d`` samples per blended epoch; its ``j``-th
    one in blended epoch ``e`` is its global draw ``e * c_d + j``, wrapping into
    the sub-sampler's own later epochs as needed. The parts must give the same
    fields (per-token groups are padded to the widest part).
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

    def read(self, epoch, index, fields=None) -> Batch:
        epoch, index = checked_rows(self, epoch, index)
        d = self.dataset_index[index]
        g = epoch * self.counts[d] + self.dataset_sample_index[index]
        parts = []
        for k in np.unique(d):
            rows = np.flatnonzero(d == k)
            sub = self.samplers[int(k)]
            parts.append((rows, sub.read(*np.divmod(g[rows], len(sub)), fields=fields)))
        return _merge_rows(parts, epoch.size)


def _merge_rows(parts, B: int) -> Batch:
    """Batches of some rows each -> one batch of B rows (2-D fields padded with zeros; a
    token group of parts with different widths and no lengths gets ``length``)."""
    fields = list(parts[0][1])
    for _, b in parts[1:]:
        if set(b) != set(fields):
            raise KeyError(f"BlendedSampler: parts give different fields: {sorted(fields)} vs {sorted(b)}")
    out: Batch = {}
    for f in [f for f in fields if f.endswith("tokens")]:
        n = f[: -len("tokens")] + "length"
        if n not in fields and len({b[f].shape[1] for _, b in parts}) > 1:
            out[n] = np.empty(B, np.int64)
            for rows, b in parts:
                out[n][rows] = b[f].shape[1]
    for f in fields:
        arrs = [b[f] for _, b in parts]
        shape = (B,) + tuple(max(a.shape[i] for a in arrs) for i in range(1, arrs[0].ndim))
        grid = np.zeros(shape, arrs[0].dtype)
        for (rows, _), a in zip(parts, arrs):
            grid[(rows,) + tuple(slice(0, n) for n in a.shape[1:])] = a
        out[f] = grid
    return out
