"""Frozen configuration dataclasses for corpus preparation, read from YAML or flags.

Unknown keys are errors that name the key, so a typo never silently falls back
to a default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ptobj.extras import require

STDLIB_SOURCES = ("stdlib-code", "stdlib-defs", "stdlib-prose")
SENTENCE_MODES = ("auto", "prose", "code")


@dataclass(frozen=True)
class CorpusConfig:
    """Where the text comes from and how it is cut into documents and sentences.

    ``source``: a local ``.jsonl``/``.json``/``.parquet``/``.txt`` file, ``stdlib-code``
    (the Python standard library's own ``*.py`` files), ``stdlib-defs`` (the same files cut
    into their top-level definitions and statement blocks, one document each: short documents,
    as function-level infilling wants), ``stdlib-prose`` (their docstrings), or a Hugging Face
    hub dataset name (needs internet).
    """

    source: str = "stdlib-code"
    text_field: str = "text"
    split: str = "train"  # hub datasets only
    subset: str = ""  # hub datasets only: the configuration name, e.g. "wikitext-103-raw-v1"
    max_bytes: int = 2_000_000  # cap on the embedded stdlib corpora (CPU-sized runs)
    max_documents: int = 0  # 0 = all
    sentences: str = "auto"  # auto: code for stdlib-code / stdlib-defs, else prose
    # the held-out split, by content hash (independent of order): exactly ``valid_documents``
    # documents (those with the smallest hashes; the corpus is read once more to rank them) or,
    # when that is 0, a ``valid_fraction`` of them in expectation. Fewer than ``min_valid_documents``
    # held out is an error naming the numbers (both 0: nothing is held out, on purpose).
    valid_fraction: float = 0.02
    valid_documents: int = 0
    min_valid_documents: int = 1
    min_document_chars: int = 1  # shorter (after strip) documents are skipped and counted
    max_document_chars: int = 0  # longer documents are skipped and counted (0: no limit)

    def usable(self, text: str) -> bool:
        """Whether a document is kept: not shorter (stripped) than min_document_chars, not longer
        than max_document_chars."""
        return len(text.strip()) >= max(1, self.min_document_chars) and \
            not (self.max_document_chars and len(text) > self.max_document_chars)

    def __post_init__(self) -> None:
        if not self.source:
            raise ValueError("corpus.source must name a file, 'stdlib-code', 'stdlib-prose' or a hub dataset")
        if self.sentences not in SENTENCE_MODES:
            raise ValueError(f"corpus.sentences must be one of {SENTENCE_MODES}, got {self.sentences!r}")
        if not 0.0 <= self.valid_fraction < 1.0:
            raise ValueError(f"corpus.valid_fraction must lie in [0, 1), got {self.valid_fraction!r}")
        for name in ("max_bytes", "max_documents", "min_document_chars", "max_document_chars", "valid_documents",
                     "min_valid_documents"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"corpus.{name} must be >= 0, got {getattr(self, name)!r}")

    @property
    def holds_out(self) -> bool:
        """Whether a held-out split is asked for at all."""
        return self.valid_documents > 0 or self.valid_fraction > 0

    @property
    def sentence_mode(self) -> str:
        if self.sentences != "auto":
            return self.sentences
        return "code" if self.source in ("stdlib-code", "stdlib-defs") else "prose"


@dataclass(frozen=True)
class TokenizerConfig:
    """Train a sentencepiece model on the corpus, or load one (``model_path``).

    ``vocab_size`` counts sentencepiece pieces; the tokenizer adds the reserved
    ids below ``SpecialTokens.first_regular`` in front of them.
    """

    model_path: str = ""
    vocab_size: int = 8000
    model_type: str = "unigram"
    character_coverage: float = 1.0
    max_training_sentences: int = 200_000
    add_dummy_prefix: bool = False  # False keeps decode(encode(x)) == x for code
    # fail when the corpus cannot fill vocab_size pieces (by default fewer are kept, logged and
    # recorded in the manifest); set it when runs must share one vocabulary size, as in a sweep
    exact_vocab_size: bool = False

    def __post_init__(self) -> None:
        if not self.model_path and self.vocab_size < 300:
            raise ValueError(
                f"tokenizer.vocab_size must be >= 300 (256 byte-fallback pieces plus room), got {self.vocab_size}"
            )
        if self.model_type not in ("unigram", "bpe"):
            raise ValueError(f"tokenizer.model_type must be 'unigram' or 'bpe', got {self.model_type!r}")
        if not isinstance(self.exact_vocab_size, bool):
            raise ValueError(f"tokenizer.exact_vocab_size must be a bool, got {self.exact_vocab_size!r}")
        if not 0.0 < self.character_coverage <= 1.0:
            raise ValueError(f"tokenizer.character_coverage must lie in (0, 1], got {self.character_coverage!r}")
        if self.max_training_sentences < 1:
            raise ValueError(f"tokenizer.max_training_sentences must be >= 1, got {self.max_training_sentences}")


@dataclass(frozen=True)
class PrepareConfig:
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    out: str = "data/prepared"
    workers: int = 1
    chunk_documents: int = 64  # documents per task sent to a worker
    progress: bool = True

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.chunk_documents < 1:
            raise ValueError(f"chunk_documents must be >= 1, got {self.chunk_documents}")


def from_dict(cls: type, data: Mapping[str, Any] | None, where: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping; unknown keys raise naming the key."""
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ValueError(
            f"unknown config key(s) {[prefix + k for k in unknown]}; known keys: {sorted(fields)}"
        )
    kwargs = {}
    for name, value in data.items():
        sub = {"corpus": CorpusConfig, "tokenizer": TokenizerConfig}.get(name) if cls is PrepareConfig else None
        if sub is not None:
            if value is not None and not isinstance(value, Mapping):
                raise ValueError(f"config key {name!r} must be a mapping, got {type(value).__name__}")
            kwargs[name] = from_dict(sub, value, name)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def load_prepare_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> PrepareConfig:
    """Read a YAML file whose top level has ``corpus``, ``tokenizer``, ``out``, ``workers``."""
    require("data", "yaml", by=__name__)
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise FileNotFoundError(f"cannot read config file {path}: {exc}") from exc
    if not isinstance(data, Mapping):
        raise ValueError(f"config file {path} must hold a mapping at the top level")
    data = dict(data)
    for key, value in (overrides or {}).items():
        section, _, name = key.rpartition(".")
        target = data.setdefault(section, {}) if section else data
        target[name] = value
    try:
        return from_dict(PrepareConfig, data)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: {exc}") from exc
