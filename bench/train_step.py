"""One training step (forward + backward + AdamW) of our megatron-core decoder:
tokens/s and MFU, with our interval attention and with PyTorch SDPA in the same
model, on a causal mask and on document-masked (context-level FIM-like) packing.

GPU (one device; bf16; the shapes of ../shared/bench/train_anchors.py)::

    python bench/train_step.py                      # 350M b8 and 1.3B b4 at seq 2048
    python bench/train_step.py --preset 350M --impl ours --mask fim_docs

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
and 1.35B.
Prints one JSON line per (model, impl, mask).
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
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron.core.transformer.module import MegatronModule  # noqa: E402

from models.config import preset  # noqa: E402

IMPLS = {"ours": "megatron_interval_attention", "sdpa": "megatron_sdpa"}
GPU_RUNS = {"350M": 8, "1.3B": 4}  # preset -> micro batch, as in the anchors


class SDPACoreAttention(MegatronModule):
    """Baseline core attention: PyTorch SDPA with ``is_causal`` (``causal = True``), else
    a dense boolean mask built from the packed intervals once per step and shared by
    all layers."""

    causal = True
    _mask_cache: tuple = (None, None)

    def __init__(self, config, layer_number, attn_mask_type, attention_type, attention_dropout=None,
                 softmax_scale=None, cp_comm_type=None, pg_collection=None, **unused):
        super().__init__(config=config)
        self.scale = softmax_scale

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        s, b, h, d = query.shape
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        mask = None
        if not self.causal:
            key_ = attention_mask.data_ptr()
            if SDPACoreAttention._mask_cache[0] != key_:
                kv_start, kv_end = attention_mask[0], attention_mask[1]
                i = torch.arange(s, device=query.device)
                dense = ((i >= kv_start[..., None]) & (i < kv_end[..., None]))[:, None]  # b 1 s s
                SDPACoreAttention._mask_cache = (key_, dense)
            mask = SDPACoreAttention._mask_cache[1]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=self.causal, scale=self.scale,
                                             enable_gqa=k.shape[1] != q.shape[1])
        return out.permute(2, 0, 1, 3).reshape(s, b, h * d)


def flops_per_token(params: int, layers: int, seq: int, hidden: int) -> float:
    return 6 * params + 3 * (2 * 2 * layers * seq * hidden * 0.5)


def run(name: str, impl: str, mask: str, batch_size: int, seq: int, args, pg) -> dict:
    from models.model import build_model
    from models.synthetic import synthetic_batch

    cfg = preset(name)
    overrides = {"seq_length": seq, "max_position_embeddings": max(seq, cfg.max_position_embeddings)}
    if args.dtype:
        overrides["params_dtype"] = args.dtype
    cfg = replace(cfg, **overrides)
    cuda = args.device == "cuda"
    SDPACoreAttention.causal = mask == "causal"
    model = build_model(cfg, pg, device=args.device, cpu_init=not cuda,
                        core_attention=SDPACoreAttention if impl == "sdpa" else None)
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
    row = dict(model=name, impl=IMPLS[impl], mask=mask, params_M=round(params / 1e6, 3), seq=seq,
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
    ap.add_argument("--impl", action="append", choices=("ours", "sdpa"), help="default: both")
    ap.add_argument("--mask", action="append", choices=("causal", "fim_docs"), help="default: both")
    ap.add_argument("--mean-doc", type=int, default=512, help="mean document length for fim_docs")
    ap.add_argument("--dtype", choices=("bfloat16", "float32", "float16"), help="default: preset's (bf16 for GPU sizes)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--peak-tflops", type=float, default=None, help="default 989 on CUDA (H100 bf16), none on CPU")
    ap.add_argument("--anchors", default=os.environ.get("TRAIN_ANCHORS", ""),
                    help="JSONL of train_anchors.py results to print beside ours")
    args = ap.parse_args()
    cuda = args.device == "cuda"
    if args.peak_tflops is None and cuda:
        args.peak_tflops = 989.0
    torch.set_num_threads(max(1, torch.get_num_threads()))

    from models.parallel import init_parallel

    pg = init_parallel(tp=1, pp=1, seed=0)
    presets = args.preset or (list(GPU_RUNS) if cuda else ["tiny"])
    for name in presets:
        batch = args.batch or (GPU_RUNS.get(name, 4) if cuda else 2)
        seq = args.seq or (2048 if cuda else preset(name).seq_length)
        for mask in args.mask or ["causal", "fim_docs"]:
            for impl in args.impl or ["ours", "sdpa"]:
                try:
                    print(json.dumps(run(name, impl, mask, batch, seq, args, pg)), flush=True)
                except Exception as exc:  # keep measuring the other rows
                    print(json.dumps(dict(model=name, impl=IMPLS[impl], mask=mask,
                                          error=f"{type(exc).__name__}: {exc}"[:400])), flush=True)
    if args.anchors and Path(args.anchors).is_file():
        for line in Path(args.anchors).read_text().splitlines():
            if line.strip():
                print(json.dumps({**json.loads(line), "source": args.anchors}), flush=True)


if __name__ == "__main__":
    main()
