#!/usr/bin/env python3
"""Throughput of the causal-LM and FIM transforms, one process, one thread.

Same synthetic corpus as the peer harness (its ``Corpus`` class is imported
from ``--peer-harness``); a sentencepiece model (the project's
``SentencePieceTokenizer``) is trained on that corpus's text, the documents are
encoded and packed (EOT-joined) into contexts of ``--seq + 1`` ids, like
Megatron's GPT samples. Printed, one JSON line each:

* ``causal_lm``: ``objectives.causal_lm.CausalLM`` (document-masked fields)
* ``fim_char_rate0.5`` / ``fim_char_rate1.0``: ``objectives.fim.FIM``, context
  scope, character-level cuts, spm_rate 0.5, all output fields
* ``mcore_gpt_baseline``: megatron-core ``GPTDataset._query_document_sample_shuffle_indices``
  on the same encoded documents (sampling only, no FIM), if megatron-core imports

Tokens counted per context: seq + 1 (what the peer harness counts per sample).
Peer figures (Megatron-LM GPTFIMDataset, byte-level BPE, same corpus) are in
``shared/bench/results/results_cpu2core_*.jsonl``.

    python bench/fim.py [--peer-harness ../shared/bench/peer_throughput.py] [--docs 2000]
"""

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS"):
    os.environ[_v] = "1"

import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from objectives.causal_lm import CausalLM, CausalLMConfig  # noqa: E402
from objectives.fim import FIM, FIMConfig  # noqa: E402
from objectives.sample import SpecialTokens  # noqa: E402


def load_corpus_class(path):
    if not os.path.isfile(path):
        raise SystemExit(f"peer harness not found at {path}; pass --peer-harness")
    spec = importlib.util.spec_from_file_location("peer_throughput", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.Corpus


def training_lines(texts, words_per_line=80):
    for t in texts:
        words = t.split(" ")
        for i in range(0, len(words), words_per_line):
            line = " ".join(words[i : i + words_per_line])
            if line.strip():
                yield line if i == 0 else " " + line


def pack(docs, eot, seq):
    flat = np.concatenate([np.append(d, eot) for d in docs]).astype(np.int32)
    n = (len(flat) - 1) // seq
    return [flat[i * seq : i * seq + seq + 1] for i in range(n)]


def time_passes(fn, repeats):
    """Wall and CPU seconds per pass (CPU time is the steadier figure on a shared machine)."""
    secs, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        n = fn()
        secs.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return n, (secs, cpu)


def load_average():
    """1-minute load average (the machine is shared: read CPU-time figures next to it)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def emit(name, impl, config, toks, times, extra=None):
    secs, cpu = times
    tps = [toks / s for s in secs]
    rec = {"bench": name, "impl": impl, "config": config, "tokens_per_pass": toks, "load_avg_1m": load_average(),
           "seconds": [round(s, 4) for s in secs], "tokens_per_s": [round(t) for t in tps],
           "tokens_per_s_median": round(statistics.median(tps)),
           "cpu_tokens_per_s_median": round(statistics.median(toks / c for c in cpu)),
           "cpu_tokens_per_s_best": round(max(toks / c for c in cpu))}
    rec.update(extra or {})
    print(json.dumps(rec), flush=True)


def mcore_baseline(args, docs, eot, vocab_size, seq, workdir):
    import torch
    import megatron.core
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
    from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder
    from megatron.core.datasets.utils import Split

    torch.set_num_threads(1)

    class Tok:  # just what GPTDataset reads
        def __init__(self):
            self.eod = eot
            self.pad = SpecialTokens().pad
            self.vocab_size = vocab_size
            self.unique_identifiers = {"class": "benchTok", "vocab_size": vocab_size}

    prefix = os.path.join(workdir, "gpt")
    b = IndexedDatasetBuilder(prefix + ".bin", dtype=np.int32)
    for d in docs:
        b.add_document(torch.from_numpy(np.append(d, eot).astype(np.int64)), [len(d) + 1])
    b.finalize(prefix + ".idx")
    idx = IndexedDataset(prefix)
    cfg = GPTDatasetConfig(random_seed=args.seed, sequence_length=seq, tokenizer=Tok(),
                           reset_position_ids=False, reset_attention_mask=False, eod_mask_loss=False,
                           path_to_cache=os.path.join(workdir, "cache"))
    ds = GPTDataset(idx, prefix, np.arange(len(docs)), None, Split.train, cfg)
    N = len(ds)

    def one_pass():
        n = 0
        for i in range(N):
            n += len(ds._query_document_sample_shuffle_indices(i)[0])
        return n

    toks, secs = time_passes(one_pass, args.repeats)
    emit("mcore_gpt_baseline", "megatron.core.datasets.gpt_dataset.GPTDataset._query_document_sample_shuffle_indices",
         {"seq_len": seq, "samples": N, "version": "megatron-core " + megatron.core.__version__}, toks, secs)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peer-harness", default=os.path.join(ROOT, "..", "shared", "bench", "peer_throughput.py"))
    ap.add_argument("--docs", type=int, default=2000)
    ap.add_argument("--vocab", type=int, default=32000, help="synthetic corpus vocabulary (peer default)")
    ap.add_argument("--mean-len", type=int, default=600)
    ap.add_argument("--sp-vocab", type=int, default=32000, help="sentencepiece vocabulary trained here")
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-mcore", action="store_true")
    ap.add_argument("--sp-model", default=None, help="reuse this sentencepiece model if it exists, else train and save it there")
    args = ap.parse_args()

    from data_pipeline.tokenizer import SentencePieceTokenizer

    Corpus = load_corpus_class(os.path.abspath(args.peer_harness))
    corpus = Corpus(args.docs, args.vocab, args.mean_len, args.seed)
    texts = [corpus.doc_text(d) for d in corpus.docs]
    special = SpecialTokens()
    t0 = time.perf_counter()
    if args.sp_model and os.path.isfile(args.sp_model):
        tok = SentencePieceTokenizer.load(args.sp_model)
    else:
        tok = SentencePieceTokenizer.train(training_lines(texts), args.sp_vocab, model_path=args.sp_model)
    train_s = time.perf_counter() - t0
    docs = [np.asarray(ids, dtype=np.int32) for ids in tok.encode_batch(texts)]
    contexts = pack(docs, special.eot, args.seq)
    n_tok = sum(len(d) for d in docs)
    print(json.dumps({"corpus": {"docs": args.docs, "synthetic_vocab": args.vocab, "chars": sum(map(len, texts)),
                                 "sp_vocab": tok.vocab_size, "sp_tokens": n_tok, "contexts": len(contexts),
                                 "sp_train_s": round(train_s, 1)},
                      "python": sys.version.split()[0], "threads": 1, "cpus": os.cpu_count(),
                      "load_avg_1m": load_average()}), flush=True)

    per_pass = len(contexts) * (args.seq + 1)
    clm = CausalLM(CausalLMConfig(seq_length=args.seq), special=special, vocab_size=tok.vocab_size)

    def run_clm():
        for c in contexts:
            clm({"tokens": c})
        return per_pass

    toks, secs = time_passes(run_clm, args.repeats)
    emit("causal_lm", "objectives.causal_lm.CausalLM", {"seq_len": args.seq, "document_masking": True}, toks, secs)

    for rate in (0.5, 1.0):
        cfg = FIMConfig(seq_length=args.seq, fim_rate=rate, spm_rate=0.5, split_level="character")
        t0 = time.perf_counter()
        fim = FIM(cfg, special=special, vocab_size=tok.vocab_size, tokenizer=tok)
        setup_s = time.perf_counter() - t0

        def run_fim():
            rng = np.random.default_rng(args.seed)  # same draws every pass
            fim.clear_cache()  # every pass starts cold: no memoised fragment from the last one
            for c in contexts:
                fim({"tokens": c}, rng)
            return per_pass

        rng = np.random.default_rng(args.seed)
        first = [fim({"tokens": c}, rng)["tokens"] for c in contexts[:20]]
        n_pre = int(sum((f == special.fim_prefix).sum() for f in first))
        toks, secs = time_passes(run_fim, args.repeats)
        emit(f"fim_char_rate{rate}", "objectives.fim.FIM",
             {"seq_len": args.seq, "fim_rate": rate, "spm_rate": 0.5, "split_level": "character",
              "scope": "context", "tokenizer": "sentencepiece unigram (trained here)"},
             toks, secs, {"setup_s": round(setup_s, 3), "fim_prefix_tokens_in_first_20_samples": n_pre})

    if not args.no_mcore:
        try:
            with tempfile.TemporaryDirectory(prefix="bench-fim-") as wd:
                mcore_baseline(args, docs, special.eot, tok.vocab_size, args.seq, wd)
        except Exception as e:  # the baseline is optional
            print(json.dumps({"bench": "mcore_gpt_baseline", "error": repr(e)[:500]}), flush=True)


if __name__ == "__main__":
    main()
