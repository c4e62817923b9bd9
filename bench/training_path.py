#!/usr/bin/env python3
"""Throughput of the data path training reads, side by side with the peers, one thread.

The training path is what ``ptobj/recipes/train.py`` runs per step on one rank:
``split_rows(collate(dataset.read(positions)), micro_batch_size)`` = the
sampler's batched read of the step's micro-batches + the objective's transform
on them (rows keyed by (seed, epoch, index)) + collate to torch + the split
into micro-batches, with the dataset, transform, sampler, micro-batch size and
gradient accumulation built from the recipe YAMLs exactly as ``ptobj.recipes.engine.data``
builds them. One pass reads every sample of epoch 0, a step at a time.

Peers run in the same process, interleaved with our lines, with the same
clocks: the closures of ``peer_throughput.py`` and the helpers of
``training_path_vs_peers.py`` from the shared peer folder (``--peer-dir``,
default ``../shared/bench``), imported at run time: transformers'
``DataCollatorForLanguageModeling`` (token and whole-word), megatron-core's
``_create_masked_lm_predictions`` (n-gram, geometric) and
``BERTMaskedWordPieceDataset`` (SOP-style), and, given a bare git dir of
NVIDIA/Megatron-LM (``--megatron-mirror`` or ``MEGATRON_LM_GIT_DIR``),
Megatron-LM's ``GPTFIMDataset`` on the same FIM documents.

Corpora: the encoders read the harness's synthetic corpus (2000 documents,
~1.2M tokens, ~30% WordPiece continuation pieces as word starts, sentences of
8-47 tokens), the one its peers read, written as the project's indexed data.
FIM reads ``gpt_fim_350m.yaml``'s corpus (the standard library's code) prepared
by the project with a 32k sentencepiece vocabulary, at seq 2048, fim_rate 0.5.
Tokens counted: non-pad output tokens (encoders, as the peers count them) and
``tokens`` of the output (FIM).

    python bench/training_path.py                   # JSON lines on stdout, a table on stderr
    python bench/training_path.py --only train: --no-fim --repeats 3

Each line reports seconds per pass (all rounds), best and median tokens/s on the
wall clock, median tokens/s on process CPU time (steadier on a shared machine),
and the 1-minute load average at every round.
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from types import SimpleNamespace

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS",
           "RAYON_RS_NUM_CPUS"):
    os.environ.setdefault(_v, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PYTHONWARNINGS", "ignore:Transformer Engine and Apex are not installed")

import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# (line, recipe, overrides): the encoder recipes at seq --enc-seq, their own micro-batch size
ENCODERS = [
    ("mlm_token", "bert_mlm_base", []),
    ("mlm_wwm", "bert_mlm_base", ["objective.config.whole_word=true"]),
    ("spanbert", "spanbert_base", []),
    ("macbert", "macbert_base", []),
    ("sop_mlm", "albert_sop_base", []),
    ("nsp_mlm", "bert_nsp_base", []),
    ("unilm", "unilm_base", []),
]
TARGETS = {"mlm_token": 20e6, "mlm_wwm": 20e6, "spanbert": 20e6, "macbert": 10e6, "sop_mlm": 10e6,
           "nsp_mlm": 10e6, "unilm": 10e6, "fim": 10e6}


def load_module(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def loadavg():
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


class Line:
    def __init__(self, name, group, kind, fn, tokens=None, meta=None):
        self.name, self.group, self.kind, self.fn = name, group, kind, fn
        self.tokens, self.meta = tokens, meta or {}
        self.wall, self.cpu = [], []

    def once(self):
        gc.collect()
        w0, c0 = time.perf_counter(), time.process_time()
        n = self.fn()
        w, c = time.perf_counter() - w0, time.process_time() - c0
        if self.tokens is None:
            self.tokens = n
        return w, c


def recipe(name, overrides):
    from ptobj.recipes.engine.train_config import load_train_config
    return load_train_config(os.path.join(ROOT, "ptobj", "recipes", "configs", name + ".yaml"), list(overrides))


def training_path_line(name, cfg, dataset, special, count_pad):
    """One pass = ``split_rows(collate(dataset.read(positions)), mb)`` over epoch 0, a step
    (the recipe's ``grad_accum_steps`` micro-batches of ``micro_batch_size``) per read."""
    from ptobj.data_pipeline.collate import collate
    from ptobj.recipes.engine.batches import split_rows

    mb = cfg.schedule.micro_batch_size
    rows = mb * cfg.schedule.grad_accum_steps
    N = len(dataset)
    batches = [np.arange(i, min(i + rows, N)) for i in range(0, N, rows)]
    clear = getattr(dataset.transform, "clear_cache", None)

    def one_pass():
        if clear:
            clear()
        for pos in batches:
            split_rows(collate(dataset.read(pos)), mb)

    tokens = 0
    for pos in batches:            # untimed: the token count (and FIM's first encodings)
        out = dataset.read(pos)["tokens"]
        tokens += out.size if count_pad else int((out != special.pad).sum())
    meta = {"recipe": cfg.name, "seq_length": cfg.data.seq_length, "micro_batch": mb, "rows_per_read": rows,
            "samples": N, "objective": dataset.transform.__class__.__name__,
            "impl": "ptobj.recipes.engine.batches.split_rows(ptobj.data_pipeline.collate.collate(ObjectiveDataset.read(positions)))"}
    return Line(f"train:{name}", name, "train", one_pass, tokens=tokens, meta=meta)


def encoder_lines(args, harness, tpvp, special):
    from ptobj.data_pipeline.dataset import ObjectiveDataset
    from ptobj.objectives import registry
    from ptobj.recipes.engine.data import sampler_for

    corpus = harness.Corpus(args.docs, args.vocab, args.mean_len, args.seed)
    td, V, _ = tpvp.synthetic_token_data(corpus, os.path.join(args.workdir, "synthetic_train"), args.seed,
                                         special.first_regular)
    info = {"docs": args.docs, "tokens": corpus.n_tokens, "sentences": td.num_sentences, "vocab": V}
    lines = []
    for name, rname, ov in ENCODERS:
        cfg = recipe(rname, ov + [f"data.seq_length={args.enc_seq}"])
        transform = registry.build_spec(cfg.objective_spec, special=special, vocab_size=V)
        seed = cfg.schedule.seed
        ds = ObjectiveDataset(sampler_for(cfg.plan, td, seed, special), transform, seed=seed)
        line = training_path_line(name, cfg, ds, special, count_pad=False)
        line.meta["recipe_file"] = f"ptobj/recipes/configs/{rname}.yaml" + (f" {ov}" if ov else "")
        lines.append(line)
    return lines, corpus, info


def peer_lines(args, harness, tpvp, corpus):
    blocks = corpus.mlm_blocks(args.enc_seq)
    hns = SimpleNamespace(seed=args.seed, repeats=1, mlm_batch=32, mlm_seq=args.enc_seq, workdir=args.workdir,
                          vocab_path=os.path.join(args.workdir, "vocab.txt"))
    harness.write_vocab(corpus, hns.vocab_path)
    calls = [
        ("hf5_mlm", "mlm_token", lambda: harness.peer_hf5(hns, corpus, blocks, "hf5_mlm")),
        ("hf5_wwm_offsets", "mlm_wwm", lambda: harness.peer_hf5(hns, corpus, blocks, "hf5_wwm_offsets")),
        ("mcore_ngram", "mlm_wwm", lambda: harness.peer_mcore_direct(hns, corpus, blocks, geometric=False)),
        ("mcore_geometric", "spanbert", lambda: harness.peer_mcore_direct(hns, corpus, blocks, geometric=True)),
        ("mcore_bert_sop", "sop_mlm", lambda: harness.peer_mcore_bert_sop(hns, corpus)),
    ]
    lines = []
    for pname, group, call in calls:
        try:
            fn, meta = tpvp.capture_peer(harness, call)
            lines.append(Line(f"peer:{pname}", group, "peer", fn, meta=meta))
        except Exception as e:  # a peer that cannot run here is reported, not fatal
            print(json.dumps({"line": f"peer:{pname}", "error": repr(e)[:400]}), flush=True)
    return lines


def fim_lines(args, harness, tpvp):
    import torch

    from ptobj.recipes.engine.data import build_run_data
    from ptobj.recipes.engine.distributed import DistInfo

    cfg = recipe("gpt_fim_350m", [f"data.corpus.max_bytes={args.code_bytes}",
                                  f"data.cache_dir={os.path.join(args.workdir, 'prepared')}",
                                  "data.prepare_workers=1", f"data.seq_length={args.fim_seq}",
                                  f"data.tokenizer.vocab_size={args.sp_vocab}",
                                  f"data.tokenizer.max_training_sentences={args.sp_max_lines}"])
    t0 = time.perf_counter()
    rd = build_run_data(cfg, DistInfo(0, 1, 0, torch.device("cpu"), "gloo"), progress=False)
    prep_s = time.perf_counter() - t0
    tok = rd.tokenizer
    line = training_path_line("fim", cfg, rd.train, tok.special, count_pad=True)
    line.meta.update(recipe_file="ptobj/recipes/configs/gpt_fim_350m.yaml", fim_rate=rd.train.transform.config.fim_rate,
                     split_level=rd.train.transform.config.split_level, sp_vocab=tok.vocab_size)
    lines = [line]
    train = rd.prepared.train
    info = {"source": cfg.data.corpus.source, "documents": train.num_documents, "sp_tokens": train.num_tokens,
            "sp_vocab": tok.vocab_size, "prepare_s": round(prep_s, 1), "reused": rd.prepared.reused}
    if args.megatron_mirror:
        texts = [tok.decode(train.document_tokens(d).tolist()) for d in range(train.num_documents)]
        margs = SimpleNamespace(megatron_mirror=args.megatron_mirror, workdir=args.workdir, sp_vocab=args.sp_vocab)
        try:
            mlines, minfo = tpvp.megatron_fim_lines(margs, harness, texts, tok, tok.special, args.fim_seq,
                                                    cfg.schedule.micro_batch_size, cfg.schedule.seed)
            lines += [Line(m.name, "fim", "peer", m.fn, tokens=m.tokens, meta=m.meta) for m in mlines]
            info.update(minfo)
        except Exception as e:
            print(json.dumps({"line": "peer:mlm_fim", "error": repr(e)[:400]}), flush=True)
    return lines, info


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peer-dir", default=os.environ.get("PEER_DIR") or os.path.join(ROOT, "..", "shared", "bench"),
                    help="folder holding peer_throughput.py and training_path_vs_peers.py")
    ap.add_argument("--megatron-mirror", default=os.environ.get("MEGATRON_LM_GIT_DIR", ""),
                    help="bare git dir of NVIDIA/Megatron-LM (its FIM dataset is the FIM peer)")
    ap.add_argument("--workdir", default="", help="scratch folder (default: a fresh temporary one)")
    ap.add_argument("--docs", type=int, default=2000)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--mean-len", type=int, default=600)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--enc-seq", type=int, default=512)
    ap.add_argument("--fim-seq", type=int, default=2048)
    ap.add_argument("--code-bytes", type=int, default=0, help="stdlib-code bytes for FIM (0: all)")
    ap.add_argument("--sp-vocab", type=int, default=32000)
    ap.add_argument("--sp-max-lines", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    ap.add_argument("--only", default="", help="comma list of line-name substrings to keep")
    ap.add_argument("--no-fim", action="store_true")
    ap.add_argument("--no-peers", action="store_true")
    args = ap.parse_args()
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="training-path-")
    os.makedirs(args.workdir, exist_ok=True)

    import torch
    torch.set_num_threads(1)
    from ptobj.objectives.sample import SpecialTokens
    special = SpecialTokens()
    peer_dir = os.path.abspath(args.peer_dir)
    harness = load_module(os.path.join(peer_dir, "peer_throughput.py"), "peer_throughput")
    tpvp = load_module(os.path.join(peer_dir, "training_path_vs_peers.py"), "training_path_vs_peers")

    header = {"python": sys.version.split()[0], "numpy": np.__version__, "torch": torch.__version__, "threads": 1,
              "cpus": os.cpu_count(), "load_avg_1m_start": loadavg(), "repeats": args.repeats,
              "peer_dir": os.path.relpath(peer_dir, ROOT)}
    lines, corpus, header["encoder_corpus"] = encoder_lines(args, harness, tpvp, special)
    if not args.no_peers:
        lines += peer_lines(args, harness, tpvp, corpus)
    if not args.no_fim:
        fl, header["fim_corpus"] = fim_lines(args, harness, tpvp)
        lines += fl
    if args.only:
        keep = [s for s in args.only.split(",") if s]
        lines = [ln for ln in lines if any(k in ln.name for k in keep)]
    print(json.dumps(header), flush=True)

    for ln in lines:                  # warm-up
        ln.once()
    loads = []
    for r in range(args.repeats):
        loads.append(loadavg())
        for ln in lines[r % len(lines):] + lines[:r % len(lines)]:
            w, c = ln.once()
            ln.wall.append(w)
            ln.cpu.append(c)
        print(json.dumps({"round": r, "load_avg_1m": loads[-1]}), file=sys.stderr, flush=True)
    loads.append(loadavg())

    for ln in lines:
        rec = {"line": ln.name, "group": ln.group, "kind": ln.kind, "tokens_per_pass": ln.tokens,
               "seconds": [round(s, 4) for s in ln.wall], "cpu_seconds": [round(c, 4) for c in ln.cpu],
               "tokens_per_s_best": round(ln.tokens / min(ln.wall)),
               "tokens_per_s_median": round(ln.tokens / statistics.median(ln.wall)),
               "cpu_tokens_per_s_median": round(ln.tokens / statistics.median(ln.cpu))}
        if ln.kind == "train":
            rec["target_tokens_per_s"] = TARGETS.get(ln.group)
        rec.update({k: v for k, v in ln.meta.items() if k not in rec})
        print(json.dumps(rec, default=str), flush=True)
    print(json.dumps({"load_avg_1m_per_round": loads, "load_avg_1m_end": loadavg()}), flush=True)

    w = max(len(ln.name) for ln in lines)
    print(f"\n{'line':<{w}} {'best Mtok/s':>11} {'median':>8} {'cpu med':>8} {'target':>7}", file=sys.stderr)
    for ln in lines:
        target = TARGETS.get(ln.group) if ln.kind == "train" else None
        print(f"{ln.name:<{w}} {ln.tokens / min(ln.wall) / 1e6:>11.2f} {ln.tokens / statistics.median(ln.wall) / 1e6:>8.2f} "
              f"{ln.tokens / statistics.median(ln.cpu) / 1e6:>8.2f} {'' if target is None else f'{target / 1e6:.0f}':>7}",
              file=sys.stderr)


if __name__ == "__main__":
    main()
