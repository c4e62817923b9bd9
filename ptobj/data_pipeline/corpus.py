"""Corpus readers: local files and hub datasets through Hugging Face ``datasets``,
plus two embedded corpora that need no download (the Python standard library's
source files as code, and their docstrings as English prose).

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

_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".txt": "text", ".text": "text"}
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


def _hf_documents(builder: str, kwargs: dict, text_field: str, label: str,
                  cache_dir: str | None) -> Iterator[str]:
    require("data", "datasets", by=__name__)
    import datasets

    datasets.disable_progress_bars()
    try:
        ds = datasets.load_dataset(builder, cache_dir=cache_dir, **kwargs)
    except Exception as exc:  # datasets raises many types; name the input either way
        if "corresponds to no data" in str(exc):  # datasets' words for a file without records
            raise CorpusError(f"corpus {label} is empty: it holds no records") from exc
        raise CorpusError(f"cannot read corpus {label}: {type(exc).__name__}: {exc}") from exc
    columns = list(ds.column_names)
    if text_field not in columns:
        raise CorpusError(f"corpus {label} has no text field {text_field!r}; its fields are {columns}")
    for row in ds.select_columns([text_field]):
        value = row[text_field]
        if value is not None and not isinstance(value, str):
            raise CorpusError(f"corpus {label}: field {text_field!r} holds {type(value).__name__}, not text")
        yield value or ""


def open_corpus(cfg: CorpusConfig, cache_dir: str | os.PathLike | None = None) -> Corpus:
    """Resolve ``cfg.source`` to a :class:`Corpus`; fails fast on missing/unreadable files.

    ``cache_dir``: where ``datasets`` keeps its arrow cache (default: its own, under ~/.cache).
    """
    cache_dir = None if cache_dir is None else str(cache_dir)
    if cfg.source in ("stdlib-code", "stdlib-defs", "stdlib-prose"):
        return _stdlib_corpus(cfg)
    path = Path(cfg.source).expanduser()
    suffix = path.suffix.lower()
    # "org/name" is a hub dataset; paths are recognised by existing, a file suffix, or a leading ./ / ~
    looks_local = path.exists() or suffix in _FILE_BUILDERS or cfg.source.startswith(("/", ".", "~"))
    if looks_local:
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
    # a hub dataset name
    kwargs = {"split": cfg.split}
    if cfg.subset:
        kwargs["name"] = cfg.subset
    identity = f"hub|{cfg.source}|{cfg.subset}|{cfg.split}|{cfg.text_field}"
    return Corpus(cfg.source, identity, lambda: _hf_documents(cfg.source, kwargs, cfg.text_field, cfg.source, cache_dir))


def document_hash(text: str) -> int:
    """64-bit content hash; decides the held-out split independent of order."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def is_valid_document(text: str, valid_fraction: float) -> bool:
    return valid_fraction > 0 and (document_hash(text) / 2.0**64) < valid_fraction
