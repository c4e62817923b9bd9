"""Masked-attention speed on one GPU: our Triton kernel beside FlexAttention and SDPA,
on the masks and shapes of the shared anchors (causal, full, packed documents causal /
bidirectional, UniLM seq2seq, right-to-left; B4 H16 S4096 D128, B2 H16 S8192 D128,
B8 H16 S2048 D64; bf16).

Prints one JSON line per (shape, mask, impl): effective TFLOP/s counting only the
unmasked score entries (4*D flops per entry forward, 3.5x that forward+backward).
Before timing, each mask is checked once: our output and gradients on two heads
against the float32 torch reference, next to torch's own error in bf16.

    python bench/attention.py                          # everything
    python bench/attention.py --shapes 4,16,4096,128 --masks causal,doc_causal --impls ours
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kernels import masked_attention, masked_attention_reference  # noqa: E402

MASKS = ["causal", "full", "doc_causal", "doc_bidir", "unilm_s2s", "doc_r2l"]
SHAPES = [(4, 16, 4096, 128), (2, 16, 8192, 128), (8, 16, 2048, 64)]


def intervals(kind: str, b: int, s: int, gen: torch.Generator, device):
    """Row intervals [lo, hi); packed documents drawn exactly as the shared anchors draw them
    (same generator calls in the same order), so both scripts time the same masks."""
    lo = torch.zeros(b, s, dtype=torch.int32)
    hi = torch.zeros(b, s, dtype=torch.int32)
    for row in range(b):
        if kind in ("causal", "full"):
            starts = [0]
        else:
            cuts = sorted(set((torch.rand(6, generator=gen) * s).long().tolist()))
            starts = [0] + [c for c in cuts if 0 < c < s]
        for st, en in zip(starts, starts[1:] + [s]):
            r = torch.arange(st, en)
            lo[row, st:en] = st
            if kind in ("causal", "doc_causal"):
                hi[row, st:en] = r + 1
            elif kind in ("full", "doc_bidir"):
                hi[row, st:en] = en
            elif kind == "doc_r2l":
                lo[row, st:en] = r
                hi[row, st:en] = en
            elif kind == "unilm_s2s":
                src = st + max(1, int(0.4 * (en - st)))
                hi[row, st:src] = src
                hi[row, src:en] = torch.arange(src, en) + 1
            else:
                raise ValueError(f"unknown mask {kind!r}")
    return lo.to(device), hi.to(device)


def timed(fn, iters: int) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters / 1e3


def check(q, k, v, do, lo, hi, heads: int = 2) -> dict:
    """Our kernel vs the fp32 reference on the first ``heads`` heads (heads are independent)."""
    qs, ks, vs, dos = (t[:, :, :heads].detach() for t in (q, k, v, do))

    def run(fn, dtype, **kw):
        a, b_, c = (t.to(dtype).clone().requires_grad_() for t in (qs, ks, vs))
        out = fn(a, b_, c, lo, hi, **kw)
        out.backward(dos.to(dtype))
        return [out, a.grad, b_.grad, c.grad]

    ours = run(masked_attention, q.dtype, backend="triton")
    exact = run(masked_attention_reference, torch.float32)
    low = run(masked_attention_reference, q.dtype, compute_dtype=q.dtype)
    report, ok = {}, True
    for name, a, r, lw in zip(["out", "dq", "dk", "dv"], ours, exact, low):
        err = (a.float() - r).abs().max().item()
        err_low = (lw.float() - r).abs().max().item()
        ok &= err <= 2 * err_low + 1e-2
        report[name] = [round(err, 5), round(err_low, 5)]
    return {"check_ok": bool(ok), "max_err_ours_vs_torch_bf16": report}


def run_shape(b, h, s, d, masks, impls, iters, h_kv):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    import torch.nn.functional as F

    dev = "cuda"
    flex = torch.compile(flex_attention, dynamic=False) if "flex" in impls else None
    gen = torch.Generator().manual_seed(1)
    # ours: [b, s, h, d]; flex / sdpa: their native [b, h, s, d]
    q, k, v, do = (torch.randn(b, s, hh, d, device=dev, dtype=torch.bfloat16)
                   for hh in (h, h_kv, h_kv, h))
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    qt, kt, vt = (t.detach().transpose(1, 2).contiguous().requires_grad_() for t in (q, k, v))
    dot = do.transpose(1, 2).contiguous()
    for kind in MASKS:
        lo, hi = intervals(kind, b, s, gen, dev)  # drawn for every kind: keeps the anchors' masks
        if kind not in masks:
            continue
        nnz = (hi - lo).clamp(min=0).sum().item() * h
        flops_fwd = 4 * d * nnz
        base = dict(B=b, H=h, H_kv=h_kv, S=s, D=d, mask=kind, density=round(nnz / (b * h * s * s), 3))
        runs = {}
        if "ours" in impls:
            print(json.dumps({**base, "impl": "ours", **check(q, k, v, do, lo, hi)}), flush=True)
            runs["ours"] = (lambda: masked_attention(q, k, v, lo, hi, backend="triton"), do, (q, k, v))
        if "flex" in impls:
            def mask_mod(bi, hh, qi, kj):
                return (kj >= lo[bi, qi]) & (kj < hi[bi, qi])
            bm = create_block_mask(mask_mod, b, None, s, s, device=dev)
            gqa = h != h_kv
            runs["flex"] = (lambda: flex(qt, kt, vt, block_mask=bm, enable_gqa=gqa), dot, (qt, kt, vt))
        if "sdpa" in impls and h == h_kv:
            if kind == "causal":
                runs["sdpa_flash_causal"] = (
                    lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=True), dot, (qt, kt, vt))
            elif kind == "full":
                runs["sdpa_flash_full"] = (lambda: F.scaled_dot_product_attention(qt, kt, vt), dot, (qt, kt, vt))
            else:
                j = torch.arange(s, device=dev)
                dense = ((j >= lo[:, :, None]) & (j < hi[:, :, None]))[:, None]
                runs["sdpa_dense_mask"] = (
                    lambda dense=dense: F.scaled_dot_product_attention(qt, kt, vt, attn_mask=dense), dot,
                    (qt, kt, vt))
        for name, (fn, grad_out, leaves) in runs.items():
            try:
                with torch.no_grad():
                    t_fwd = timed(fn, iters)

                def fwd_bwd(fn=fn, grad_out=grad_out):
                    fn().backward(grad_out)

                t_fb = timed(fwd_bwd, iters)
                print(json.dumps({**base, "impl": name,
                                  "fwd_ms": round(t_fwd * 1e3, 3),
                                  "fwd_tflops": round(flops_fwd / t_fwd / 1e12, 1),
                                  "fwdbwd_ms": round(t_fb * 1e3, 3),
                                  "fwdbwd_tflops": round(3.5 * flops_fwd / t_fb / 1e12, 1)}), flush=True)
            except Exception as exc:  # one failing impl must not hide the others' figures
                print(json.dumps({**base, "impl": name, "error": str(exc)[:300]}), flush=True)
            for t in leaves:
                t.grad = None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=";".join(",".join(map(str, s)) for s in SHAPES),
                    help="B,H,S,D[;B,H,S,D...]")
    ap.add_argument("--masks", default=",".join(MASKS))
    ap.add_argument("--impls", default="ours,flex,sdpa")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--kv-heads", type=int, default=0, help="k/v heads for GQA (0: same as H)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("bench/attention.py needs a CUDA GPU")
    masks = args.masks.split(",")
    unknown = set(masks) - set(MASKS)
    if unknown:
        sys.exit(f"--masks: unknown {sorted(unknown)}; choose from {MASKS}")
    impls = set(args.impls.split(","))
    torch.manual_seed(0)
    print(json.dumps(dict(torch=torch.__version__, gpu=torch.cuda.get_device_name())), flush=True)
    for shape in args.shapes.split(";"):
        b, h, s, d = (int(x) for x in shape.split(","))
        run_shape(b, h, s, d, masks, impls, args.iters, args.kv_heads or h)


if __name__ == "__main__":
    main()
