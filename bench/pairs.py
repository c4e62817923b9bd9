#!/usr/bin/env python3
"""MacBERT and SOP/NSP sample building, tokens/s on ONE thread, beside megatron-core's BERT dataset.

Corpus: the peer harness's synthetic corpus (Zipf-like ids, lognormal document
lengths, ~30% WordPiece continuation pieces -> ``word_start``, sentences of
8-47 tokens as its ``mcore_bert_sop`` peer builds them), cut into segments
the way our samplers do (untimed). Timed: the transform only, from raw
segments to finished [S] fields. Tokens counted = non-pad tokens returned,
as the peer counts them. Each row is the median of ``--repeats`` passes over
all segments.

Modes: ``per_sample`` = ``t(sample, rng)`` with one ready rng (the transform
alone); ``per_sample+rng`` adds building ``default_rng([seed, epoch, index])``
per sample (what a DataLoader does); ``batch`` = ``t.batch(samples, rng)``
over ``--batch`` samples (vectorised across the batch).

    python bench/pairs.py                       # JSON lines on stdout, a table on stderr
    python bench/pairs.py --peer-harness PATH   # default ../shared/bench/peer_throughput.py
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from objectives.macbert import MacBERT, MacBERTConfig  # noqa: E402
from objectives.sample import SpecialTokens  # noqa: E402
from objectives.sentence_pairs import NSP, SOP, NSPConfig, SOPConfig  # noqa: E402
from objectives.similar_words import SimilarWords  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_HARNESS = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "bench", "peer_throughput.py"))


def load_harness(path):
    if not path or not os.path.isfile(path):
        return None
    spec = importlib.util.spec_from_file_location("peer_throughput", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class FallbackCorpus:
    """Same shape of data as the harness's corpus, for when the harness is absent."""

    def __init__(self, n_docs, vocab, mean_len, seed):
        rng = np.random.default_rng(seed)
        self.is_cont = np.zeros(vocab, bool)
        self.is_cont[5:] = rng.random(vocab - 5) < 0.3
        sigma = 0.6
        lens = np.clip(rng.lognormal(np.log(mean_len) - sigma ** 2 / 2, sigma, n_docs).astype(int), 16, 16 * mean_len)
        ranks = 1.0 / (np.arange(1, vocab - 4) + 2.7) ** 1.1
        p = ranks / ranks.sum()
        self.docs = [rng.choice(np.arange(5, vocab), size=int(n), p=p).astype(np.int64) for n in lens]
        self.n_tokens = int(sum(len(d) for d in self.docs))


def segments(corpus, width, seed, first_regular):
    """Each document cut into consecutive segments of <= width tokens (ids shifted past our reserved range)."""
    rng = np.random.default_rng(seed + 7)
    out = []
    docs = corpus.docs
    for di, d in enumerate(docs):
        ids = (d + first_regular).astype(np.int32)
        ws = ~corpus.is_cont[d]
        # sentences of 8..47 tokens, as the peer's indexed dataset is built
        ss = np.zeros(len(d), bool)
        pos = 0
        while pos < len(d):
            ss[pos] = True
            pos += int(rng.integers(8, 48))
        other = docs[(di + 1) % len(docs)]
        o_ids = (other + first_regular).astype(np.int32)
        for a in range(0, len(d), width):
            out.append({"tokens": ids[a:a + width], "word_start": ws[a:a + width],
                        "sentence_start": ss[a:a + width],
                        "random_tokens": o_ids[:width], "random_word_start": ~corpus.is_cont[other[:width]]})
    return out


def similar_table(vocab, first_regular, k=8, seed=0):
    """One-token words, each with k same-length neighbours (a table as large as the vocabulary)."""
    rng = np.random.default_rng(seed)
    ids = np.arange(first_regular, vocab + first_regular)
    nb = {(int(w),): [(int(x),) for x in rng.choice(ids, k)] for w in ids}
    return SimilarWords.from_neighbours(nb, first_regular=first_regular)


def time_passes(fn, repeats):
    """Wall and CPU (process) seconds per pass; CPU time is the steadier figure on a shared machine."""
    secs, cpu, toks = [], [], 0
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        toks = fn()
        secs.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return toks, secs, cpu


def bench_transform(name, t, segs, mode, args):
    seed, epoch = args.seed, 0
    rng0 = np.random.default_rng(seed)
    if mode == "batch":
        chunks = [segs[i:i + args.batch] for i in range(0, len(segs), args.batch)]

        def one_pass():
            n = 0
            for c in chunks:
                out = t.batch(c, rng0)
                n += int((out["kv_end"][:, 0]).sum())
            return n
    elif mode == "per_sample":
        def one_pass():
            n = 0
            for s in segs:
                n += int(t(s, rng0)["kv_end"][0])
            return n
    else:
        def one_pass():
            n = 0
            for i, s in enumerate(segs):
                n += int(t(s, np.random.default_rng([seed, epoch, i]))["kv_end"][0])
            return n
    toks, secs, cpu = time_passes(one_pass, args.repeats)
    return {"impl": name, "mode": mode, "batch": args.batch if mode == "batch" else 1,
            "seq_len": args.seq, "samples": len(segs), "tokens_per_pass": toks,
            "seconds": [round(s, 4) for s in secs], "cpu_seconds": [round(c, 4) for c in cpu],
            "tokens_per_s_median": round(toks / statistics.median(secs)),
            "tokens_per_cpu_s_median": round(toks / statistics.median(cpu))}


def bench_peer(harness, corpus, args):
    """megatron-core BERTMaskedWordPieceDataset.__getitem__ (classification_head=True: SOP-style
    segment swap + n-gram whole-word MLM), set up with the harness's own pieces exactly as its
    ``mcore_bert_sop`` peer does; timed here with the same wall + CPU clocks as ours."""
    import megatron.core
    import torch
    from megatron.core.datasets.bert_dataset import BERTMaskedWordPieceDataset
    from megatron.core.datasets.utils import Split

    torch.set_num_threads(1)
    ns = argparse.Namespace(seed=args.seed, mlm_seq=args.seq, workdir=tempfile.mkdtemp(prefix="pairs-peer-"))
    harness.init_dist(ns)
    rng = np.random.default_rng(args.seed + 7)
    prefix = os.path.join(ns.workdir, "bert_sent")
    idx = harness.build_indexed(prefix, corpus.docs, sentence_split=True, rng=rng)
    cfg = harness.mcore_masked_config(ns, corpus, geometric=False, classification_head=True)
    n_samples = int(corpus.n_tokens / (args.seq - 3) * 1.05)
    ds = BERTMaskedWordPieceDataset(idx, prefix, np.arange(len(corpus.docs)), n_samples, Split.train, cfg)

    def one_pass():
        n = 0
        for i in range(len(ds)):
            n += int((ds[i]["padding_mask"] != 0).sum())
        return n

    toks, secs, cpu = time_passes(one_pass, args.repeats)
    return {"impl": "mcore_bert_sop (peer)", "peer_impl": "megatron.core.datasets.bert_dataset."
            "BERTMaskedWordPieceDataset.__getitem__", "version": "megatron-core " + megatron.core.__version__,
            "mode": "per_sample", "batch": 1, "seq_len": args.seq, "samples": len(ds), "tokens_per_pass": toks,
            "seconds": [round(x, 4) for x in secs], "cpu_seconds": [round(c, 4) for c in cpu],
            "tokens_per_s_median": round(toks / statistics.median(secs)),
            "tokens_per_cpu_s_median": round(toks / statistics.median(cpu))}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=2000)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--mean-len", type=int, default=600)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--modes", default="batch,per_sample,per_sample+rng")
    ap.add_argument("--impls", default="macbert,sop_mlm,sop_macbert,sop_pairs_only,nsp_mlm")
    ap.add_argument("--peer-harness", default=DEFAULT_HARNESS,
                    help="path of peer_throughput.py; the mcore_bert_sop peer is skipped if absent")
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--min-tokens", type=int, default=0,
                    help="time only segments of at least this many tokens (e.g. 500: full-length samples)")
    args = ap.parse_args()

    harness = load_harness(args.peer_harness)
    if harness is not None:
        corpus = harness.Corpus(args.docs, args.vocab, args.mean_len, args.seed)
    else:
        corpus = FallbackCorpus(args.docs, args.vocab, args.mean_len, args.seed)
    sp = SpecialTokens()
    V = args.vocab + sp.first_regular
    print(json.dumps({"corpus": {"docs": args.docs, "vocab": args.vocab, "tokens": corpus.n_tokens,
                                 "harness": args.peer_harness if harness else None, "min_tokens": args.min_tokens},
                      "python": sys.version.split()[0], "numpy": np.__version__, "threads": 1}), flush=True)
    table = similar_table(args.vocab, sp.first_regular)
    S = args.seq
    mac_segs = [x for x in segments(corpus, S - 2, args.seed, sp.first_regular) if len(x["tokens"]) >= args.min_tokens]
    pair_segs = [x for x in segments(corpus, S - 3, args.seed, sp.first_regular) if len(x["tokens"]) >= args.min_tokens]
    builders = {
        "macbert": (lambda: MacBERT(MacBERTConfig(seq_length=S), special=sp, vocab_size=V, similar=table), mac_segs),
        "sop_mlm": (lambda: SOP(SOPConfig(seq_length=S), special=sp, vocab_size=V), pair_segs),
        "sop_macbert": (lambda: SOP(SOPConfig(seq_length=S, masking="macbert", ngram_probs=(0.4, 0.3, 0.2, 0.1)),
                                    special=sp, vocab_size=V, similar=table), pair_segs),
        "sop_pairs_only": (lambda: SOP(SOPConfig(seq_length=S, masking="none"), special=sp, vocab_size=V), pair_segs),
        "nsp_mlm": (lambda: NSP(NSPConfig(seq_length=S), special=sp, vocab_size=V), pair_segs),
    }
    rows = []
    for name in [x for x in args.impls.split(",") if x]:
        make, segs = builders[name]
        t = make()
        for mode in [m for m in args.modes.split(",") if m]:
            rec = bench_transform(name, t, segs, mode, args)
            rows.append(rec)
            print(json.dumps(rec), flush=True)

    if not args.no_peer:
        if harness is None:
            print(json.dumps({"peer": "mcore_bert_sop", "skipped": f"no harness at {args.peer_harness}"}), flush=True)
        else:
            try:
                rec = bench_peer(harness, corpus, args)
                print(json.dumps(rec), flush=True)
                rows.append(rec)
            except Exception as e:  # report and go on: the peer needs torch + megatron-core
                print(json.dumps({"peer": "mcore_bert_sop", "error": repr(e)}), flush=True)

    w = max(len(r["impl"]) for r in rows) if rows else 10
    print(f"\n{'impl':<{w}}  {'mode':<15} {'batch':>5} {'Mtok/s wall':>11} {'Mtok/s cpu':>10}", file=sys.stderr)
    for r in rows:
        print(f"{r['impl']:<{w}}  {r['mode']:<15} {r['batch']:>5} {r['tokens_per_s_median'] / 1e6:>11.2f} "
              f"{r['tokens_per_cpu_s_median'] / 1e6:>10.2f}", file=sys.stderr)


if __name__ == "__main__":
    main()
