"""Command line: prepare a corpus into megatron .bin/.idx files.

    ptobj prepare --config prep.yaml
    ptobj prepare --corpus stdlib-prose --vocab-size 8000 --out data/prose --workers 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import warnings

from ptobj.data_pipeline.config import CorpusConfig, PrepareConfig, TokenizerConfig, load_prepare_config


def parse_args(argv=None, prog: str = "ptobj prepare") -> PrepareConfig:
    p = argparse.ArgumentParser(prog=prog, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML with corpus:, tokenizer:, out:, workers: (flags override it)")
    p.add_argument("--corpus", help="jsonl/json/parquet/txt file, 'stdlib-code', 'stdlib-prose' or a hub dataset")
    p.add_argument("--text-field", help="column holding the text (default: text)")
    p.add_argument("--split", help="hub datasets: split to read (default: train)")
    p.add_argument("--subset", help="hub datasets: configuration name")
    p.add_argument("--sentences", choices=["auto", "prose", "code"], help="sentence splitter")
    p.add_argument("--valid-fraction", type=float, help="held-out fraction, by document hash")
    p.add_argument("--max-bytes", type=int, help="cap on the embedded stdlib corpora")
    p.add_argument("--vocab-size", type=int, help="sentencepiece pieces to train")
    p.add_argument("--exact-vocab-size", action="store_true",
                   help="fail when the corpus cannot fill --vocab-size pieces (default: keep fewer, say so)")
    p.add_argument("--tokenizer-model", help="load this sentencepiece model instead of training one")
    p.add_argument("--out", help="output folder (the dataset goes to OUT/<cache key>/)")
    p.add_argument("--workers", type=int, help="tokenising processes")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    overrides = {k: v for k, v in {
        "corpus.source": a.corpus, "corpus.text_field": a.text_field,
        "corpus.split": a.split, "corpus.subset": a.subset, "corpus.sentences": a.sentences,
        "corpus.valid_fraction": a.valid_fraction, "corpus.max_bytes": a.max_bytes,
        "tokenizer.vocab_size": a.vocab_size, "tokenizer.model_path": a.tokenizer_model,
        "tokenizer.exact_vocab_size": True if a.exact_vocab_size else None,
        "out": a.out, "workers": a.workers, "progress": False if a.no_progress else None,
    }.items() if v is not None}
    if a.config:
        return load_prepare_config(a.config, overrides)
    sections: dict = {"corpus": {}, "tokenizer": {}}
    for key, value in overrides.items():
        section, _, name = key.rpartition(".")
        (sections[section] if section else sections).__setitem__(name, value)
    return PrepareConfig(corpus=CorpusConfig(**sections.pop("corpus")),
                         tokenizer=TokenizerConfig(**sections.pop("tokenizer")), **sections)


def main(argv = None, prog: str = "ptobj prepare") -> int:
    warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex.*")
    try:
        cfg = parse_args(argv, prog)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from ptobj.data_pipeline.build import prepare_corpus

    t0 = time.perf_counter()
    try:
        prepared = prepare_corpus(cfg.corpus, cfg.tokenizer, cfg.out, workers=cfg.workers,
                                  chunk_documents=cfg.chunk_documents, progress=cfg.progress)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    m = prepared.manifest
    summary = {
        "path": str(prepared.path),
        "reused_cache": prepared.reused,
        "files": sorted(p.name for p in prepared.path.iterdir()),
        "vocab_size": prepared.tokenizer.vocab_size,
        "tokenizer_pieces": {"asked": None if cfg.tokenizer.model_path else cfg.tokenizer.vocab_size,
                             "got": prepared.tokenizer.num_pieces},
        "splits": m["splits"],
        "skipped_empty_documents": m["skipped_documents"],
        "seconds": round(time.perf_counter() - t0, 3),
        "build_seconds": m["seconds"],
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
