"""GPT contexts of documents an objective rewrote one by one before packing.

Document-level FIM (Bavarian et al. 2022) transforms each document *before*
the documents are joined by EOT and cut into contexts, so a rewritten
document can straddle two contexts. :class:`PackedDocumentSampler` does that
deterministically: in epoch ``e`` the documents are shuffled as
:class:`ptobj.data_pipeline.samplers.PackedContextSampler` shuffles them, document
``d`` is rewritten by the objective's document stage (``documents(batch,
streams)``, the batch contract of :mod:`ptobj.objectives.sample`) with the row
stream keyed by ``(seed, e, d)`` (purpose ``"document"``), and context ``i``
is stream positions ``[i*S, i*S + S + 1)`` of the rewritten documents.

Where the contexts fall depends on the rewritten lengths, so the first read
of an epoch runs the document stage over the whole corpus once and keeps the
lengths (not the documents); a read rewrites only the few documents its
context overlaps (a small cache keeps the last ones, since consecutive
contexts share them). The epoch holds as many contexts as the *original*
documents fill, so ``len(sampler)`` is the same in every epoch: a rewrite
that lengthens documents (FIM adds three sentinels) leaves the end of the
epoch's stream unread, one that shortens them pads the last context with
``special.pad`` (never in the loss).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import numpy as np

from ptobj.data_pipeline.indexed import TokenData
from ptobj.data_pipeline.samplers import checked_rows, context_stream
from ptobj.objectives import streams
from ptobj.objectives.sample import SpecialTokens
from ptobj.objectives.streams import RowStreams

DocumentStage = Callable[[dict, RowStreams], dict]


class PackedDocumentSampler:
    """Contexts of ``seq_length + 1`` ids from documents rewritten by ``documents`` (see module doc)."""

    def __init__(self, data: TokenData, seq_length: int, documents: DocumentStage, *, seed: int = 0,
                 shuffle: bool = True, special: SpecialTokens | None = None, chunk: int = 256, cache: int = 16):
        if seq_length < 1:
            raise ValueError(f"seq_length must be >= 1, got {seq_length}")
        if not callable(documents):
            raise TypeError("PackedDocumentSampler: documents must be a document stage, documents(batch, streams)")
        self.data, self.seq_length, self.seed, self.shuffle = data, int(seq_length), int(seed), shuffle
        self.documents = documents
        special = special or SpecialTokens()
        self.eot, self.pad = special.eot, special.pad
        self.chunk = int(chunk)
        self._doc_len, self._doc_off, self._len = context_stream(data, self.seq_length)
        self._layouts: OrderedDict = OrderedDict()
        self._docs: OrderedDict = OrderedDict()
        self._cache = int(cache)

    def __len__(self) -> int:
        return self._len

    # -- the document stage -----------------------------------------------------------------
    def _rewrite(self, epoch: int, docs: np.ndarray) -> list[np.ndarray]:
        """Documents ``docs`` (corpus indices) rewritten for ``epoch``, each from its own stream."""
        n = self._doc_len[docs]
        grid = np.zeros((len(docs), int(n.max(initial=0))), np.int32)
        for b, d in enumerate(docs.tolist()):
            a = int(self._doc_off[d])
            grid[b, : n[b]] = self.data.tokens[a : a + int(n[b])]
        keys = RowStreams.for_rows(self.seed, epoch, docs, purpose="document")
        out = self.documents({"tokens": grid, "length": n.astype(np.int64)}, keys)
        tokens, length = np.asarray(out["tokens"]), np.asarray(out["length"])
        return [tokens[b, : length[b]].astype(np.int32) for b in range(len(docs))]

    def _layout(self, epoch: int):
        """(document order, stream end of each slot incl. its EOT) of ``epoch``; built once."""
        if epoch in self._layouts:
            self._layouts.move_to_end(epoch)
            return self._layouts[epoch]
        n = len(self._doc_len)
        order = streams.generator("sampler.order", self.seed, epoch).permutation(n) if self.shuffle \
            else np.arange(n)
        lengths = np.empty(n, np.int64)
        for a in range(0, n, self.chunk):
            docs = order[a : a + self.chunk]
            lengths[a : a + len(docs)] = [d.size for d in self._rewrite(epoch, docs)]
        layout = (order, np.cumsum(lengths + 1))
        self._layouts[epoch] = layout
        if len(self._layouts) > 2:
            self._layouts.popitem(last=False)
        return layout

    def _document(self, epoch: int, doc: int) -> np.ndarray:
        key = (epoch, doc)
        if key not in self._docs:
            self._docs[key] = self._rewrite(epoch, np.array([doc]))[0]
            if len(self._docs) > self._cache:
                self._docs.popitem(last=False)
        return self._docs[key]

    # -- reads ------------------------------------------------------------------------------
    def read(self, epoch, index, fields=None) -> dict[str, np.ndarray]:
        """Contexts of (epoch[b], index[b]) as ``tokens`` [B, seq_length + 1] (a batch)."""
        epoch, index = checked_rows(self, epoch, index)
        L = self.seq_length + 1
        out = np.full((epoch.size, L), self.pad, np.int32)
        for b, (e, i) in enumerate(zip(epoch.tolist(), index.tolist())):
            order, ends = self._layout(e)
            start = i * self.seq_length
            k = int(np.searchsorted(ends, start, side="right"))
            pos = start
            while pos < start + L and k < len(order):
                slot_start = int(ends[k - 1]) if k else 0
                doc = self._document(e, int(order[k]))
                piece = np.append(doc, np.int32(self.eot))[pos - slot_start:]
                take = min(piece.size, start + L - pos)
                out[b, pos - start : pos - start + take] = piece[:take]
                pos += take
                k += 1
        return {"tokens": out}

    def sample(self, epoch: int, index: int) -> dict[str, np.ndarray]:
        return {"tokens": self.read([epoch], [index])["tokens"][0]}
