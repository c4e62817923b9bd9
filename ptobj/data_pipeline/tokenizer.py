"""SentencePiece tokenizer behind reserved special ids.

Sentencepiece piece ``x`` becomes id ``x + first_regular``; ids below
``first_regular`` (EOT, PAD, MASK, CLS, SEP, FIM sentinels, ...) are emitted by
the pipeline only, so no raw text, not even a literal ``"<PRE>"``, can encode
to them. Byte fallback makes every string encodable; with identity
normalisation and no whitespace folding ``decode(encode(x)) == x``.
"""

from __future__ import annotations

import io
import itertools
import os
import re
import sys
from pathlib import Path
from typing import Iterable, Sequence

from ptobj.extras import require

require("data", "sentencepiece", by=__name__)

import numpy as np
import sentencepiece as spm

from ptobj.objectives.sample import SpecialTokens

WORD_BOUNDARY = "\u2581"  # sentencepiece's '▁'


class SentencePieceTokenizer:
    def __init__(self, model_proto: bytes, special: SpecialTokens | None = None, path: str | None = None):
        self.special = special or SpecialTokens()
        self.path = path
        self._proto = model_proto
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self._offset = self.special.first_regular
        self._sp_unk = self._sp.unk_id()
        self._raw_ids = _direct_encoder(self._sp)
        # sentencepiece reads a literal '▁' in text as its own whitespace mark and decodes it
        # as a space; with byte fallback we spell it as its three UTF-8 byte pieces instead
        boundary = [self._sp.piece_to_id(f"<0x{b:02X}>") for b in WORD_BOUNDARY.encode()]
        self._boundary_ids = boundary if all(self._sp.is_byte(i) for i in boundary) else None
        n = self._sp.get_piece_size()
        self.num_pieces = n  # sentencepiece pieces (what TokenizerConfig.vocab_size asks for)
        self.vocab_size = self._offset + n
        # per-id facts for word_start(): reserved ids count as word starts and end a word
        pieces = [self._piece_text(i) for i in range(n)]
        self._starts_word = np.ones(self.vocab_size, dtype=bool)
        self._starts_word[self._offset :] = [p[:1].isspace() and not p.isspace() for p in pieces]
        self._blank = np.zeros(self.vocab_size, dtype=bool)
        self._blank[self._offset :] = [p.isspace() for p in pieces]
        self._ends_space = np.ones(self.vocab_size, dtype=bool)
        self._ends_space[self._offset :] = [p[-1:].isspace() for p in pieces]

    # -- construction -------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike, special: SpecialTokens | None = None) -> "SentencePieceTokenizer":
        path = Path(path)
        try:
            proto = path.read_bytes()
        except OSError as exc:
            raise FileNotFoundError(f"cannot read tokenizer model {path}: {exc}") from exc
        try:
            return cls(proto, special, str(path))
        except RuntimeError as exc:
            raise ValueError(f"tokenizer model {path} is not a sentencepiece model: {exc}") from exc

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        *,
        model_path: str | os.PathLike | None = None,
        model_type: str = "unigram",
        character_coverage: float = 1.0,
        add_dummy_prefix: bool = False,
        max_sentences: int = 200_000,
        exact_vocab_size: bool = False,
        special: SpecialTokens | None = None,
    ) -> "SentencePieceTokenizer":
        """Train on ``texts`` (one training line per non-blank line); save atomically to ``model_path``.

        sentencepiece stops short of ``vocab_size`` pieces when the text holds no more; the
        shortfall is printed (stderr), or with ``exact_vocab_size`` it is an error
        (sentencepiece's hard vocabulary limit), for runs that must share one vocabulary size.
        """

        def lines() -> Iterable[str]:
            count = 0
            for text in texts:
                for line in text.splitlines():
                    if line.strip():
                        yield line
                        count += 1
                        if count >= max_sentences:
                            return

        buf = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(lines()),
                model_writer=buf,
                vocab_size=int(vocab_size),
                model_type=model_type,
                character_coverage=character_coverage,
                byte_fallback=True,
                normalization_rule_name="identity",
                remove_extra_whitespaces=False,
                add_dummy_prefix=add_dummy_prefix,
                allow_whitespace_only_pieces=True,
                split_digits=True,
                user_defined_symbols=["\n"],
                unk_id=0,
                bos_id=-1,
                eos_id=-1,
                pad_id=-1,
                hard_vocab_limit=bool(exact_vocab_size),
                minloglevel=2,
                num_threads=max(1, min(4, os.cpu_count() or 1)),
            )
        except RuntimeError as exc:
            most = re.search(r"Vocabulary size too high.*<= (\d+)", str(exc))
            if exact_vocab_size and most:
                raise ValueError(
                    f"vocab_size={vocab_size} with exact_vocab_size: the training text gives at most "
                    f"{most.group(1)} pieces; ask for fewer, train on more text, or set "
                    f"exact_vocab_size=false to accept fewer") from exc
            raise ValueError(f"sentencepiece training failed (vocab_size={vocab_size}): {exc}") from exc
        proto = buf.getvalue()
        path = None
        if model_path is not None:
            path = Path(model_path)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            tmp.write_bytes(proto)
            os.replace(tmp, path)
            path = str(path)
        tok = cls(proto, special, path)
        note = vocabulary_shortfall(vocab_size, tok.num_pieces)
        if note:
            print(f"[data_pipeline] {note}", file=sys.stderr)
        return tok

    def save(self, path: str | os.PathLike) -> None:
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_bytes(self._proto)
        os.replace(tmp, path)

    def __getstate__(self):
        return {"proto": self._proto, "special": self.special, "path": self.path}

    def __setstate__(self, state):
        self.__init__(state["proto"], state["special"], state["path"])

    # -- encode / decode ----------------------------------------------------------------
    def _sp_ids(self, text: str) -> list[int]:
        if self._boundary_ids is None or WORD_BOUNDARY not in text:
            return self._raw_ids(text)
        out: list[int] = []
        for k, part in enumerate(text.split(WORD_BOUNDARY)):
            if k:
                out.extend(self._boundary_ids)
            if part:
                out.extend(self._raw_ids(part))
        return out

    def _sp_encode_many(self, texts: list[str]) -> list[list[int]]:
        if self._boundary_ids is not None and any(WORD_BOUNDARY in t for t in texts):
            return [self._sp_ids(t) for t in texts]
        return self._sp.encode(list(texts))

    def _shift(self, ids: Sequence[int]) -> list[int]:
        arr = np.asarray(ids, dtype=np.int64) + self._offset
        arr[arr == self._sp_unk + self._offset] = self.special.unk
        return arr.tolist()

    def encode(self, text: str) -> list[int]:
        return self._shift(self._sp_ids(text))

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self._shift(ids) for ids in self._sp_encode_many(texts)]

    def encode_array(self, text: str) -> np.ndarray:
        """``encode`` as an int32 array, cheap for short texts (FIM re-encodes word
        fragments one at a time): the unk remap runs only when sentencepiece emitted unk."""
        ids = self._sp_ids(text)
        if len(ids) < 64:
            off = self._offset
            arr = np.array([i + off for i in ids], dtype=np.int32)
        else:
            arr = np.array(ids, dtype=np.int32)
            arr += self._offset
        if self._sp_unk in ids:
            arr[arr == self._sp_unk + self._offset] = self.special.unk
        return arr

    def encode_flat(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Encode many texts at once: (all ids as one int32 array, length of each text)."""
        raw = self._sp_encode_many(texts)
        lengths = np.fromiter(map(len, raw), dtype=np.int64, count=len(raw))
        flat = np.fromiter(itertools.chain.from_iterable(raw), dtype=np.int32, count=int(lengths.sum()))
        flat += self._offset
        flat[flat == self._sp_unk + self._offset] = self.special.unk
        return flat, lengths

    def decode(self, ids: Iterable[int]) -> str:
        arr = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64).reshape(-1)
        keep = arr[(arr >= self._offset) & (arr < self.vocab_size)] - self._offset
        return self._sp.decode(keep.tolist())

    def id_to_piece(self, i: int) -> str:
        if i < self._offset:
            return f"<reserved_{i}>"
        return self._sp.id_to_piece(int(i) - self._offset)

    # -- vocabulary facts ---------------------------------------------------------------
    def padded_vocab_size(self, multiple: int = 128) -> int:
        """Embedding rows: vocab_size rounded up to ``multiple`` (e.g. 128 * tensor parallel size)."""
        if multiple < 1:
            raise ValueError(f"multiple must be >= 1, got {multiple}")
        return -(-self.vocab_size // multiple) * multiple

    def _piece_text(self, sp_id: int) -> str:
        """The text a piece stands for ('▁' as a space, byte pieces as their byte when ASCII)."""
        if self._sp.is_byte(sp_id):
            value = int(self._sp.id_to_piece(sp_id)[3:5], 16)
            return chr(value) if value < 128 else "\x80"  # a non-space placeholder
        if self._sp.is_unknown(sp_id) or self._sp.is_control(sp_id):
            return "\x80"
        return self._sp.id_to_piece(sp_id).replace(WORD_BOUNDARY, " ")

    def word_start(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """True where a word begins: the first id, a reserved id, a piece after a reserved
        id, a piece beginning with '▁' (whitespace), or a piece after one ending in whitespace
        (e.g. after a newline). Whitespace-only pieces are not word starts (the word begins
        at the next piece)."""
        arr = np.asarray(ids, dtype=np.int64).reshape(-1)
        if arr.size == 0:
            return np.zeros(0, dtype=bool)
        arr = np.clip(arr, 0, self.vocab_size - 1)
        out = self._starts_word[arr]
        out[1:] |= self._ends_space[arr[:-1]] & ~self._blank[arr[1:]]
        out[1:] |= arr[:-1] < self._offset
        out[0] = True
        return out


def vocabulary_shortfall(asked: int, got: int) -> str | None:
    """The line to log when training gave fewer pieces than asked, else None."""
    if got >= asked:
        return None
    return (f"tokenizer: asked for {asked} pieces, the training text gave {got} (sentencepiece stops "
            f"when it finds no more); the model's vocabulary follows what came back. Set "
            f"tokenizer.exact_vocab_size=true to make this an error.")


def _direct_encoder(sp: spm.SentencePieceProcessor):
    """``text -> list[int]`` for one string, as ``sp.encode(text)`` returns it.

    ``sp.encode`` resolves a dozen keyword defaults in Python on every call, about
    twice the cost of encoding a short word. When the installed sentencepiece
    exposes its compiled single-string encoder (``_processor._EncodeAsIds``, 0.2.1+)
    it is called directly with the processor's own defaults, after checking on a
    few probes that it gives what ``sp.encode`` gives; otherwise ``sp.encode`` is used.
    """
    try:
        raw = sp._processor._EncodeAsIds
        opts = (sp._enable_sampling, sp._nbest_size, sp._alpha, sp._add_bos, sp._add_eos, sp._reverse)
        if opts[0]:
            return sp.encode

        def direct(text: str) -> list[int]:
            return raw(text, *opts)

        for probe in ("", "a b", " hello  world\n", "\u2603 caf\u00e9 12345"):
            if direct(probe) != sp.encode(probe):
                return sp.encode
        return direct
    except (AttributeError, TypeError, RuntimeError):
        return sp.encode
