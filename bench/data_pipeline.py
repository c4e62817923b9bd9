"""Data pipeline throughput, as JSON lines.

    python bench/data_pipeline.py [--max-bytes 2000000] [--copies 6] [--seconds 1.5]

1. tokenisation (sentence split + sentencepiece encode + word starts) of the
   embedded stdlib code corpus with 1 and 2 worker processes: tokens/s in total
   and per worker;
2. sample reading from the megatron indexed dataset (mmap): PackedContextSampler
   and SegmentSampler / SegmentPairSampler, tokens/s in one process, over the
   prepared corpus and over a larger synthetic one, in batches of ``--batch``
   samples (``sampler.read``, as training reads them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from ptobj.data_pipeline.build import encode_documents, prepare_corpus  # noqa: E402
from ptobj.data_pipeline.config import CorpusConfig, TokenizerConfig  # noqa: E402
from ptobj.data_pipeline.corpus import open_corpus  # noqa: E402
from ptobj.data_pipeline.indexed import SplitWriter, TokenData  # noqa: E402
from ptobj.data_pipeline.samplers import PackedContextSampler, SegmentPairSampler, SegmentSampler  # noqa: E402


def emit(**row):
    row.setdefault("cpu_count", os.cpu_count())
    print(json.dumps(row), flush=True)


def bench_tokenise(prepared, corpus_cfg, workers_list, repeats, copies):
    """The corpus ``copies`` times over, so the timed work (pool start included) is seconds long."""
    docs = list(open_corpus(corpus_cfg).documents()) * copies
    for workers in workers_list:
        best = None
        for _ in range(repeats):
            t = time.perf_counter()
            n = sum(len(c["tokens"]) for c in encode_documents(
                docs, prepared.tokenizer, corpus_cfg.sentence_mode, valid_fraction=0.0, workers=workers,
                chunk_documents=8))
            dt = time.perf_counter() - t
            best = dt if best is None else min(best, dt)
        emit(bench="tokenise", corpus=corpus_cfg.source, documents=len(docs), chars=sum(map(len, docs)),
             tokens=n, workers=workers, seconds=round(best, 3), tokens_per_s=round(n / best),
             tokens_per_s_per_worker=round(n / best / workers))


def bench_read(name, sampler, seconds, corpus_label, batch):
    """Consecutive batches of one epoch (its order is built once, before timing)."""
    n = len(sampler)
    sampler.read([0], [0])
    tokens = count = 0
    t = time.perf_counter()
    while time.perf_counter() - t < seconds:
        first = count % max(n - batch, 1)
        b = sampler.read(np.zeros(batch, np.int64), np.arange(first, first + min(batch, n)))
        tokens += sum(int(b[k.removesuffix("tokens") + "length"].sum()) if k.removesuffix("tokens") + "length" in b
                      else b[k].size for k in b if k.endswith("tokens"))
        count += min(batch, n)
    dt = time.perf_counter() - t
    emit(bench="read", sampler=name, corpus=corpus_label, batch=batch, samples=count, tokens=tokens, seconds=round(dt, 3),
         samples_per_s=round(count / dt), tokens_per_s=round(tokens / dt), us_per_sample=round(dt / count * 1e6, 2))


def synthetic(prefix, n_tokens, seed=0):
    rng = np.random.default_rng(seed)
    w = SplitWriter(prefix, vocab_size=32000)
    left = n_tokens
    while left > 0:
        sent = rng.integers(5, 60, size=int(rng.integers(3, 80)))
        toks = rng.integers(16, 32000, size=int(sent.sum())).astype(np.int32)
        w.add_document(toks, (rng.random(toks.size) < 0.7).astype(np.uint8), sent)
        left -= toks.size
    w.finalize()
    return TokenData.open(prefix)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-bytes", type=int, default=2_000_000)
    ap.add_argument("--vocab-size", type=int, default=4000)
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("--synthetic-tokens", type=int, default=20_000_000)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--copies", type=int, default=6, help="tokenise the corpus this many times over")
    ap.add_argument("--batch", type=int, default=32, help="samples per read")
    a = ap.parse_args()
    emit(bench="machine", python=platform.python_version(), platform=platform.platform())
    with tempfile.TemporaryDirectory() as tmp:
        cfg = CorpusConfig(source="stdlib-code", max_bytes=a.max_bytes, valid_fraction=0.0)
        t = time.perf_counter()
        prepared = prepare_corpus(cfg, TokenizerConfig(vocab_size=a.vocab_size), Path(tmp) / "out", workers=1)
        m = prepared.manifest
        emit(bench="prepare", corpus=cfg.source, seconds=round(time.perf_counter() - t, 3),
             tokenizer_seconds=m["seconds"]["tokenizer"], encode_seconds=m["seconds"]["encode"],
             documents=m["splits"]["train"]["documents"], sentences=m["splits"]["train"]["sentences"],
             tokens=m["splits"]["train"]["tokens"], vocab_size=prepared.tokenizer.vocab_size)
        bench_tokenise(prepared, cfg, a.workers, a.repeats, a.copies)
        datasets = {"stdlib-code": prepared.train}
        if a.synthetic_tokens:
            datasets["synthetic"] = synthetic(str(Path(tmp) / "synthetic"), a.synthetic_tokens)
        for label, data in datasets.items():
            for S in (512, 2048, 8192):
                if data.num_tokens > 4 * S:
                    bench_read(f"PackedContextSampler(S={S})", PackedContextSampler(data, S), a.seconds, label, a.batch)
            for n in (128, 512):
                bench_read(f"SegmentSampler(max_tokens={n})", SegmentSampler(data, n), a.seconds, label, a.batch)
            bench_read("SegmentPairSampler(max_tokens=512)", SegmentPairSampler(data, 512), a.seconds, label, a.batch)


if __name__ == "__main__":
    main()
