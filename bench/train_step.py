"""One training step (forward + backward + AdamW) of our megatron-core decoder: tokens/s
and MFU, with each attention backend of ``kernels`` chosen through
``ModelConfig.attention_backend``, on a causal mask and on document-masked
(context-level FIM-like) packing, side by side in one process.

GPU (one device; bf16; the shapes of ../shared/bench/train_anchors.py)::

    python bench/train_step.py          # 350M b8 and 1.3B b4 at seq 2048: causal/sdpa, fim_docs/triton, fim_docs/flex
    python bench/train_step.py --preset 350M --row fim_docs:triton
    python bench/train_step.py --dry-run   # CPU: build every config, batch and mask at full size, time nothing

CPU smoke run::

    python bench/train_step.py --device cpu --preset tiny

MFU uses the anchor script's model-FLOPs formula, so its figures compare
directly: 6 * params + 3 * (4 * layers * seq * hidden * 0.5) per token, over
``--peak-tflops`` (H100 dense bf16: 989). Our embeddings are tied, so 6 * params
counts the output projection once and the (free) lookup not at all; the anchor's
untied GPT counts its embedding table as well, which flatters its MFU a little.
The document-masked rows count the same (causal) FLOPs, so a faster masked step
shows up as a higher "MFU". Our presets are Llama-shaped (SwiGLU at 8/3 * hidden,
RMSNorm, RoPE, no biases): 337M and 1.28B parameters where the anchors have 372M
and 1.35B. The target: document-masked FIM at >= 95% of causal-SDPA MFU.
Prints one JSON line per (model, mask, backend).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))   # synthetic_batches: the tests' synthetic batches, timed here

from ptobj.models.config import preset  # noqa: E402

GPU_RUNS = {"350M": 8, "1.3B": 4}  # preset -> micro batch, as in the anchors
GPU_ROWS = ["causal:sdpa", "fim_docs:triton", "fim_docs:flex"]
CPU_ROWS = ["causal:sdpa", "fim_docs:reference"]


def flops_per_token(params: int, layers: int, seq: int, hidden: int) -> float:
    return 6 * params + 3 * (2 * 2 * layers * seq * hidden * 0.5)


def model_config(name: str, seq: int, backend: str, dtype: str | None):
    cfg = preset(name)
    overrides = {"seq_length": seq, "max_position_embeddings": max(seq, cfg.max_position_embeddings),
                 "attention_backend": backend}
    if dtype:
        overrides["params_dtype"] = dtype
    return replace(cfg, **overrides)


def dry_run(name: str, mask: str, backend: str, batch_size: int, seq: int, args) -> dict:
    """Everything but the model and the clock: config, batch and attention mask at full size."""
    from ptobj.kernels import AttentionMask
    from synthetic_batches import synthetic_batch

    cfg = model_config(name, seq, backend, args.dtype)
    batch = synthetic_batch(batch_size, seq, cfg.vocab_size, kind="decoder", mask=mask,
                            mean_doc=args.mean_doc if mask == "fim_docs" else None, seed=0)
    t0 = time.perf_counter()
    built = AttentionMask.build(batch["kv_start"], batch["kv_end"], backend=backend)
    return dict(model=name, mask=mask, backend=backend, seq=seq, batch=batch_size, dtype=cfg.params_dtype,
                layers=cfg.num_layers, hidden=cfg.hidden_size, head_dim=cfg.head_dim, dry_run=True,
                mask_width=built.data.shape[1], mask_build_ms=round((time.perf_counter() - t0) * 1e3, 2),
                would_time=f"{args.warmup} warmup + {args.steps} timed steps")


def run(name: str, mask: str, backend: str, batch_size: int, seq: int, args, pg) -> dict:
    from ptobj.models.model import build_model
    from synthetic_batches import synthetic_batch

    cfg = model_config(name, seq, backend, args.dtype)
    cuda = args.device == "cuda"
    model = build_model(cfg, pg, device=args.device, cpu_init=not cuda)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **({"fused": True} if cuda else {}))
    batch = synthetic_batch(batch_size, seq, cfg.vocab_size, kind="decoder", mask=mask,
                            mean_doc=args.mean_doc if mask == "fim_docs" else None, seed=0, device=args.device)

    def step():
        out = model(batch)["lm"]
        (out["loss_sum"] / out["count"]).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(args.warmup):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    dt = (time.perf_counter() - t0) / args.steps
    tps = batch_size * seq / dt
    flops = flops_per_token(params, cfg.num_layers, seq, cfg.hidden_size)
    row = dict(model=name, mask=mask, backend=backend, params_M=round(params / 1e6, 3), seq=seq,
               batch=batch_size, dtype=cfg.params_dtype, device=args.device, step_ms=round(dt * 1e3, 1),
               tokens_per_s=round(tps), achieved_TFLOPs=round(tps * flops / 1e12, 6),
               mfu=round(tps * flops / (args.peak_tflops * 1e12), 3) if args.peak_tflops else None)
    if cuda:
        row["peak_mem_GB"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
        torch.cuda.reset_peak_memory_stats()
    del model, opt
    if cuda:
        torch.cuda.empty_cache()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cuda", "cpu"))
    ap.add_argument("--preset", action="append", help="model preset(s); default 350M and 1.3B on GPU, tiny on CPU")
    ap.add_argument("--batch", type=int, help="micro batch (default: 8 for 350M, 4 for 1.3B, 2 on CPU)")
    ap.add_argument("--seq", type=int, help="sequence length (default 2048 on GPU, the preset's on CPU)")
    ap.add_argument("--row", action="append",
                    help=f"MASK:BACKEND, mask causal|fim_docs, backend triton|flex|sdpa|reference "
                         f"(default {','.join(GPU_ROWS)} on GPU, {','.join(CPU_ROWS)} on CPU)")
    ap.add_argument("--mean-doc", type=int, default=512, help="mean document length for fim_docs")
    ap.add_argument("--dtype", choices=("bfloat16", "float32", "float16"), help="default: preset's (bf16 for GPU sizes)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--peak-tflops", type=float, default=None, help="default 989 on CUDA (H100 bf16), none on CPU")
    ap.add_argument("--anchors", default=os.environ.get("TRAIN_ANCHORS", ""),
                    help="JSONL of train_anchors.py results to print beside ours")
    ap.add_argument("--dry-run", action="store_true", help="CPU: build configs, batches and masks at the GPU sizes")
    args = ap.parse_args()
    gpu_sizes = args.device == "cuda" or args.dry_run
    if args.peak_tflops is None and args.device == "cuda":
        args.peak_tflops = 989.0
    rows = [r.split(":") for r in (args.row or (GPU_ROWS if gpu_sizes else CPU_ROWS))]
    for r in rows:
        if len(r) != 2 or r[0] not in ("causal", "fim_docs"):
            sys.exit(f"--row: expected MASK:BACKEND with MASK causal or fim_docs, got {':'.join(r)!r}")
    torch.set_num_threads(max(1, torch.get_num_threads()))

    pg = None
    if not args.dry_run:
        from ptobj.models.parallel import init_parallel

        pg = init_parallel(tp=1, pp=1, seed=0)
    for name in args.preset or (list(GPU_RUNS) if gpu_sizes else ["tiny"]):
        batch = args.batch or (GPU_RUNS.get(name, 4) if gpu_sizes else 2)
        seq = args.seq or (2048 if gpu_sizes else preset(name).seq_length)
        for mask, backend in rows:
            try:
                fn = dry_run if args.dry_run else run
                print(json.dumps(fn(name, mask, backend, batch, seq, args, *(() if args.dry_run else (pg,)))),
                      flush=True)
            except Exception as exc:  # keep measuring the other rows
                print(json.dumps(dict(model=name, mask=mask, backend=backend,
                                      error=f"{type(exc).__name__}: {exc}"[:400])), flush=True)
    if args.anchors and Path(args.anchors).is_file():
        for line in Path(args.anchors).read_text().splitlines():
            if line.strip():
                print(json.dumps({**json.loads(line), "source": args.anchors}), flush=True)


if __name__ == "__main__":
    main()
