"""Masked-attention speed on one GPU: our Triton kernels, FlexAttention and SDPA, all through
``ptobj.kernels.masked_attention`` with an ``AttentionMask`` per backend, in one process, on the
masks and shapes of the shared anchors (``../shared/bench/attention_anchors.py``):
causal, full, packed documents causal / bidirectional, UniLM seq2seq, right-to-left;
B4 H16 S4096 D128, B2 H16 S8192 D128, B8 H16 S2048 D64; bf16.

Prints one JSON line per (shape, mask, impl): effective TFLOP/s counting only the
unmasked score entries (4*D flops per entry forward, 3.5x that forward+backward, as the
anchors count), the time to build the mask once (what every micro-batch pays), and, for
Flex, how many graphs dynamo compiled while timing the shape (one expected, whatever the
masks; the correctness checks run at two heads, a shape of their own).
Before timing, each mask is checked once: our output and gradients on two heads against
the float32 torch reference, next to torch's own error in bf16. SDPA runs on causal only
(the ``sdpa`` backend serves plain causal attention).

    python bench/attention.py                                   # everything
    python bench/attention.py --shapes 4,16,4096,128 --masks causal,doc_causal --impls ours,flex
    python bench/attention.py --dry-run                         # CPU: build every input, time nothing
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ptobj.kernels import AttentionMask, masked_attention, masked_attention_reference  # noqa: E402

MASKS = ["causal", "full", "doc_causal", "doc_bidir", "unilm_s2s", "doc_r2l"]
SHAPES = [(4, 16, 4096, 128), (2, 16, 8192, 128), (8, 16, 2048, 64)]
IMPLS = {"ours": "triton", "flex": "flex", "sdpa": "sdpa"}


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


def impls_for(kind: str, impls: list[str]) -> list[str]:
    return [i for i in impls if i != "sdpa" or kind == "causal"]


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


def build_mask(lo, hi, backend: str):
    """(mask, seconds to build it), synchronised on CUDA."""
    sync = torch.cuda.synchronize if lo.is_cuda else (lambda: None)
    sync()
    t0 = time.perf_counter()
    mask = AttentionMask.build(lo, hi, backend=backend)
    sync()
    return mask, time.perf_counter() - t0


def tile_census(mask: AttentionMask) -> dict:
    """Share of visited 128x128 blocks that are partial (from a flex mask's tables)."""
    partial = mask.field("kv_num").sum().item()
    full = mask.field("full_kv_num").sum().item()
    return {"blocks_visited": int(partial + full), "partial_share": round(partial / max(partial + full, 1), 3)}


def check(q, k, v, do, mask: AttentionMask, lo, hi, heads: int = 2) -> dict:
    """One backend vs the fp32 reference on the first ``heads`` heads (heads are independent)."""
    qs, ks, vs, dos = (t[:, :, :heads].detach() for t in (q, k, v, do))

    def run(fn, dtype, *args, **kw):
        a, b_, c = (t.to(dtype).clone().requires_grad_() for t in (qs, ks, vs))
        out = fn(a, b_, c, *args, **kw)
        out.backward(dos.to(dtype))
        return [out, a.grad, b_.grad, c.grad]

    got = run(masked_attention, q.dtype, mask)
    exact = run(masked_attention_reference, torch.float32, lo, hi)
    low = run(masked_attention_reference, q.dtype, lo, hi, compute_dtype=q.dtype)
    report, ok = {}, True
    for name, a, r, lw in zip(["out", "dq", "dk", "dv"], got, exact, low):
        err = (a.float() - r).abs().max().item()
        err_low = (lw.float() - r).abs().max().item()
        ok &= err <= 2 * err_low + 1e-2
        report[name] = [round(err, 5), round(err_low, 5)]
    return {"check_ok": bool(ok), "max_err_vs_torch_bf16": report}


def flex_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def run_shape(b, h, s, d, masks, impls, iters, h_kv, dry_run: bool, check_impls: set):
    dev = "cpu" if dry_run else "cuda"
    gen = torch.Generator().manual_seed(1)
    q, k, v, do = (torch.randn(b, s, hh, d, device=dev, dtype=torch.bfloat16) for hh in (h, h_kv, h_kv, h))
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    flex_compiles = 0  # dynamo graphs built while timing Flex at this shape (the checks run at 2 heads)
    for kind in MASKS:
        lo, hi = intervals(kind, b, s, gen, dev)  # drawn for every kind: keeps the anchors' masks
        if kind not in masks:
            continue
        nnz = (hi - lo).clamp(min=0).sum().item() * h
        flops_fwd = 4 * d * nnz
        base = dict(B=b, H=h, H_kv=h_kv, S=s, D=d, mask=kind, density=round(nnz / (b * h * s * s), 3))
        for impl in impls_for(kind, impls):
            backend = IMPLS[impl]
            row = {**base, "impl": impl}
            try:
                mask, build_s = build_mask(lo, hi, backend)
                row["mask_build_ms"] = round(build_s * 1e3, 2)
                if backend == "flex":
                    row.update(tile_census(mask))
                if dry_run:
                    row.update(dry_run=True, would_time=["fwd", "fwd+bwd"], fwd_gflop=round(flops_fwd / 1e9, 1),
                               fwdbwd_gflop=round(3.5 * flops_fwd / 1e9, 1))
                    print(json.dumps(row), flush=True)
                    continue
                if impl in check_impls:
                    row.update(check(q, k, v, do, mask, lo, hi))

                def fwd(mask=mask):
                    return masked_attention(q, k, v, mask)

                graphs = flex_graphs()
                with torch.no_grad():
                    t_fwd = timed(fwd, iters)
                t_fb = timed(lambda: fwd().backward(do), iters)
                if backend == "flex":
                    flex_compiles += flex_graphs() - graphs
                row.update(fwd_ms=round(t_fwd * 1e3, 3), fwd_tflops=round(flops_fwd / t_fwd / 1e12, 1),
                           fwdbwd_ms=round(t_fb * 1e3, 3), fwdbwd_tflops=round(3.5 * flops_fwd / t_fb / 1e12, 1))
            except Exception as exc:  # one failing impl must not hide the others' figures
                row["error"] = f"{type(exc).__name__}: {exc}"[:400]
            for t in (q, k, v):
                t.grad = None
            print(json.dumps(row), flush=True)
    if not dry_run and "flex" in impls:
        print(json.dumps(dict(B=b, H=h, S=s, D=d, impl="flex", flex_graphs_compiled=flex_compiles)), flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=";".join(",".join(map(str, s)) for s in SHAPES), help="B,H,S,D[;B,H,S,D...]")
    ap.add_argument("--masks", default=",".join(MASKS))
    ap.add_argument("--impls", default=",".join(IMPLS))
    ap.add_argument("--check", default="ours", help="impls checked against the reference before timing")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--kv-heads", type=int, default=0, help="k/v heads for GQA (0: same as H)")
    ap.add_argument("--dry-run", action="store_true", help="build every input and mask on CPU, time nothing")
    args = ap.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        sys.exit("bench/attention.py needs a CUDA GPU (or --dry-run)")
    masks = args.masks.split(",")
    impls = args.impls.split(",")
    for name, given, known in (("--masks", masks, MASKS), ("--impls", impls, list(IMPLS))):
        unknown = set(given) - set(known)
        if unknown:
            sys.exit(f"{name}: unknown {sorted(unknown)}; choose from {known}")
    torch.manual_seed(0)
    import triton

    device = "cpu (dry run)" if args.dry_run else torch.cuda.get_device_name()
    print(json.dumps(dict(torch=torch.__version__, triton=triton.__version__, gpu=device)), flush=True)
    for shape in args.shapes.split(";"):
        b, h, s, d = (int(x) for x in shape.split(","))
        run_shape(b, h, s, d, masks, impls, args.iters, args.kv_heads or h, args.dry_run, set(args.check.split(",")))


if __name__ == "__main__":
    main()
