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
where Megatron drops it. Then the fields of ``objectives.causal_lm`` are
emitted: one segment per document (sentinels included), position ids
restarting per document and causal row intervals within documents.

``document``: the sample is one document ``tokens[n]`` (no EOT), transformed
before packing; the output ``tokens`` has the transformed length (the pipeline
packs it afterwards).

Split points
------------
``character`` (default): two cut points uniform over the document's characters,
the three pieces re-tokenised. Re-tokenising whole pieces is the slow part of
FIM, so only the text a cut touches is re-encoded: the word around each cut
(from the nearest token that starts with a space before it, to the next one
after it, at most ``max_reencode_tokens`` tokens each way); every other token is
kept as it is. For tokenizers that never merge across a space (sentencepiece
with ``split_by_whitespace``, GPT-2 style pre-tokenisers) this yields the same
ids as encoding each piece from scratch; for any lossless tokenizer
(``decode(encode(t)) == t`` and decode concatenates piece texts) the pieces
decode to exactly the original text. Documents holding tokens whose text is
not a clean string on its own (byte-fallback pieces) are decoded and the three
pieces re-encoded whole.

``line``: cut points uniform over line starts (0, after each newline, the end),
so the middle is whole lines. ``token``: cut points uniform over token
boundaries, no tokenizer needed.

Documents containing reserved ids other than EOT (pads, sentinels, unk,
...) are passed through unchanged: their text cannot round-trip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from objectives.causal_lm import check_context, pack_fields
from objectives.sample import CONTRACT_FIELDS, Sample, SpecialTokens, check_rate, require_fields

SCOPES = ("context", "document")
SPLIT_LEVELS = ("character", "token", "line")
_IRREGULAR = -1
_PROBES = ("a b", " a", "a  b", "a\nb")


@dataclass(frozen=True)
class FIMConfig:
    # context scope: the packed context has seq_length + 1 ids; unused for document scope
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
        for name in ("document_masking", "eod_mask_loss", "require_lossless_tokenizer"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"FIMConfig.{name} must be a bool, got {getattr(self, name)!r}")


class _PieceTable:
    """Per token id: its text, its length in characters, whether it starts a word.

    Built once from ``decode([id])``; ids whose text is not a clean string on
    its own (reserved ids, byte-fallback pieces decoding to U+FFFD or nothing)
    get length ``_IRREGULAR``.
    """

    def __init__(self, tokenizer, vocab_size: int, first_regular: int):
        texts = [""] * vocab_size
        length = np.full(vocab_size, _IRREGULAR, dtype=np.int64)
        word_start = np.zeros(vocab_size, dtype=bool)
        for v in range(first_regular, vocab_size):
            t = tokenizer.decode([v])
            if not t or "\ufffd" in t:
                continue
            texts[v] = t
            length[v] = len(t)
            word_start[v] = t[0] == " "
        self.texts = texts
        self.length = length
        self.word_start = word_start


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


class FIM:
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
        self.writes = CONTRACT_FIELDS if config.scope == "context" else ("tokens",)
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

    # -- the transform ---------------------------------------------------------------------
    def __call__(self, sample: Mapping[str, np.ndarray], rng: np.random.Generator) -> Sample:
        require_fields(sample, self.reads, "FIM")
        c = self.config
        out = dict(sample)
        if c.scope == "document":
            doc = self._check_document(sample["tokens"])
            out["tokens"] = self.transform_document(doc, rng.random(4))
            return out
        ctx = check_context(sample["tokens"], c.seq_length + 1, self.vocab_size, "FIM")
        out.update(
            pack_fields(
                self.transform_context(ctx, rng),
                self.special,
                document_masking=c.document_masking,
                reset_position_ids=c.reset_position_ids,
                eod_mask_loss=c.eod_mask_loss,
            )
        )
        return out

    def _check_document(self, tokens) -> np.ndarray:
        arr = np.asarray(tokens)
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"FIM: field 'tokens' must be a 1-D integer array, got shape {arr.shape} dtype {arr.dtype}")
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= self.vocab_size):
            raise ValueError(f"FIM: field 'tokens' has ids outside [0, {self.vocab_size})")
        if np.any(arr == self.special.eot):
            raise ValueError("FIM: scope 'document' expects one document without EOT in field 'tokens'; use scope 'context' for packed contexts")
        return arr.astype(np.int32, copy=False)

    def transform_context(self, ctx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Packed context int[L] -> FIM'd context int[L] (truncated / fim_pad-padded)."""
        n = ctx.shape[0]
        eot = self.special.eot
        breaks = np.flatnonzero(ctx == eot)
        starts = np.concatenate(([0], breaks + 1))
        ends = np.concatenate((breaks, [n]))
        draws = rng.random((starts.shape[0], 4))
        parts = []
        for i in range(starts.shape[0]):
            a, b = int(starts[i]), int(ends[i])
            if b > a:
                parts.append(self.transform_document(ctx[a:b], draws[i]))
            if b < n:
                parts.append(ctx[b : b + 1])
        out = np.concatenate(parts) if parts else ctx[:0]
        if out.shape[0] >= n:
            return out[:n]
        return np.concatenate([out, np.full(n - out.shape[0], self.special.fim_pad, dtype=np.int32)])

    def transform_document(self, doc: np.ndarray, u: np.ndarray) -> np.ndarray:
        """One document's ids (no EOT) and 4 uniforms -> FIM'd ids or the document as is.

        u[0] decides FIM, u[1] SPM vs PSM, u[2] and u[3] place the cuts.
        """
        c = self.config
        if doc.shape[0] == 0 or u[0] >= c.fim_rate:
            return doc
        if int(doc.min()) < self.special.first_regular:
            return doc  # reserved ids inside: pass through (documented)
        if c.split_level == "token":
            prefix, middle, suffix = _token_split(doc, u)
        else:
            prefix, middle, suffix = self._text_split(doc, u)
        return self._arrange(prefix, middle, suffix, u[1] < c.spm_rate)

    def _arrange(self, prefix, middle, suffix, spm: bool) -> np.ndarray:
        s = self.special
        pre = np.array([s.fim_prefix], np.int32)
        mid = np.array([s.fim_middle], np.int32)
        suf = np.array([s.fim_suffix], np.int32)
        if not spm:
            parts = (pre, prefix, suf, suffix, mid, middle)
        elif self.config.spm_variant == 2:
            parts = (pre, suf, suffix, mid, prefix, middle)
        else:
            parts = (suf, suffix, pre, prefix, mid, middle)
        return np.concatenate(parts).astype(np.int32, copy=False)

    # -- text-level splitting ----------------------------------------------------------------
    def _encode(self, text: str) -> np.ndarray:
        if not text:
            return np.zeros(0, np.int32)
        return np.asarray(self.tokenizer.encode(text), dtype=np.int32)

    def _cut_chars(self, text_len: int, u: np.ndarray, text_fn) -> tuple[int, int]:
        if self.config.split_level == "character":
            cuts = np.minimum((u[2:4] * (text_len + 1)).astype(np.int64), text_len)
        else:  # line: uniform over line starts
            text = text_fn()
            nl = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32) == 10
            cand = np.unique(np.concatenate(([0], np.flatnonzero(nl) + 1, [text_len])))
            cuts = cand[np.minimum((u[2:4] * cand.shape[0]).astype(np.int64), cand.shape[0] - 1)]
        lo, hi = int(cuts.min()), int(cuts.max())
        return lo, hi

    def _text_split(self, doc: np.ndarray, u: np.ndarray):
        table = self._table
        lengths = table.length[doc]
        if np.any(lengths == _IRREGULAR):
            return self._text_split_whole(doc, u)
        ends = np.cumsum(lengths)
        total = int(ends[-1])
        texts = table.texts
        c1, c2 = self._cut_chars(total, u, lambda: "".join([texts[t] for t in doc.tolist()]))
        starts = ends - lengths
        r1 = self._region(doc, starts, ends, total, c1)
        r2 = self._region(doc, starts, ends, total, c2)
        if r2[0] < r1[1]:  # both cuts fall in one re-encoded region
            r1 = r2 = (min(r1[0], r2[0]), max(r1[1], r2[1]))
        (a1, b1), (a2, b2) = r1, r2
        t1 = self._region_text(doc, a1, b1)
        s1 = int(starts[a1]) if a1 < doc.shape[0] else total
        prefix = np.concatenate([doc[:a1], self._encode(t1[: c1 - s1])])
        if r1 == r2:
            middle = self._encode(t1[c1 - s1 : c2 - s1])
            suffix = np.concatenate([self._encode(t1[c2 - s1 :]), doc[b2:]])
        else:
            t2 = self._region_text(doc, a2, b2)
            s2 = int(starts[a2]) if a2 < doc.shape[0] else total
            middle = np.concatenate([self._encode(t1[c1 - s1 :]), doc[b1:a2], self._encode(t2[: c2 - s2])])
            suffix = np.concatenate([self._encode(t2[c2 - s2 :]), doc[b2:]])
        return prefix, middle, suffix

    def _region_text(self, doc, a, b) -> str:
        if a == b:
            return ""
        texts = self._table.texts
        return "".join([texts[t] for t in doc[a:b].tolist()])

    def _region(self, doc, starts, ends, total, c) -> tuple[int, int]:
        """Tokens [a, b) re-encoded around cut ``c``; a == b: the cut sits on a clean word boundary."""
        n = doc.shape[0]
        if c <= 0:
            return 0, 0
        if c >= total:
            return n, n
        ws = self._table.word_start
        k = int(np.searchsorted(ends, c, side="right"))
        if c == starts[k] and ws[doc[k]]:
            return k, k
        cap = self.config.max_reencode_tokens
        a, lo = k, max(0, k - cap)
        while a > lo and not ws[doc[a]]:
            a -= 1
        b, hi = k + 1, min(n, k + 1 + cap)
        while b < hi and not ws[doc[b]]:
            b += 1
        return a, b

    def _text_split_whole(self, doc: np.ndarray, u: np.ndarray):
        text = self.tokenizer.decode(doc.tolist())
        c1, c2 = self._cut_chars(len(text), u, lambda: text)
        return self._encode(text[:c1]), self._encode(text[c1:c2]), self._encode(text[c2:])


def _token_split(doc: np.ndarray, u: np.ndarray):
    n = doc.shape[0]
    cuts = np.minimum((u[2:4] * (n + 1)).astype(np.int64), n)
    lo, hi = int(cuts.min()), int(cuts.max())
    return doc[:lo], doc[lo:hi], doc[hi:]
