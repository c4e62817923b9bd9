#!/usr/bin/env python3
"""Throughput of the masking objectives, side by side with their peers, one thread.

    python bench/masking.py                       # ours + peers, JSON lines on stdout
    python bench/masking.py --peers none          # ours only
    python bench/masking.py --docs 2000           # the peer harness's default corpus size

Every line measures the same token blocks: the peer harness's synthetic corpus
(``Corpus`` from ``--peer-harness``, default ``../shared/bench/peer_throughput.py``
relative to the repository root) cut into ``[CLS] body [SEP]`` blocks of
``--seq`` tokens. Our transforms take the bodies (ids shifted past our reserved
range, word starts from the corpus's "##" marks) and emit the full contract
fields (tokens, labels, loss_mask, position_ids, segment_ids, kv_start, kv_end,
plus SBO fields for SpanBERT) for the same number of tokens. ``core`` lines time
only what the peers produce (corrupted ids + labels). Peers run through the
harness's own functions: transformers' DataCollatorForLanguageModeling (token
and whole-word) and megatron-core's _create_masked_lm_predictions (BERT n-gram
and T5 geometric settings). Without the harness, a local Zipf corpus is used and
peers are skipped.

Throughput = tokens per wall-clock second, median of ``--repeats`` passes over
all blocks (``cpu_tokens_per_s_median`` uses process CPU time: on a shared
machine it is the steadier figure).
"""

import os

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from objectives import masking  # noqa: E402
from objectives.mlm import MLM, MLMConfig, body_to_output  # noqa: E402
from objectives.sample import SpecialTokens  # noqa: E402
from objectives.spanbert import SpanBERT, SpanBERTConfig  # noqa: E402
from objectives.unilm import UniLM, UniLMConfig  # noqa: E402

SP = SpecialTokens()
PEER_SPECIALS = 5          # the harness reserves ids 0..4 ([PAD] [UNK] [CLS] [SEP] [MASK])
PEERS = ("hf5_mlm", "hf5_wwm_offsets", "mcore_ngram", "mcore_geometric")


def load_harness(path: Path):
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("peer_throughput", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class LocalCorpus:
    """Fallback when the harness is absent: Zipf ids, 30% continuation pieces."""

    def __init__(self, n_docs, vocab, mean_len, seed):
        g = np.random.default_rng(seed)
        ranks = np.arange(1, vocab - PEER_SPECIALS + 1, dtype=np.float64)
        p = 1 / (ranks + 2.7) ** 1.1
        ids = g.permutation(np.arange(PEER_SPECIALS, vocab))
        lens = np.clip(g.lognormal(np.log(mean_len) - 0.18, 0.6, n_docs).astype(int), 16, 16 * mean_len)
        self.docs = [ids[g.choice(ids.size, n, p=p / p.sum())] for n in lens]
        self.is_cont = np.zeros(vocab, bool)
        self.is_cont[PEER_SPECIALS:] = g.random(vocab - PEER_SPECIALS) < 0.3
        self.n_tokens = int(sum(map(len, self.docs)))

    def mlm_blocks(self, seq_len):
        flat = np.concatenate(self.docs)
        body = seq_len - 2
        n = len(flat) // body
        out = np.empty((n, seq_len), np.int64)
        out[:, 0], out[:, -1] = 2, 3
        out[:, 1:-1] = flat[: n * body].reshape(n, body)
        return out


def timed(fn, repeats):
    wall, cpu = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return wall, cpu


def emit(name, impl, config, tokens, wall, cpu, extra=None):
    rec = {"peer": name, "impl": impl, "config": config, "tokens_per_pass": tokens,
           "seconds": [round(s, 4) for s in wall],
           "tokens_per_s_median": round(tokens / statistics.median(wall)),
           "cpu_tokens_per_s_median": round(tokens / statistics.median(cpu))}
    rec.update(extra or {})
    print(json.dumps(rec), flush=True)


def core_mask(rng, body, ws, n, S, vocab, length_probs, per_span):
    """Only what the peers produce: corrupted [B, S] ids and labels."""
    B, W = body.shape
    spans = masking.choose_span_set(rng, ws, length_probs=length_probs, budget_tokens=0.15 * n, lengths=n)
    pos_b, span = spans.positions()
    pos = body_to_output(pos_b, W, S)
    ids = np.empty((B, S), np.int32)
    ids[:, 1:1 + W] = body
    ids[:, 0], ids[:, -1] = SP.cls, SP.sep
    labels = np.full((B, S), -100, np.int32)
    labels.reshape(-1)[pos] = ids.reshape(-1)[pos]
    act = masking.draw_actions(rng, span, len(spans), per_span=per_span)
    masking.corrupt_positions(rng, ids.reshape(-1), pos, act, mask_id=SP.mask, low=SP.first_regular, high=vocab)
    return ids, labels


def run_ours(args, body, ws, vocab):
    B, W = body.shape
    S = W + 2
    n = np.full(B, W)
    toks = B * S
    bs = args.batch
    geo = masking.geometric_length_probs(0.2, 10)
    unilm_probs = UniLMConfig().length_probs

    cores = [
        ("ours_core_token", "token", np.ones_like(ws), (1.0,), False),
        ("ours_core_whole_word", "whole word", ws, (1.0,), False),
        ("ours_core_ngram", "whole-word n-grams 1..3 (1/n weights, as mcore_ngram)", ws,
         masking.ngram_length_probs([1, 1 / 2, 1 / 3]), False),
        ("ours_core_geometric", "whole-word geometric p=0.2 max 10 (SpanBERT)", ws, geo, True),
        ("ours_core_unilm_ngram", "token n-grams 80/10/10% uni/bi/tri (UniLM)", np.ones_like(ws), unilm_probs, False),
    ]
    for name, what, grid, probs, per_span in cores:
        def one_pass():
            rng = np.random.default_rng(args.seed)
            for i in range(0, B, bs):
                core_mask(rng, body[i:i + bs], grid[i:i + bs], n[i:i + bs], S, vocab, probs, per_span)
        ids, labels = core_mask(np.random.default_rng(0), body[:bs], grid[:bs], n[:bs], S, vocab, probs, per_span)
        wall, cpu = timed(one_pass, args.repeats)
        emit(name, "objectives.masking choose_span_set + draw_actions + corrupt_positions (ids + labels)",
             {"seq_len": S, "batch": bs, "masking": what, "mask_rate": 0.15}, toks, wall, cpu,
             {"masked_fraction_first_batch": round(float((labels >= 0).mean()), 4)})

    transforms = [
        ("ours_mlm_token", MLM(MLMConfig(seq_length=S), special=SP, vocab_size=vocab), "mlm"),
        ("ours_mlm_whole_word", MLM(MLMConfig(seq_length=S, whole_word=True), special=SP, vocab_size=vocab), "mlm"),
        ("ours_spanbert", SpanBERT(SpanBERTConfig(seq_length=S), special=SP, vocab_size=vocab), "mlm"),
        ("ours_unilm", UniLM(UniLMConfig(seq_length=S), special=SP, vocab_size=vocab), "unilm"),
    ]
    for name, t, kind in transforms:
        def call(rng, lo, hi):
            if kind == "unilm":
                return t.batch_arrays(body[lo:hi], n[lo:hi], rng, word_start=ws[lo:hi])
            return t.batch_arrays(body[lo:hi], ws[lo:hi], n[lo:hi], rng)

        def batch_pass():
            rng = np.random.default_rng(args.seed)
            for i in range(0, B, bs):
                call(rng, i, i + bs)
        out = call(np.random.default_rng(0), 0, bs)
        wall, cpu = timed(batch_pass, args.repeats)
        emit(name, f"{type(t).__name__}.batch_arrays (all contract fields)",
             {"seq_len": S, "batch": bs, **{k: v for k, v in vars(t.config).items() if k != "seq_length"}},
             toks, wall, cpu, {"masked_fraction_first_batch": round(float(out["loss_mask"].mean()), 4)})

        samples = [{"tokens": body[i], "word_start": ws[i]} for i in range(min(B, args.per_sample_rows))]

        def sample_pass():
            rng = np.random.default_rng(args.seed)
            for s in samples:
                t(s, rng)
        wall, cpu = timed(sample_pass, args.repeats)
        emit(name + "_per_sample", f"{type(t).__name__}.__call__ (one sample at a time)",
             {"seq_len": S, "rows": len(samples)}, len(samples) * S, wall, cpu)


def add_cpu_clock(harness):
    """Make the harness's own timing loop also record process CPU time, and its JSON
    lines carry ``cpu_tokens_per_s_median`` like ours (the peers' code is untouched)."""
    last_cpu = {}
    run_passes, emit_line = harness.run_passes, harness.emit

    def run_passes_cpu(fn, repeats):
        cpu = []

        def clocked():
            c0 = time.process_time()
            n = fn()
            cpu.append(time.process_time() - c0)
            return n
        toks, secs, tps = run_passes(clocked, repeats)
        last_cpu["tps"] = round(toks / statistics.median(cpu))
        return toks, secs, tps

    def emit_cpu(peer, impl, version, config, toks, secs, tps, extra=None):
        extra = dict(extra or {}, cpu_tokens_per_s_median=last_cpu.pop("tps", None))
        emit_line(peer, impl, version, config, toks, secs, tps, extra)

    harness.run_passes, harness.emit = run_passes_cpu, emit_cpu


def run_peers(args, harness, corpus, blocks, peers):
    add_cpu_clock(harness)
    ns = SimpleNamespace(seed=args.seed, repeats=args.repeats, mlm_batch=args.peer_batch, mlm_seq=blocks.shape[1],
                         workdir=args.workdir, vocab_path=os.path.join(args.workdir, "vocab.txt"))
    harness.write_vocab(corpus, ns.vocab_path)
    for p in peers:
        try:
            if p in ("hf5_mlm", "hf5_wwm_offsets"):
                harness.peer_hf5(ns, corpus, blocks, p)
            elif p in ("mcore_ngram", "mcore_geometric"):
                harness.peer_mcore_direct(ns, corpus, blocks, geometric=p == "mcore_geometric")
            else:
                print(json.dumps({"peer": p, "error": "unknown peer"}), flush=True)
        except Exception as e:   # a missing peer library must not stop the run
            print(json.dumps({"peer": p, "skipped": repr(e)[:300]}), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peer-harness", default=str(ROOT / ".." / "shared" / "bench" / "peer_throughput.py"))
    ap.add_argument("--peers", default=",".join(PEERS), help=f"comma list of {PEERS}, or 'none'")
    ap.add_argument("--docs", type=int, default=600)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--mean-len", type=int, default=600)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=256, help="rows per call of our batch form")
    ap.add_argument("--peer-batch", type=int, default=32, help="rows per HF collator call (harness default)")
    ap.add_argument("--per-sample-rows", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="bench-masking-")

    harness = load_harness(Path(args.peer_harness).resolve())
    if harness is not None:
        corpus = harness.Corpus(args.docs, args.vocab, args.mean_len, args.seed)
    else:
        corpus = LocalCorpus(args.docs, args.vocab, args.mean_len, args.seed)
    blocks = corpus.mlm_blocks(args.seq)
    peer_body = blocks[:, 1:-1]
    shift = SP.first_regular - PEER_SPECIALS                   # peer regular ids start at 5, ours at 16
    body = (peer_body + shift).astype(np.int32)
    ws = ~corpus.is_cont[peer_body]
    vocab = args.vocab + shift
    print(json.dumps({"corpus": {"source": "peer harness" if harness else "local fallback", "docs": args.docs,
                                 "tokens": corpus.n_tokens, "blocks": int(blocks.shape[0]), "seq_len": args.seq,
                                 "seed": args.seed}, "python": sys.version.split()[0], "threads": 1,
                      "numpy": np.__version__}), flush=True)
    run_ours(args, body, ws, vocab)
    peers = [] if args.peers == "none" else [p.strip() for p in args.peers.split(",") if p.strip()]
    if peers and harness is None:
        print(json.dumps({"peers": peers, "skipped": f"no harness at {args.peer_harness}"}), flush=True)
    elif peers:
        run_peers(args, harness, corpus, blocks, peers)


if __name__ == "__main__":
    main()
