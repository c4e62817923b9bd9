"""A Hugging Face fast tokenizer in the transforms' id space.

Design: the transforms run unchanged in OUR id space, and :class:`HFTokens` maps ids
in and out. Every objective assumes reserved ids below ``first_regular`` (never
targets, never random replacements, passed through), regular ids in
``[first_regular, vocab_size)`` and sentinels after them; HF tokenizers put their
special tokens anywhere (BERT's ``[CLS]`` is 101, GPT-2's ``<|endoftext|>`` 50256).
So the adapter builds one lookup each way, once:

* HF's special ids go to our reserved slots: ``eos_token`` -> EOT, ``unk_token`` -> UNK,
  ``mask_token`` -> MASK, ``cls_token`` -> CLS, ``sep_token`` -> SEP, ``pad_token`` -> PAD,
  ``<fim_prefix>`` / ``<fim_middle>`` / ``<fim_suffix>`` / ``<fim_pad>`` -> FIM's four.
  An HF id named twice (GPT-2's pad is its eos, ALBERT's eos its ``[SEP]``) reads in as
  the first of that list (EOT first: documents split on it) and every slot naming it
  writes it back out. Other special tokens (``<s>``, added specials) take the spare
  reserved slots 14, 15, then ``first_regular`` grows past 16 to hold the rest.
* T5's ``<extra_id_i>`` become our sentinels ``sentinel_base + i`` (after the vocabulary).
* Every other id, in HF order, is a regular id: ``first_regular + rank``. So our random
  replacements, uniform over ``[first_regular, vocab_size)``, are uniform over the
  tokenizer's vocabulary without its special ids.

Generalising :class:`ptobj.objectives.sample.SpecialTokens` to scattered ids instead
would touch every objective (each tests ``id < first_regular``); two gathers per batch
keep ONE implementation of each objective, the one the megatron path trains.

Word starts come from the tokenizer's ``word_ids()`` (its pre-tokenizer's words: WordPiece,
byte-level BPE and SentencePiece/Unigram alike). Text is encoded without the tokenizer's
template (the transforms add [CLS]/[SEP] themselves) and, by default, with
``split_special_tokens``: a literal ``[MASK]`` or ``<|endoftext|>`` in raw text is text,
never the special id, as in our own pipeline.
"""

from __future__ import annotations

from ptobj.extras import require

require("hf", "transformers", "tokenizers", by=__name__)

import numpy as np

from ptobj.objectives.sample import SpecialTokens

# the names code models (StarCoder, our exports) give FIM's sentinels
FIM_TOKENS = {"fim_prefix": "<fim_prefix>", "fim_middle": "<fim_middle>", "fim_suffix": "<fim_suffix>",
              "fim_pad": "<fim_pad>"}
SENTINEL = "<extra_id_{}>"
# our reserved field <- the tokenizer attribute naming it; an HF id named twice reads in as the first
NAMED = (("eot", "eos_token"), ("unk", "unk_token"), ("mask", "mask_token"), ("cls", "cls_token"),
         ("sep", "sep_token"), ("pad", "pad_token"))
# every named reserved field of SpecialTokens (their slots are never lent to other specials)
_RESERVED_FIELDS = ("pad", "eot", "mask", "cls", "sep", "fim_prefix", "fim_middle", "fim_suffix", "fim_pad", "unk",
                    "chat_system", "chat_user", "chat_assistant", "chat_end")
_FIELD_NAMES = {**dict(NAMED), **FIM_TOKENS}


def _add_special(tokenizer, texts) -> int:
    from tokenizers import AddedToken

    have = tokenizer.get_vocab()
    new = [AddedToken(t, special=True, normalized=False) for t in texts if t not in have]
    return tokenizer.add_tokens(new, special_tokens=True) if new else 0


def add_fim_tokens(tokenizer) -> int:
    """Add ``<fim_prefix>``, ``<fim_middle>``, ``<fim_suffix>``, ``<fim_pad>`` as special tokens
    where the tokenizer lacks them; returns how many were added (then :func:`resize_embeddings`)."""
    return _add_special(tokenizer, FIM_TOKENS.values())


def add_sentinel_tokens(tokenizer, count: int) -> int:
    """Add T5's ``<extra_id_0>`` .. ``<extra_id_{count-1}>`` where missing; returns how many were added."""
    return _add_special(tokenizer, [SENTINEL.format(i) for i in range(int(count))])


def resize_embeddings(model, tokenizer, pad_to_multiple_of: int | None = None) -> int:
    """Grow ``model``'s token embeddings (and tied output layer) to hold every id of ``tokenizer``;
    a model that holds them already is left alone. Returns the embedding rows."""
    rows = model.get_input_embeddings().weight.shape[0]
    if rows < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=pad_to_multiple_of)
        rows = model.get_input_embeddings().weight.shape[0]
    return int(rows)


class HFTokens:
    """A fast tokenizer's ids <-> our ids (see the module doc), its special tokens as
    :class:`SpecialTokens`, word starts from ``word_ids()``, and ``encode``/``decode`` in our
    ids (what FIM and MacBERT's synonym files read). Built once; a tokenizer changed
    afterwards (tokens added) needs a new one."""

    def __init__(self, tokenizer, *, split_special_tokens: bool = True):
        if not getattr(tokenizer, "is_fast", False):
            raise TypeError(f"HFTokens needs a fast tokenizer (word_ids(), offsets), got {type(tokenizer).__name__}")
        self.tokenizer = tokenizer
        self.split_special_tokens = bool(split_special_tokens)
        vocab = tokenizer.get_vocab()
        size = max(max(vocab.values(), default=-1) + 1, len(tokenizer))
        sentinels = []
        while SENTINEL.format(len(sentinels)) in vocab:
            sentinels.append(vocab[SENTINEL.format(len(sentinels))])
        named: dict[str, int] = {}
        for field, attr in NAMED:
            tid = getattr(tokenizer, attr + "_id", None)
            if tid is not None:
                named[field] = int(tid)
        for field, text in FIM_TOKENS.items():
            if text in vocab:
                named[field] = int(vocab[text])
        special_ids = set(int(i) for i in tokenizer.all_special_ids)
        special_ids |= {int(i) for i, t in tokenizer.added_tokens_decoder.items() if t.special}
        reserved = (special_ids | set(named.values())) - set(sentinels)
        others = sorted(reserved - set(named.values()))
        default = SpecialTokens()
        taken = {getattr(default, f) for f in _RESERVED_FIELDS}
        spare = [i for i in range(default.first_regular) if i not in taken]
        slots = (spare + list(range(default.first_regular, default.first_regular + len(others))))[: len(others)]
        first_regular = max([default.first_regular] + [s + 1 for s in slots])
        regular = np.array(sorted(set(vocab.values()) - reserved - set(sentinels)), np.int64)
        vocab_size = first_regular + regular.size
        special = SpecialTokens(first_regular=first_regular)
        if sentinels:
            special = special.with_sentinels(vocab_size, len(sentinels))

        to_ours = np.full(size, -1, np.int32)
        to_ours[regular] = first_regular + np.arange(regular.size, dtype=np.int32)
        to_ours[np.array(others, np.int64)] = np.array(slots, np.int32)
        for field, _ in reversed([(f, a) for f, a in NAMED] + list(FIM_TOKENS.items())):
            if field in named:                       # reversed: the first field naming an id wins
                to_ours[named[field]] = getattr(special, field)
        to_ours[np.array(sentinels, np.int64)] = special.sentinels() if sentinels else np.zeros(0, np.int32)
        to_hf = np.full(vocab_size + len(sentinels), -1, np.int64)
        to_hf[first_regular:vocab_size] = regular
        to_hf[np.array(slots, np.int64)] = np.array(others, np.int64)
        for field, tid in named.items():
            to_hf[getattr(special, field)] = tid
        if sentinels:
            to_hf[special.sentinels()] = np.array(sentinels, np.int64)

        self.special, self.vocab_size, self.hf_size = special, int(vocab_size), int(size)
        self.named = named                     # our field -> HF id, for the reserved ids the tokenizer has
        self.num_sentinels = len(sentinels)
        self.to_ours, self.to_hf = to_ours, to_hf

    def __repr__(self) -> str:
        return (f"HFTokens({type(self.tokenizer).__name__}, {self.hf_size} HF ids -> vocab_size {self.vocab_size}, "
                f"first_regular {self.special.first_regular}, {self.num_sentinels} sentinels)")

    # -- ids ---------------------------------------------------------------------------------
    def require(self, fields, who: str) -> None:
        """Fail, naming the token, unless the tokenizer has every reserved ``fields`` (e.g. "mask")."""
        missing = [f for f in fields if f not in self.named]
        if missing:
            names = ", ".join(_FIELD_NAMES.get(f, f) for f in missing)
            hint = ("ptobj.hf.add_fim_tokens(tokenizer), then ptobj.hf.resize_embeddings(model, tokenizer)"
                    if any(f in FIM_TOKENS for f in missing) else
                    "tokenizer.add_special_tokens({...}), then ptobj.hf.resize_embeddings(model, tokenizer)")
            raise ValueError(f"{who}: the tokenizer has no {names}; add it: {hint}")

    def ours(self, ids, field: str = "input_ids") -> np.ndarray:
        """HF ids -> our ids (int32, same shape); an id outside the tokenizer is an error naming ``field``."""
        a = np.asarray(ids)
        if a.size and a.dtype.kind not in "iu":
            raise ValueError(f"feature {field!r}: token ids must be integers, got dtype {a.dtype}")
        if a.size and (int(a.min()) < 0 or int(a.max()) >= self.hf_size):
            raise ValueError(f"feature {field!r}: ids must lie in [0, {self.hf_size}) (the tokenizer's), "
                             f"got {int(a.min())} .. {int(a.max())}")
        out = self.to_ours[a]
        if a.size and int(out.min()) < 0:
            bad = int(a.reshape(-1)[np.argmin(out.reshape(-1))])
            raise ValueError(f"feature {field!r}: id {bad} is no token of the tokenizer (a hole in its vocabulary)")
        return out

    def hf(self, ids, field: str = "input_ids") -> np.ndarray:
        """Our ids -> HF ids (int64); a reserved id the tokenizer has no token for is an error naming it."""
        a = np.asarray(ids)
        out = self.to_hf[a]
        if a.size and int(out.min()) < 0:
            bad = int(a.reshape(-1)[np.argmin(out.reshape(-1))])
            names = [f for f in _RESERVED_FIELDS if getattr(self.special, f) == bad]
            raise ValueError(f"{field}: the objective emitted reserved id {bad} ({', '.join(names) or 'unnamed'}), "
                             "which this tokenizer has no token for")
        return out

    # -- text --------------------------------------------------------------------------------
    def _call(self, texts, **kw):
        return self.tokenizer(texts, add_special_tokens=False, split_special_tokens=self.split_special_tokens, **kw)

    def tokenize(self, texts: list[str], *, offsets: bool = False) -> dict[str, list]:
        """HF ``input_ids`` and ``word_start`` (lists of 0/1: the token starts a word of
        ``word_ids()``) per text; with ``offsets``, HF's ``offset_mapping`` too."""
        enc = self._call(list(texts), return_offsets_mapping=offsets)
        out = {"input_ids": enc["input_ids"], "word_start": [word_starts(enc.word_ids(i))
                                                             for i in range(len(enc["input_ids"]))]}
        if offsets:
            out["offset_mapping"] = enc["offset_mapping"]
        return out

    def encode(self, text: str) -> list[int]:
        """One text -> our ids (the tokenizer interface FIM re-encodes its pieces with)."""
        return self.ours(self._call(text)["input_ids"]).tolist()

    def decode(self, ids) -> str:
        """Our ids -> text, every token spelled out (special ones too), no clean-up of spaces."""
        return self.tokenizer.decode(self.hf(np.asarray(ids, np.int64)).tolist(), skip_special_tokens=False,
                                     clean_up_tokenization_spaces=False)

    def id_to_piece(self, i: int) -> str:
        """The token's name (FIM reads ``<0xXX>`` byte pieces from it)."""
        return self.tokenizer.convert_ids_to_tokens(int(self.to_hf[int(i)]))


def word_starts(word_ids) -> list[int]:
    """1 where a token starts a word of ``word_ids`` (a new word id, or a token of no word)."""
    out, prev = [], object()
    for w in word_ids:
        out.append(int(w is None or w != prev))
        prev = w
    return out
