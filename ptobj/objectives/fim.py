"""Fill-in-the-middle (Bavarian et al. 2022, "Efficient Training of Language
Models to Fill in the Middle").

A document ``D`` is cut at two points into ``prefix, middle, suffix`` and
rewritten, with probability ``fim_rate``, as

* PSM:            ``<PRE> prefix <SUF> suffix <MID> middle``
* SPM variant 2:  ``<PRE> <SUF> suffix <MID> prefix middle``  (default; the paper's choice)
* SPM variant 1:  ``<SUF> suffix <PRE> prefix <MID> middle``

SPM is chosen over PSM with probability ``spm_rate``. The document's EOT stays
after the middle, so the model learns where the middle ends. The loss covers
every part, the sentinels and the EOT; only padding is out of the loss.

Scopes
------
``context`` (default): the sample is a packed context ``tokens[S+1]``. It is
split on EOT, each non-empty document (including the partial ones at both
ends) is transformed independently, the pieces are re-joined with their EOTs,
and the result is cut back to exactly ``S+1`` ids: the tail is truncated when
the sentinels and re-tokenisation made it longer, and ``fim_pad`` fills the
tail when it got shorter. This is what Megatron-LM's GPTFIMDataset does, with
one difference: an empty document (two EOTs in a row) keeps its EOT here,
where Megatron drops it. Then the fields of ``ptobj.objectives.causal_lm`` are
emitted: one segment per document (sentinels included), position ids
restarting per document and causal row intervals within documents.

``document`` (the paper's document-level FIM): each document is transformed on
its own *before* packing, by :meth:`FIM.documents` (a batch of documents, each
keyed by ``(seed, epoch, document)``), and the FIM'd documents are then packed
into contexts (``ptobj.data_pipeline.packed_documents``), so a FIM'd document may be
cut across two contexts, as in the paper. The transform's call on a packed
context then only emits the decoder fields (the documents in it are FIM'd
already). The Task declares the ``packed_documents`` sampler for this scope.

Split points
------------
``character`` (default): two cut points uniform over the document's characters,
the three pieces re-tokenised. Re-tokenising whole pieces is the slow part of
FIM, so only the text a cut touches is re-encoded: the word around each cut
(from the nearest token that starts with a space before it, to the next one
after it, at most ``max_reencode_tokens`` tokens each way); every other token is
kept as it is. A word starts at a token that begins with a space after one that
does not end with one, so a run of spaces (indentation) and the word after it are
re-encoded together. For tokenizers that never merge across such a start
(sentencepiece with ``split_by_whitespace``, GPT-2 style pre-tokenisers) this
yields the ids encoding each piece from scratch gives, except where a run of
spaces has several equally scored splittings (``"  " + " "`` or ``" " + "  "``):
sentencepiece breaks such a tie by the floating-point rounding of the whole
line's score, which no local re-encoding can reproduce, so such a piece differs
from its from-scratch encoding only in how that run is split (1 of 900 pieces
on indented code in the tests; 60 when only the token holding a cut was
re-encoded). For any lossless tokenizer
(``decode(encode(t)) == t`` and decode concatenates piece texts) the pieces
decode to exactly the original text. Tokens whose text is not a clean string
on its own (byte-fallback pieces of a multi-byte character) are never
re-encoded: each is a word of its own, a cut never falls inside one character's
bytes (a continuation byte counts 0 characters, a lead byte 1), and they move
with their piece unchanged, also where a packed context starts or ends partway
through a character. FIM never changes a token it does not re-encode.

``line``: cut points uniform over line starts (0, after each newline, the end),
so the middle is whole lines. ``token``: cut points uniform over token
boundaries, no tokenizer needed.

Documents containing reserved ids other than EOT (pads, sentinels, unk,
...) are passed through unchanged: their text cannot round-trip. Empty
documents (EOT EOT) are left alone, as in Megatron (which, unlike here, also
gives FIM to an empty fragment after the last EOT).

Randomness: document ``d`` of a context (0-based, EOT-delimited) takes the four
uniforms ``4d .. 4d+3`` of its row's stream: FIM or not, SPM or PSM, two cuts.
:meth:`FIM.transform_context` and :meth:`FIM.transform_document` take those
uniforms directly.

Speed: token texts, lengths and word-start flags come from a table built once
per transform (``decode([id])`` for every id, about a second for a 32k
vocabulary). A context costs two ``take`` look-ups and one cumulative sum; runs
of documents left alone are copied as single slices; per FIM document a few
Python steps near the two cuts (the word around a cut is found with
``bytes.rfind``/``find`` on the context's word-start flags) and at most four
``encode`` calls on word fragments, memoised (``encode_cache_size``; a pure
function of the text, so outputs never depend on it); one ``concatenate`` joins
the output. With the project tokenizer the fragments go through
``encode_array``, which calls sentencepiece's compiled encoder directly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import numpy as np

from ptobj.objectives.causal_lm import CausalLMConfig, check_contexts, pack_fields
from ptobj.objectives.sample import CONTRACT_FIELDS, Batch, SpecialTokens, Transform, check_rate, lengths, require_fields
from ptobj.objectives.streams import RowStreams, site
from ptobj.objectives.task import Evaluation, Task

SCOPES = ("context", "document")
SPLIT_LEVELS = ("character", "token", "line")
# length given to reserved ids: any document holding one sums above it (and passes through)
_RESERVED = 1 << 40
_PROBES = ("a b", " a", "a  b", "a\nb")
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_SITE_DOCUMENT = site("fim.document")


@dataclass(frozen=True)
class FIMConfig:
    # the packed context has seq_length + 1 ids (document scope: the contexts FIM'd documents are packed into)
    seq_length: int | None = None
    fim_rate: float = 0.5
    spm_rate: float = 0.5
    scope: str = "context"
    split_level: str = "character"
    spm_variant: int = 2
    document_masking: bool = True
    reset_position_ids: bool | None = None
    eod_mask_loss: bool = False
    # tokens re-encoded on each side of a cut, at most (bounds the cost on very long words)
    max_reencode_tokens: int = 32
    # refuse tokenizers whose decode(encode(text)) != text (FIM pieces would not add up)
    require_lossless_tokenizer: bool = True
    # memoised fragment encodings kept per transform (0 disables the memo)
    encode_cache_size: int = 65536

    def __post_init__(self):
        if self.scope not in SCOPES:
            raise ValueError(f"FIMConfig.scope must be one of {SCOPES}, got {self.scope!r}")
        if self.split_level not in SPLIT_LEVELS:
            raise ValueError(f"FIMConfig.split_level must be one of {SPLIT_LEVELS}, got {self.split_level!r}")
        if self.scope == "context":
            s = self.seq_length
            if not isinstance(s, (int, np.integer)) or isinstance(s, bool) or s < 1:
                raise ValueError(f"FIMConfig.seq_length must be an int >= 1 for scope 'context', got {s!r}")
        for name in ("fim_rate", "spm_rate"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) or not np.isfinite(v):
                raise ValueError(f"FIMConfig.{name} must be a number in [0, 1], got {v!r}")
            try:
                check_rate(f"FIMConfig.{name}", v)
            except ValueError as e:
                raise ValueError(str(e)) from None
        if self.spm_variant not in (1, 2):
            raise ValueError(f"FIMConfig.spm_variant must be 1 or 2, got {self.spm_variant!r}")
        if not isinstance(self.max_reencode_tokens, int) or self.max_reencode_tokens < 1:
            raise ValueError(f"FIMConfig.max_reencode_tokens must be an int >= 1, got {self.max_reencode_tokens!r}")
        if not isinstance(self.encode_cache_size, int) or self.encode_cache_size < 0:
            raise ValueError(f"FIMConfig.encode_cache_size must be an int >= 0, got {self.encode_cache_size!r}")
        for name in ("document_masking", "eod_mask_loss", "require_lossless_tokenizer"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"FIMConfig.{name} must be a bool, got {getattr(self, name)!r}")


class _PieceTable:
    """Per token id: its text, its length in characters, whether it starts a word.

    Built once from ``decode([id])``. Ids whose text is not a clean string on its
    own (byte-fallback pieces decoding to U+FFFD or nothing) are *irregular*: a
    word of their own (so never re-encoded), and one character long, or none for a
    UTF-8 continuation byte (known from the piece's name ``<0xXX>`` through the
    tokenizer's ``id_to_piece``), so cuts land between characters. (A tokenizer
    without ``id_to_piece`` counts every such piece as a character: cuts may then
    fall between the bytes of one character, the tokens still unchanged.) Reserved ids get length ``_RESERVED``, so one cumulative
    sum both measures a document and flags one holding them.
    """

    def __init__(self, tokenizer, vocab_size: int, first_regular: int):
        texts = [""] * vocab_size
        length = np.full(vocab_size, _RESERVED, dtype=np.int64)
        word_start = np.zeros(vocab_size, dtype=bool)
        ends_space = np.zeros(vocab_size, dtype=bool)
        irregular = np.zeros(vocab_size, dtype=bool)
        piece = getattr(tokenizer, "id_to_piece", None)
        for v in range(first_regular, vocab_size):
            t = tokenizer.decode([v])
            if t and "\ufffd" not in t:
                texts[v] = t
                length[v] = len(t)
                word_start[v] = t[0] == " "
                ends_space[v] = t[-1] == " "
                continue
            m = _BYTE_PIECE.fullmatch(piece(v)) if piece is not None else None
            n = 0 if m is not None and 0x80 <= int(m.group(1), 16) < 0xC0 else 1
            texts[v] = "\ufffd" * n                     # stands in for it where text is measured
            length[v] = n
            word_start[v] = True
            irregular[v] = True
        self.texts = texts
        self.length = length
        self.word_start = word_start
        self.ends_space = ends_space
        self.irregular = irregular


def check_lossless(tokenizer) -> None:
    for probe in _PROBES:
        back = tokenizer.decode(tokenizer.encode(probe))
        if back != probe:
            raise ValueError(
                "FIM: tokenizer is not lossless: decode(encode(%r)) == %r, so FIM pieces would not add up "
                "to the document text. Use a tokenizer without dummy prefix / whitespace normalisation, "
                "or set FIMConfig.require_lossless_tokenizer=False to accept the change." % (probe, back)
            )


def original_order(doc: np.ndarray, special: SpecialTokens) -> np.ndarray:
    """Undo FIM on one document's ids (no EOT): prefix + middle + suffix ids.

    Works for PSM and both SPM variants; a document without sentinels comes back
    as it is. Meant for tests and evaluation.
    """
    d = np.asarray(doc)
    if d.size == 0:
        return d
    pre, mid, suf = special.fim_prefix, special.fim_middle, special.fim_suffix

    def at(x):
        hits = np.flatnonzero(d == x)
        if hits.size != 1:
            raise ValueError(f"original_order: expected one sentinel {x}, found {hits.size}")
        return int(hits[0])

    if d[0] == pre:  # PSM, or SPM variant 2 (<PRE><SUF> suffix <MID> prefix middle)
        s, m = at(suf), at(mid)
        return np.concatenate([d[1:s], d[m + 1 :], d[s + 1 : m]])
    if d[0] == suf:  # SPM variant 1
        p, m = at(pre), at(mid)
        return np.concatenate([d[p + 1 : m], d[m + 1 :], d[1:p]])
    return d


class FIM(Transform):
    """Fill-in-the-middle on a packed context (or one document); see the module doc."""

    reads = ("tokens",)

    def __init__(self, config: FIMConfig, *, special: SpecialTokens, vocab_size: int, tokenizer=None):
        self.config = config
        self.special = special
        self.vocab_size = int(vocab_size)
        if self.vocab_size <= special.first_regular:
            raise ValueError(f"FIM: vocab_size must exceed special.first_regular={special.first_regular}, got {vocab_size}")
        sentinels = (special.fim_prefix, special.fim_middle, special.fim_suffix, special.fim_pad, special.eot)
        if len(set(sentinels)) != len(sentinels) or max(sentinels) >= special.first_regular:
            raise ValueError(f"FIM: special tokens prefix/middle/suffix/pad/eot must be distinct reserved ids, got {sentinels}")
        self.writes = CONTRACT_FIELDS
        self._pre, self._mid, self._suf = (
            np.array([x], np.int32) for x in (special.fim_prefix, special.fim_middle, special.fim_suffix))
        self.tokenizer = tokenizer
        self._table = None
        if config.split_level != "token":
            if tokenizer is None or not hasattr(tokenizer, "encode") or not hasattr(tokenizer, "decode"):
                raise ValueError(
                    f"FIM: split_level={config.split_level!r} re-tokenises text and needs a tokenizer with "
                    "encode(text)->list[int] and decode(ids)->str; pass tokenizer=..., or use split_level='token'"
                )
            if config.require_lossless_tokenizer:
                check_lossless(tokenizer)
            self._table = _PieceTable(tokenizer, self.vocab_size, special.first_regular)
            self._table.length[special.eot] = 0  # EOTs between documents add no characters
            # the project tokenizer's encode_array skips a list round trip
            self._encode_raw = getattr(tokenizer, "encode_array", tokenizer.encode)
        self._cache: dict[str, np.ndarray] = {}
        self._cache_size = config.encode_cache_size

    # -- the transform ---------------------------------------------------------------------
    def apply(self, batch: Batch, streams: RowStreams) -> Batch:
        c = self.config
        if c.seq_length is None:
            raise ValueError("FIM: a packed context needs FIMConfig.seq_length; FIM.documents() rewrites "
                             "single documents without one")
        ctx = check_contexts(batch, c.seq_length + 1, self.vocab_size, "FIM")
        if c.scope == "document":          # the documents were FIM'd before packing (FIM.documents)
            return self.pack(ctx)
        B, L = ctx.shape
        is_eot = ctx == self.special.eot
        n_docs = np.count_nonzero(is_eot, axis=1) + 1
        u = streams.uniform(_SITE_DOCUMENT, 4 * int(n_docs.max()))   # [B, 4 * most documents]
        out = np.empty((B, L), np.int32)
        for b in range(B):
            out[b] = self.transform_context(ctx[b], u[b, : 4 * n_docs[b]].reshape(-1, 4),
                                            breaks=np.flatnonzero(is_eot[b]))
        return self.pack(out)

    def pack(self, contexts: np.ndarray) -> Batch:
        """Contexts [B, S+1] (FIM'd) -> the contract fields [B, S] (as causal LM emits them)."""
        c = self.config
        return pack_fields(contexts, self.special, document_masking=c.document_masking,
                           reset_position_ids=c.reset_position_ids, eod_mask_loss=c.eod_mask_loss)

    def documents(self, batch: Batch, streams: RowStreams) -> Batch:
        """Document-level FIM (the batch contract): ``{"tokens": [B, W], "length": [B]}``, one
        document per row without EOT, -> the same form with each document FIM'd (with
        probability ``fim_rate``) or kept. Row b draws from ``streams`` row b only (a pipeline
        keys it by ``(seed, epoch, document)``), so a document's rewrite never depends on
        the batch it came in."""
        require_fields(batch, self.reads, "FIM.documents")
        tokens = np.asarray(batch["tokens"])
        if tokens.ndim != 2:
            raise ValueError(f"FIM.documents: field 'tokens' must be [B, W], got shape {tokens.shape}")
        n = lengths(batch)
        if len(streams) != tokens.shape[0]:
            raise ValueError(f"FIM.documents: {tokens.shape[0]} rows but {len(streams)} streams")
        u = streams.uniform(_SITE_DOCUMENT, 4)
        docs = [self.transform_document(self._check_document(tokens[b, : n[b]]), u[b]) for b in range(len(n))]
        out_n = np.array([d.size for d in docs], np.int64)
        grid = np.zeros((len(docs), int(out_n.max(initial=0))), np.int32)
        for b, d in enumerate(docs):
            grid[b, : d.size] = d
        return {"tokens": grid, "length": out_n}

    def _check_document(self, tokens) -> np.ndarray:
        arr = np.asarray(tokens)
        if arr.ndim != 1 or arr.dtype.kind not in "iu":
            raise ValueError(f"FIM: field 'tokens' must be a 1-D integer array, got shape {arr.shape} dtype {arr.dtype}")
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= self.vocab_size):
            raise ValueError(f"FIM: field 'tokens' has ids outside [0, {self.vocab_size})")
        if np.any(arr == self.special.eot):
            raise ValueError("FIM.documents: expects one document per row without EOT in field 'tokens'")
        return arr.astype(np.int32, copy=False)

    def transform_context(self, ctx: np.ndarray, draws, *, breaks: np.ndarray | None = None) -> np.ndarray:
        """Packed context int[L] -> FIM'd context int[L] (truncated / fim_pad-padded);
        ``draws`` [documents, 4]: each document's uniforms (see the module doc)."""
        ctx = np.asarray(ctx, dtype=np.int32)
        n = ctx.shape[0]
        if breaks is None:
            breaks = np.flatnonzero(ctx == self.special.eot)
        draws = np.asarray(draws, dtype=np.float64).reshape(breaks.shape[0] + 1, 4)
        full = self._transform(ctx, breaks, draws)
        if full.shape[0] >= n:
            return full[:n]
        return np.concatenate([full, np.full(n - full.shape[0], self.special.fim_pad, dtype=np.int32)])

    def _transform(self, ctx: np.ndarray, breaks: np.ndarray, draws: np.ndarray) -> np.ndarray:
        """EOT-joined documents -> the same documents, each FIM'd or not, re-joined.

        Runs of documents left alone (and their EOTs) are copied as single slices of
        ``ctx``; only the documents given FIM are rebuilt from pieces."""
        # a handful of documents per context: plain Python beats a dozen tiny numpy calls
        cut = breaks.tolist()
        rate = self.config.fim_rate
        chosen = [(d0, d1, u) for d0, d1, u in zip([0] + [b + 1 for b in cut], cut + [ctx.shape[0]], draws.tolist())
                  if u[0] < rate and d1 > d0]
        if not chosen:
            return ctx.copy()
        if self._table is None:
            plans = self._token_plans(ctx, chosen)
        else:
            plans = self._text_plans(ctx, chosen)
        pieces = []
        pos = 0
        spm_rate, variant = self.config.spm_rate, self.config.spm_variant
        pre, mid, suf = self._pre, self._mid, self._suf
        for d0, d1, u1, prefix, middle, suffix in plans:
            pieces.append(ctx[pos:d0])
            pos = d1
            if u1 >= spm_rate:  # PSM
                pieces.append(pre)
                pieces += prefix
                pieces.append(suf)
                pieces += suffix
                pieces.append(mid)
                pieces += middle
            elif variant == 2:
                pieces.append(pre)
                pieces.append(suf)
                pieces += suffix
                pieces.append(mid)
                pieces += prefix
                pieces += middle
            else:
                pieces.append(suf)
                pieces += suffix
                pieces.append(pre)
                pieces += prefix
                pieces.append(mid)
                pieces += middle
        pieces.append(ctx[pos:])
        return np.concatenate(pieces)

    def _token_plans(self, ctx, chosen) -> list:
        first_regular = self.special.first_regular
        plans = []
        for d0, d1, u in chosen:
            doc = ctx[d0:d1]
            if int(doc.min()) >= first_regular:  # reserved ids inside: pass through (documented)
                prefix, middle, suffix = _token_split(doc, u)
                plans.append((d0, d1, u[1], [prefix], [middle], [suffix]))
        return plans

    def _text_plans(self, ctx, chosen) -> list:
        """(start, end, spm draw, prefix, middle, suffix) for every document of a context
        given FIM, pieces as id arrays. Cuts come from one cumulative sum of token
        lengths; per document only the text of the (at most two) words a cut touches is
        built. Per-token facts are read from a ``bytes`` copy of the context's word-start
        flags, so finding a word's ends is one ``rfind``/``find``, not a Python loop."""
        table = self._table
        cum = table.length.take(ctx).cumsum()  # cum[i]: characters up to and including token i
        flags = table.word_start.take(ctx)
        irregular = table.irregular.take(ctx)
        # a word starts at the first space of a run, not inside it: sentencepiece segments a run of
        # spaces by its neighbours (indentation pieces), so a run is re-encoded whole (a byte piece
        # stays a word of its own)
        flags[1:] &= ~table.ends_space.take(ctx[:-1]) | irregular[1:]
        if irregular.any():                     # the token after a byte piece starts a word too
            flags[1:] |= irregular[:-1]
        ws = flags.tobytes()  # ws[i]: 1 where token i starts a word
        texts = table.texts
        cap = self.config.max_reencode_tokens
        character_level = self.config.split_level == "character"
        encode = self._encode
        plans = []
        for d0, d1, u in chosen:
            base = cum.item(d0 - 1) if d0 else 0
            total = cum.item(d1 - 1) - base
            if total >= _RESERVED:              # reserved ids inside: pass through (documented)
                continue
            if character_level:
                c1, c2 = min(int(u[2] * (total + 1)), total), min(int(u[3] * (total + 1)), total)
                if c1 > c2:
                    c1, c2 = c2, c1
            else:
                c1, c2 = self._cut_chars(total, u, lambda: "".join([texts[t] for t in ctx[d0:d1].tolist()]))

            def region(c):
                """Tokens [a, b) re-encoded around cut c; a == b: a clean word boundary."""
                if c <= 0:
                    return d0, d0
                if c >= total:
                    return d1, d1
                g = base + c
                k = int(cum.searchsorted(g, side="right"))  # the token holding character g
                if ws[k] and (cum.item(k - 1) if k else 0) == g:
                    return k, k
                lo = max(d0, k - cap)
                a = ws.rfind(1, lo, k + 1)  # the token starting k's word, within the cap
                b = ws.find(1, k + 1, min(d1, k + 1 + cap))  # the token starting the next word
                return (lo if a < 0 else a), (min(d1, k + 1 + cap) if b < 0 else b)

            (a1, b1), (a2, b2) = region(c1), region(c2)
            one = a2 < b1  # both cuts in one re-encoded region
            if one:
                a1, b1 = min(a1, a2), max(b1, b2)
            s1 = (cum.item(a1 - 1) if a1 else 0) - base
            w1 = "".join([texts[t] for t in ctx[a1:b1].tolist()])
            c1 -= s1
            if one:
                c2 -= s1
                plans.append((d0, d1, u[1], [ctx[d0:a1], encode(w1[:c1])], [encode(w1[c1:c2])],
                              [encode(w1[c2:]), ctx[b1:d1]]))
            else:
                s2 = (cum.item(a2 - 1) if a2 else 0) - base
                w2 = "".join([texts[t] for t in ctx[a2:b2].tolist()])
                c2 -= s2
                plans.append((d0, d1, u[1], [ctx[d0:a1], encode(w1[:c1])],
                              [encode(w1[c1:]), ctx[b1:a2], encode(w2[:c2])], [encode(w2[c2:]), ctx[b2:d1]]))
        return plans

    def transform_document(self, doc: np.ndarray, u) -> np.ndarray:
        """One document's ids (no EOT) and 4 uniforms -> FIM'd ids or the document as is.

        u[0] decides FIM, u[1] SPM vs PSM, u[2] and u[3] place the cuts.
        """
        doc = np.asarray(doc, dtype=np.int32)
        return self._transform(doc, np.zeros(0, np.int64), np.asarray(u, dtype=np.float64).reshape(1, 4))

    # -- text-level splitting ----------------------------------------------------------------
    def _encode(self, text: str) -> np.ndarray:
        """Ids of one fragment. One encode call per fragment: fragments are a few
        characters, and batch encoders (sentencepiece's among them) pay thread start-up
        per call that dwarfs that. Word fragments repeat (Zipf), so encodings are
        memoised; the memo is a pure function of the text and never changes an output."""
        if not text:
            return _EMPTY
        ids = self._cache.get(text)
        if ids is None:
            ids = np.asarray(self._encode_raw(text), dtype=np.int32)
            if self._cache_size:
                if len(self._cache) >= self._cache_size:
                    self._cache.clear()
                self._cache[text] = ids
        return ids

    def clear_cache(self) -> None:
        """Forget memoised fragment encodings (benchmarks call this between passes)."""
        self._cache.clear()

    def _cut_chars(self, text_len: int, u: list, text_fn) -> tuple[int, int]:
        if self.config.split_level == "character":
            c1 = min(int(u[2] * (text_len + 1)), text_len)
            c2 = min(int(u[3] * (text_len + 1)), text_len)
        else:  # line: uniform over line starts
            text = text_fn()
            nl = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32) == 10
            cand = np.unique(np.concatenate(([0], np.flatnonzero(nl) + 1, [text_len]))).tolist()
            c1 = cand[min(int(u[2] * len(cand)), len(cand) - 1)]
            c2 = cand[min(int(u[3] * len(cand)), len(cand) - 1)]
        return (c1, c2) if c1 <= c2 else (c2, c1)



_EMPTY = np.zeros(0, np.int32)


def _token_split(doc: np.ndarray, u: list):
    n = doc.shape[0]
    c1, c2 = min(int(u[2] * (n + 1)), n), min(int(u[3] * (n + 1)), n)
    lo, hi = min(c1, c2), max(c1, c2)
    return doc[:lo], doc[lo:hi], doc[hi:]


def infill_prompt(prefix: np.ndarray, suffix: np.ndarray, mode: str, special: SpecialTokens,
                  spm_variant: int = 2) -> np.ndarray:
    """The prompt a FIM-trained model completes with the middle (then EOT), in the layout
    training used: PSM ``<PRE> prefix <SUF> suffix <MID>``; SPM variant 2 ``<PRE> <SUF>
    suffix <MID> prefix``; SPM variant 1 ``<SUF> suffix <PRE> prefix <MID>``."""
    pre, mid, suf = (np.array([x], np.int32) for x in (special.fim_prefix, special.fim_middle, special.fim_suffix))
    prefix, suffix = np.asarray(prefix, np.int32), np.asarray(suffix, np.int32)
    if mode == "psm":
        parts = [pre, prefix, suf, suffix, mid]
    elif mode == "spm" and spm_variant == 2:
        parts = [pre, suf, suffix, mid, prefix]
    elif mode == "spm" and spm_variant == 1:
        parts = [suf, suffix, pre, prefix, mid]
    else:
        raise ValueError(f"infill_prompt: mode must be 'psm' or 'spm' (spm_variant 1 or 2), got {mode!r}, "
                         f"spm_variant={spm_variant!r}")
    return np.concatenate(parts)


def _context_length(config: FIMConfig) -> int:
    if config.seq_length is None:
        raise ValueError(f"fim: scope {config.scope!r} packs contexts of seq_length + 1 ids; set seq_length")
    return config.seq_length + 1


def _sampler(config: FIMConfig) -> str:
    return "packed" if config.scope == "context" else "packed_documents"


def _fim_evals(config: FIMConfig) -> dict:
    """Left-to-right loss on plain contexts (FIM should leave it unchanged) and the loss on
    contexts whose documents are all FIM-transformed (context-level for either scope, so runs
    of both scopes are measured on the same kind of data)."""
    return {"ltr": ("causal_lm", CausalLMConfig(seq_length=config.seq_length)),
            "fim": ("fim", replace(config, fim_rate=1.0, scope="context"))}


def _fim_evaluations(config: FIMConfig) -> dict:
    """Infilling of held-out code (Bavarian et al. 2022), prompted in PSM and in SPM with the
    SPM layout this config trains."""
    return {"infill": Evaluation("infilling", {"modes": ("psm", "spm"), "spm_variant": config.spm_variant})}


TASKS = (
    Task("fim", FIM, FIMConfig, model="decoder", sampler=_sampler, input_length=_context_length,
         evals=_fim_evals, special=("eot", "pad", "fim_prefix", "fim_middle", "fim_suffix", "fim_pad"),
         needs_tokenizer=True, evaluations=_fim_evaluations),
)
