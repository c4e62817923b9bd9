"""Corpus readers: local files and folders and hub datasets through Hugging Face ``datasets``
(hub datasets streamed, never downloaded whole), named public corpora per objective family
(:data:`NAMED_CORPORA`), plus embedded corpora that need no download (the Python standard
library's source files as code, cut into definitions, and their docstrings as English prose).

Each reader yields documents (``str``) in a deterministic order and exposes an
``identity`` string used as part of the cache key.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import os
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from ptobj.data_pipeline.config import CorpusConfig
from ptobj.extras import require

_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".txt": "text", ".text": "text",
                  ".arrow": "arrow"}
# stdlib folders left out: tests (huge, repetitive), vendored/third-party code, GUI demos
_STDLIB_SKIP = ("test", "tests", "site-packages", "dist-packages", "idlelib", "turtledemo", "lib2to3", "__pycache__")


class CorpusError(ValueError):
    """A corpus that cannot be read; the message names the file or field."""


@dataclass(frozen=True)
class Corpus:
    name: str
    identity: str  # changes when the underlying files change
    documents: Callable[[], Iterator[str]]


def stdlib_files(max_bytes: int) -> list[Path]:
    """Sorted stdlib ``*.py`` files (tests and vendored code left out), capped at ``max_bytes`` total."""
    root = Path(sysconfig.get_paths()["stdlib"])
    candidates = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in _STDLIB_SKIP and not d.startswith(".")]  # prune, never descend
        candidates += [Path(folder) / f for f in files if f.endswith(".py") and not f.startswith("test_")]
    chosen, total = [], 0
    for path in sorted(candidates, key=lambda p: p.relative_to(root).parts):
        size = path.stat().st_size
        if max_bytes and total + size > max_bytes:
            continue  # keep looking for smaller files so the cap is filled deterministically
        chosen.append(path)
        total += size
    return chosen


def _has_content(path: Path) -> bool:
    """Whether the file holds anything but whitespace (read until the first such byte)."""
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 16):
            if chunk.strip():
                return True
    return False


def file_identity(paths: list[Path]) -> str:
    """A fingerprint of files: their paths, sizes and modification times (a changed file, a new cache key)."""
    h = hashlib.sha256()
    for p in paths:
        st = p.stat()
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _read_source(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def docstring_document(source: str) -> str:
    """All docstrings of one module (module, classes, functions) joined by blank lines."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return ""
    parts = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc and len(doc.split()) >= 4:
                parts.append(inspect.cleandoc(doc))
    return "\n\n".join(parts)


def definition_documents(source: str) -> list[str]:
    """A module cut at its top-level statements: each function or class (with its decorators and
    the comments just above it) is a document, and each run of other statements between them is
    one; together they are the whole file. A file that does not parse is one document."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return [source]
    lines = source.splitlines(keepends=True)
    starts = []
    for node in tree.body:
        first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))]) - 1
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            while first > 0 and lines[first - 1].lstrip().startswith("#"):
                first -= 1  # the comment block above a definition goes with it
            starts += [first, node.end_lineno]
        elif not starts or starts[-1] in (first, None):
            starts.append(first)
    cuts = sorted({0, *[c for c in starts if c is not None], len(lines)})
    docs = ["".join(lines[a:b]) for a, b in zip(cuts, cuts[1:])]
    return [d for d in docs if d.strip()]


def _stdlib_corpus(cfg: CorpusConfig) -> Corpus:
    # prose takes docstrings from a larger slice of files: docstrings are a fraction of the bytes
    max_bytes = cfg.max_bytes * (8 if cfg.source == "stdlib-prose" else 1)
    files = stdlib_files(max_bytes)
    identity = f"{cfg.source}|{sys.version}|{file_identity(files)}"
    if cfg.source == "stdlib-code":
        return Corpus(cfg.source, identity, lambda: (_read_source(p) for p in files))
    if cfg.source == "stdlib-defs":
        return Corpus(cfg.source, identity, lambda: (d for p in files for d in definition_documents(_read_source(p))))
    cached: list[str] = []  # docstrings are parsed once (tokenizer training and encoding both read them)

    def prose() -> Iterator[str]:
        if not cached:
            cached.extend(docstring_document(_read_source(p)) for p in files)
        return iter(cached)

    return Corpus(cfg.source, identity, prose)


@dataclass(frozen=True)
class HubSource:
    """One dataset on the Hugging Face hub, read streaming (``datasets.load_dataset(...,
    streaming=True)``): a TB-scale corpus is never downloaded whole, documents arrive as read."""

    path: str
    subset: str = ""
    text_field: str = "text"
    revision: str | None = None
    data_dir: str | None = None
    weight: float = 1.0          # its share of documents when a named corpus interleaves several


# Public corpora by name, as the papers trained each objective family where a public set exists.
# ``data.corpus.source: <name>`` reads them; each member's columns are what a local copy must hold.
NAMED_CORPORA: dict[str, tuple[str, tuple[HubSource, ...]]] = {
    "github-code-mit": ("GitHub code under the MIT license (CodeParrot's cleaned GitHub set, parquet): FIM, "
                        "causal LM", (HubSource("codeparrot/github-code-clean", text_field="code",
                                                revision="refs/convert/parquet", data_dir="all-mit/partial-train"),)),
    "python-code": ("Python files from GitHub (CodeParrot clean): FIM, causal LM",
                    (HubSource("codeparrot/codeparrot-clean", text_field="content"),)),
    "wikipedia-en": ("English Wikipedia (2023-11-01 dump)", (HubSource("wikimedia/wikipedia", "20231101.en"),)),
    "books": ("BookCorpus (a public replica)", (HubSource("rojagtap/bookcorpus"),)),
    "bert-english": ("BERT's pretraining text: English Wikipedia and BookCorpus interleaved by their word "
                     "counts (2,500M and 800M words): BERT, SpanBERT, ALBERT, UniLM",
                     (HubSource("wikimedia/wikipedia", "20231101.en", weight=0.76),
                      HubSource("rojagtap/bookcorpus", weight=0.24))),
    "c4-en": ("C4, English (T5's corpus): T5, MASS", (HubSource("allenai/c4", "en"),)),
    "wikipedia-zh": ("Chinese Wikipedia (2023-11-01 dump): MacBERT", (HubSource("wikimedia/wikipedia", "20231101.zh"),)),
}


def _hub_unreachable() -> str | None:
    """Why the hub cannot be read from here (offline mode, or no route within 3 s), or None."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False") or \
            os.environ.get("HF_DATASETS_OFFLINE", "0") not in ("0", "", "false", "False"):
        return "offline mode is set (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE)"
    import socket
    from urllib.parse import urlparse

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    try:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=3):
            return None
    except OSError as exc:
        return f"{url.hostname} is unreachable ({exc})"


def _offline_error(label: str, sources: tuple[HubSource, ...], why: str) -> CorpusError:
    first = sources[0]
    include = f" --include '{first.data_dir}/*'" if first.data_dir else (
        f" --include '{first.subset}/*'" if first.subset else "")
    rev = f" --revision {first.revision}" if first.revision else ""
    columns = sorted({s.text_field for s in sources})
    return CorpusError(
        f"corpus {label}: the Hugging Face hub cannot be read: {why}. On a machine with internet, download "
        f"{' and '.join(s.path for s in sources)} (e.g. huggingface-cli download --repo-type dataset {first.path}"
        f"{rev}{include} --local-dir DIR) and set data.corpus.source=DIR, a local folder of its parquet / jsonl "
        f"/ arrow files with the column(s) {columns} (data.corpus.text_field); or set HF_HUB_OFFLINE=1 to read "
        "what datasets' cache already holds")


def _read_rows(ds, text_field: str, label: str) -> Iterator[str]:
    columns = list(ds.column_names or []) if getattr(ds, "column_names", None) is not None else None
    if columns is not None and text_field not in columns:
        raise CorpusError(f"corpus {label} has no text field {text_field!r}; its fields are {columns}")
    for row in ds:
        if text_field not in row:
            raise CorpusError(f"corpus {label} has no text field {text_field!r}; its fields are {sorted(row)}")
        value = row[text_field]
        if value is not None and not isinstance(value, str):
            raise CorpusError(f"corpus {label}: field {text_field!r} holds {type(value).__name__}, not text")
        yield value or ""


def _load(builder: str, kwargs: dict, label: str, cache_dir: str | None):
    require("data", "datasets", by=__name__)
    import datasets

    datasets.disable_progress_bars()
    try:
        return datasets.load_dataset(builder, cache_dir=cache_dir, **kwargs)
    except Exception as exc:  # datasets raises many types; name the input either way
        if "corresponds to no data" in str(exc):  # datasets' words for a file without records
            raise CorpusError(f"corpus {label} is empty: it holds no records") from exc
        raise CorpusError(f"cannot read corpus {label}: {type(exc).__name__}: {exc}") from exc


def _hf_documents(builder: str, kwargs: dict, text_field: str, label: str,
                  cache_dir: str | None) -> Iterator[str]:
    ds = _load(builder, kwargs, label, cache_dir)
    if not kwargs.get("streaming"):
        ds = _columns_only(ds, text_field, label)
    yield from _read_rows(ds, text_field, label)


def _columns_only(ds, text_field: str, label: str):
    columns = list(ds.column_names)
    if text_field not in columns:
        raise CorpusError(f"corpus {label} has no text field {text_field!r}; its fields are {columns}")
    return ds.select_columns([text_field])


def _hub_documents(sources: tuple[HubSource, ...], split: str, label: str, cache_dir: str | None) -> Iterator[str]:
    """Documents of one or several hub datasets, streamed; several are interleaved by weight with a
    fixed seed (a deterministic order)."""
    require("data", "datasets", by=__name__)
    import datasets

    streams = []
    for src in sources:
        kwargs = {"split": split, "streaming": True}
        for key, value in (("name", src.subset), ("revision", src.revision), ("data_dir", src.data_dir)):
            if value:
                kwargs[key] = value
        ds = _load(src.path, kwargs, f"{label} ({src.path})" if len(sources) > 1 else label, cache_dir)
        if src.text_field != "text":
            ds = ds.rename_column(src.text_field, "text")
        streams.append(ds.select_columns(["text"]))
    if len(streams) == 1:
        yield from _read_rows(streams[0], "text", label)
        return
    total = sum(s.weight for s in sources)
    mixed = datasets.interleave_datasets(streams, probabilities=[s.weight / total for s in sources], seed=0,
                                         stopping_strategy="first_exhausted")
    yield from _read_rows(mixed, "text", label)


def _local_folder(path: Path, text_field: str, cache_dir: str | None) -> Corpus:
    """A folder of parquet / jsonl / json / arrow / txt files of one kind (searched recursively, in
    sorted order), e.g. a hub dataset downloaded for an offline cluster."""
    files = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in _FILE_BUILDERS)
    if not files:
        raise CorpusError(f"corpus folder {path} holds no {'/'.join(sorted(_FILE_BUILDERS))} files")
    kinds = sorted({_FILE_BUILDERS[f.suffix.lower()] for f in files})
    if len(kinds) > 1:
        raise CorpusError(f"corpus folder {path} mixes file kinds {kinds}; keep one kind per corpus")
    builder = kinds[0]
    kwargs = {"data_files": [str(f.resolve()) for f in files], "split": "train", "streaming": True}
    if builder == "text":
        kwargs["sample_by"] = "document"
    identity = f"folder|{file_identity([f.resolve() for f in files])}|{text_field}"
    return Corpus(str(path), identity, lambda: _hf_documents(builder, kwargs, text_field, str(path), cache_dir))


def open_corpus(cfg: CorpusConfig, cache_dir: str | os.PathLike | None = None) -> Corpus:
    """Resolve ``cfg.source`` to a :class:`Corpus`; fails fast on missing/unreadable files and on a
    hub that cannot be reached.

    ``cache_dir``: where ``datasets`` keeps its arrow cache (default: its own, under ~/.cache).
    """
    cache_dir = None if cache_dir is None else str(cache_dir)
    if cfg.source in ("stdlib-code", "stdlib-defs", "stdlib-prose"):
        return _stdlib_corpus(cfg)
    if cfg.source in NAMED_CORPORA:
        _, sources = NAMED_CORPORA[cfg.source]
        return _hub_corpus(cfg.source, sources, cfg.split, cache_dir)
    path = Path(cfg.source).expanduser()
    suffix = path.suffix.lower()
    # "org/name" is a hub dataset; paths are recognised by existing, a file suffix, or a leading ./ / ~
    looks_local = path.exists() or suffix in _FILE_BUILDERS or cfg.source.startswith(("/", ".", "~"))
    if looks_local:
        if path.is_dir():
            return _local_folder(path, cfg.text_field, cache_dir)
        if not path.is_file():
            raise CorpusError(f"corpus file {path} does not exist (or is not a file)")
        if suffix not in _FILE_BUILDERS:
            raise CorpusError(f"corpus file {path}: unsupported suffix {suffix!r}; use {sorted(_FILE_BUILDERS)}")
        try:
            content = _has_content(path)
        except OSError as exc:
            raise CorpusError(f"corpus file {path} is unreadable: {exc}") from exc
        if not content:
            size = path.stat().st_size
            raise CorpusError(f"corpus file {path} is empty: " + ("0 bytes" if size == 0 else
                              f"{size} bytes of whitespace") + ", no records to read")
        builder = _FILE_BUILDERS[suffix]
        kwargs = {"data_files": str(path.resolve()), "split": "train"}
        if builder == "text":
            kwargs["sample_by"] = "document"
        field = cfg.text_field
        identity = f"file|{file_identity([path.resolve()])}|{field}"
        return Corpus(str(path), identity, lambda: _hf_documents(builder, kwargs, field, str(path), cache_dir))
    if "/" not in cfg.source:
        raise CorpusError(f"corpus.source {cfg.source!r}: not a file or folder, not an embedded corpus "
                          f"(stdlib-code, stdlib-defs, stdlib-prose), not a named corpus ({', '.join(NAMED_CORPORA)}) "
                          "and not a hub dataset (org/name)")
    return _hub_corpus(cfg.source, (HubSource(cfg.source, cfg.subset, cfg.text_field),), cfg.split, cache_dir)


def _hub_corpus(label: str, sources: tuple[HubSource, ...], split: str, cache_dir: str | None) -> Corpus:
    why = _hub_unreachable()
    if why is not None and not os.environ.get("HF_HUB_OFFLINE") and not os.environ.get("HF_DATASETS_OFFLINE"):
        raise _offline_error(label, sources, why)
    identity = "hub|" + "|".join(f"{s.path}|{s.subset}|{s.revision}|{s.data_dir}|{s.text_field}|{s.weight}"
                                 for s in sources) + f"|{split}"

    def documents() -> Iterator[str]:
        try:
            yield from _hub_documents(sources, split, label, cache_dir)
        except CorpusError as exc:
            if why is not None:        # offline mode and datasets' cache lacks it
                raise _offline_error(label, sources, f"{why}; {exc}") from None
            raise

    return Corpus(label, identity, documents)


def document_hash(text: str) -> int:
    """64-bit content hash; decides the held-out split independent of order."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def hash_bound(valid_fraction: float) -> int:
    """The content-hash bound that holds out ``valid_fraction`` of documents (in expectation)."""
    return int(valid_fraction * 2.0**64) if valid_fraction > 0 else 0


def is_held_out(text: str, bound: int) -> bool:
    """A document is held out when its content hash lies below ``bound``: a function of the
    text alone, so the split does not depend on order, workers or what else the corpus holds."""
    return bound > 0 and document_hash(text) < bound


def is_valid_document(text: str, valid_fraction: float) -> bool:
    return is_held_out(text, hash_bound(valid_fraction))
