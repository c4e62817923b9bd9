"""Corpus -> tokenizer -> indexed dataset, cached by a key over the corpus's
identity and both configs.

``prepare_corpus(corpus_cfg, tokenizer_cfg, out_dir)`` is the one call a
training recipe needs. Output goes to ``out_dir/<key>/``, built under a
temporary name and renamed when complete, so a crash leaves no half-written
dataset; a second call with the same inputs reuses it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import itertools
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np

from ptobj.extras import require

# the megatron indexed datasets need torch; name [train] (which includes [data]) at once
require("train", "torch", "megatron", "sentencepiece", by=__name__)

from ptobj.data_pipeline.config import CorpusConfig, TokenizerConfig
from ptobj.data_pipeline.corpus import (Corpus, CorpusError, document_hash, file_identity, hash_bound, is_held_out,
                                        open_corpus)
from ptobj.data_pipeline.encode import encode_documents
from ptobj.data_pipeline.indexed import IndexedDataError, SplitWriter, TokenData, split_files
from ptobj.data_pipeline.tokenizer import SentencePieceTokenizer, vocabulary_shortfall

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TOKENIZER_FILE = "tokenizer.model"


@dataclass
class PreparedCorpus:
    """A prepared corpus: the tokenizer and the train / held-out token data.

    ``valid`` is None when the held-out fraction selected no document.
    """

    path: Path
    tokenizer: SentencePieceTokenizer
    train: TokenData
    valid: TokenData | None
    manifest: dict
    reused: bool = False


# ---- caching ---------------------------------------------------------------------------
def cache_key(corpus: Corpus, corpus_cfg: CorpusConfig, tok_cfg: TokenizerConfig) -> str:
    tok_identity = dataclasses.asdict(tok_cfg)
    tok_identity.pop("exact_vocab_size")  # a check on the result, checked again on reuse
    if tok_cfg.model_path:
        model = Path(tok_cfg.model_path)
        if not model.is_file():
            raise CorpusError(f"tokenizer.model_path: {model}: {'a folder' if model.is_dir() else 'no such file'}; "
                              "give a sentencepiece .model file, or leave model_path empty to train a tokenizer")
        tok_identity = {"model": file_identity([model.resolve()])}
    payload = json.dumps(
        {"v": FORMAT_VERSION, "corpus": corpus.identity, "corpus_cfg": dataclasses.asdict(corpus_cfg),
         "tokenizer": tok_identity}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def open_prepared(path: str | os.PathLike) -> PreparedCorpus:
    """Open a prepared corpus directory (``out_dir/<key>/`` of :func:`prepare_corpus`): its
    tokenizer, train and held-out token data and manifest. Errors name the missing file."""
    return _load(Path(path), reused=True)


def _load(path: Path, reused: bool) -> PreparedCorpus:
    if not (path / MANIFEST).is_file():
        raise FileNotFoundError(f"{path}: not a prepared corpus (no {MANIFEST}); prepare_corpus writes one")
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except ValueError as exc:
        raise ValueError(f"{path / MANIFEST}: damaged ({exc})") from exc
    tokenizer = SentencePieceTokenizer.load(path / TOKENIZER_FILE)
    train = TokenData.open(path / "train")
    valid = TokenData.open(path / "valid") if manifest["splits"].get("valid") else None
    return PreparedCorpus(path, tokenizer, train, valid, manifest, reused)


def held_out_bound(corpus: Corpus, cfg: CorpusConfig) -> int:
    """The content-hash bound of the held-out split: ``valid_documents`` documents exactly (the
    smallest hashes among the usable documents, ranked in one extra pass), else ``valid_fraction``."""
    if not cfg.valid_documents:
        return hash_bound(cfg.valid_fraction)
    usable = (document_hash(d) for d in _limited(corpus.documents(), cfg)
              if cfg.usable(d))
    smallest = heapq.nsmallest(cfg.valid_documents + 1, usable)
    if len(smallest) <= cfg.valid_documents:
        raise CorpusError(f"corpus.valid_documents={cfg.valid_documents}: corpus {corpus.name} has only "
                          f"{len(smallest)} usable document(s), which would leave none to train on")
    return smallest[cfg.valid_documents - 1] + 1


def _get_tokenizer(corpus: Corpus, corpus_cfg: CorpusConfig, tok_cfg: TokenizerConfig, save_to: Path,
                   valid_bound: int):
    if tok_cfg.model_path:
        try:
            tok = SentencePieceTokenizer.load(tok_cfg.model_path)
        except (OSError, ValueError) as exc:
            raise CorpusError(f"tokenizer.model_path: {exc}") from None
        tok.save(save_to)
        return tok
    train_docs = (d for d in _limited(corpus.documents(), corpus_cfg)
                  if corpus_cfg.usable(d) and not is_held_out(d, valid_bound))
    first = next(train_docs, None)
    if first is None:
        raise CorpusError(f"corpus {corpus.name} is empty: no non-blank training document to train a tokenizer on")
    return SentencePieceTokenizer.train(
        itertools.chain([first], train_docs), tok_cfg.vocab_size, model_path=save_to, model_type=tok_cfg.model_type,
        character_coverage=tok_cfg.character_coverage, add_dummy_prefix=tok_cfg.add_dummy_prefix,
        max_sentences=tok_cfg.max_training_sentences, exact_vocab_size=tok_cfg.exact_vocab_size)


def check_vocabulary(prepared: PreparedCorpus, tok_cfg: TokenizerConfig) -> None:
    """A reused directory whose tokenizer has fewer pieces than asked: log it again, or
    fail with ``exact_vocab_size`` (a fresh one was checked while training)."""
    if tok_cfg.model_path:
        return
    asked, got = tok_cfg.vocab_size, prepared.tokenizer.num_pieces
    if got < asked and tok_cfg.exact_vocab_size:
        raise ValueError(f"tokenizer.vocab_size={asked} with exact_vocab_size: the prepared corpus "
                         f"{prepared.path} has {got} pieces; ask for fewer or train on more text")
    note = vocabulary_shortfall(asked, got)
    if note:
        print(f"[data_pipeline] {note} ({prepared.path})", file=sys.stderr)


def _limited(docs: Iterator[str], cfg: CorpusConfig) -> Iterator[str]:
    return islice(docs, cfg.max_documents) if cfg.max_documents else docs


def prepare_corpus(corpus_cfg: CorpusConfig, tokenizer_cfg: TokenizerConfig, out_dir: str | os.PathLike, *,
                   workers: int = 1, chunk_documents: int = 64, progress: bool = False,
                   force: bool = False) -> PreparedCorpus:
    """Prepare (or reuse) ``out_dir/<key>/`` and open it.

    Empty documents (blank, or shorter than ``corpus_cfg.min_document_chars``) are
    skipped and counted in the manifest (``skipped_documents``); a corpus with no
    usable document is an error naming the corpus.
    """
    out_dir = Path(out_dir)
    corpus = open_corpus(corpus_cfg, cache_dir=out_dir / ".hf-cache")
    key = cache_key(corpus, corpus_cfg, tokenizer_cfg)
    final = out_dir / key
    if final.is_dir() and not force:
        try:
            prepared = _load(final, reused=True)
        except (OSError, ValueError, KeyError) as exc:  # damaged cache: rebuild it
            print(f"[data_pipeline] cached dataset {final} unusable ({exc}); rebuilding")
            shutil.rmtree(final, ignore_errors=True)
        else:
            check_vocabulary(prepared, tokenizer_cfg)
            return prepared
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".tmp-{key}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        manifest = _build(corpus, corpus_cfg, tokenizer_cfg, tmp, workers, chunk_documents, progress)
        manifest["key"] = key
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if final.exists() and not force:
            # another process finished the same key first: keep its copy (it may be in use)
            shutil.rmtree(tmp)
            prepared = _load(final, reused=True)
            check_vocabulary(prepared, tokenizer_cfg)
            return prepared
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _load(final, reused=False)


def _build(corpus, corpus_cfg, tok_cfg, tmp: Path, workers, chunk_documents, progress) -> dict:
    t0 = time.perf_counter()
    bound = held_out_bound(corpus, corpus_cfg)
    tokenizer = _get_tokenizer(corpus, corpus_cfg, tok_cfg, tmp / TOKENIZER_FILE, bound)
    t_tok = time.perf_counter() - t0
    writers = {"train": SplitWriter(tmp / "train", tokenizer.vocab_size),
               "valid": SplitWriter(tmp / "valid", tokenizer.vocab_size)}
    skipped = chars = 0
    chunks = encode_documents(_limited(corpus.documents(), corpus_cfg), tokenizer, corpus_cfg.sentence_mode,
                              valid_bound=bound, min_chars=corpus_cfg.min_document_chars,
                              max_chars=corpus_cfg.max_document_chars,
                              workers=workers, chunk_documents=chunk_documents)
    bar = None
    if progress:
        require("data", "tqdm", by=__name__)
        from tqdm import tqdm
        bar = tqdm(desc=f"tokenising {corpus.name}", unit="doc")
    t1 = time.perf_counter()
    for chunk in chunks:
        skipped += chunk["skipped"]
        chars += chunk["chars"]
        tok_off = np.concatenate([[0], np.cumsum(chunk["sentence_lengths"])])
        sent_off = np.concatenate([[0], np.cumsum(chunk["doc_sentences"])])
        for d in range(len(chunk["doc_sentences"])):
            s0, s1 = sent_off[d], sent_off[d + 1]
            a, b = tok_off[s0], tok_off[s1]
            writer = writers["valid" if chunk["valid"][d] else "train"]
            writer.add_document(chunk["tokens"][a:b], chunk["word_start"][a:b], chunk["sentence_lengths"][s0:s1])
        if bar is not None:
            bar.update(len(chunk["doc_sentences"]) + chunk["skipped"])
    if bar is not None:
        bar.close()
    t_encode = time.perf_counter() - t1
    if writers["train"].documents == 0:
        raise CorpusError(
            f"corpus {corpus.name} has no usable training document ({skipped} empty document(s) skipped, "
            f"{writers['valid'].documents} held out)")
    held = writers["valid"].documents
    if corpus_cfg.holds_out and held < corpus_cfg.min_valid_documents:
        asked = (f"valid_documents={corpus_cfg.valid_documents}" if corpus_cfg.valid_documents else
                 f"valid_fraction={corpus_cfg.valid_fraction} of {held + writers['train'].documents} documents")
        raise CorpusError(f"corpus {corpus.name}: the held-out split has {held} document(s) ({asked}), below "
                          f"corpus.min_valid_documents={corpus_cfg.min_valid_documents}; raise valid_fraction or "
                          "set corpus.valid_documents")
    splits = {}
    for name, w in writers.items():
        w.finalize()
        if w.documents == 0:
            for f in split_files(w.prefix):
                f.unlink(missing_ok=True)
            splits[name] = None
            continue
        splits[name] = {"documents": w.documents, "sentences": w.sentences, "tokens": w.num_tokens,
                        "files": [f.name for f in split_files(w.prefix)]}
    return {
        "format_version": FORMAT_VERSION,
        "corpus": dataclasses.asdict(corpus_cfg),
        "tokenizer": dataclasses.asdict(tok_cfg),
        "vocab_size": tokenizer.vocab_size,
        # sentencepiece pieces asked for and trained (asked is None for a loaded model)
        "tokenizer_pieces": {"asked": None if tok_cfg.model_path else tok_cfg.vocab_size,
                             "got": tokenizer.num_pieces},
        "splits": splits,
        # what went where: documents whose content hash lies below the bound are held out
        "held_out": {"rule": ("documents" if corpus_cfg.valid_documents else
                              "fraction" if corpus_cfg.valid_fraction else "none"),
                     "valid_documents": corpus_cfg.valid_documents, "valid_fraction": corpus_cfg.valid_fraction,
                     "hash_bound": str(bound), "documents": held, "train_documents": writers["train"].documents},
        "skipped_documents": skipped,
        "characters": chars,
        "workers": workers,
        "seconds": {"tokenizer": round(t_tok, 3), "encode": round(t_encode, 3),
                    "total": round(time.perf_counter() - t0, 3)},
    }
