"""Markdown report of one ``bench/gpu_check.sh`` run (its JSON lines), with the issue's
targets checked side by side and, when given, the anchor figures recorded earlier
(``../shared/bench/results``) for the same shapes and masks.

    python bench/gpu_table.py bench/results/gpu_check_<date>_<gpu>.jsonl --anchors ../shared/bench/results
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# fwd+bwd targets: ours over Flex on the document masks, per shape; ours over SDPA on causal
DOC_MASKS = ("doc_causal", "doc_bidir", "unilm_s2s", "doc_r2l")
FLEX_TARGET = {(4, 16, 4096, 128): 1.5, (8, 16, 2048, 64): 2.0}
MFU_TARGET = 0.95


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("{"):
            rows.append(json.loads(line))
    return rows


def anchors(folder: Path) -> dict:
    """(B, H, S, D, mask, impl) -> fwdbwd TFLOP/s and (model, impl) -> MFU from anchor result files."""
    out = {}
    if not folder.is_dir():
        return out
    for f in sorted(folder.glob("*anchors*.jsonl")):
        for r in read_jsonl(f):
            if "fwdbwd_tflops" in r:
                out[(r["B"], r["H"], r["S"], r["D"], r["mask"], r["impl"])] = r["fwdbwd_tflops"]
            elif "mfu" in r:
                out[(r["model"], r["impl"])] = r["mfu"]
    return out


def fmt(x, nd=1):
    return "" if x is None else f"{x:.{nd}f}"


def attention_table(rows: list[dict], anchor: dict) -> list[str]:
    att = [r for r in rows if r.get("stage") == "attention" and "mask" in r]
    if not att:
        return ["(no attention figures)"]
    dry = any(r.get("dry_run") for r in att)
    if dry:
        lines = ["| B H S D | mask | impl | density | mask build (ms) | partial 128x128 blocks | fwd+bwd GFLOP |",
                 "|---|---|---|---:|---:|---:|---:|"]
        for r in att:
            lines.append(f"| {r['B']} {r['H']} {r['S']} {r['D']} | {r['mask']} | {r['impl']} | {r['density']} | "
                         f"{r.get('mask_build_ms', '')} | {r.get('partial_share', '')} | {r.get('fwdbwd_gflop', '')} |")
        return lines
    by = {}
    for r in att:
        by.setdefault((r["B"], r["H"], r["S"], r["D"], r["mask"]), {})[r["impl"]] = r
    lines = ["| B H S D | mask | ours | flex | sdpa | ours/flex | ours/sdpa | target | met | check | "
             "anchor flex | anchor sdpa |", "|---|---|---:|---:|---:|---:|---:|---|---|---|---:|---:|"]
    for (b, h, s, d, mask), impls in by.items():
        t = {k: v.get("fwdbwd_tflops") for k, v in impls.items()}
        ours, flex, sdpa = t.get("ours"), t.get("flex"), t.get("sdpa")
        r_flex = ours / flex if ours and flex else None
        r_sdpa = ours / sdpa if ours and sdpa else None
        if mask == "causal":
            target, met = "ours >= sdpa", r_sdpa is not None and r_sdpa >= 1.0
        else:
            need = FLEX_TARGET.get((b, h, s, d))
            target = f"ours >= {need}x flex" if need else ""
            met = need is not None and r_flex is not None and r_flex >= need
        errors = "; ".join(f"{k}: {v['error']}" for k, v in impls.items() if "error" in v)
        checks = " ".join(f"{k}:{'ok' if v.get('check_ok') else 'FAIL'}" for k, v in impls.items() if "check_ok" in v)
        a_flex = anchor.get((b, h, s, d, mask, "flex"))
        a_sdpa = anchor.get((b, h, s, d, mask, "sdpa_flash_causal"))
        lines.append(f"| {b} {h} {s} {d} | {mask} | {fmt(ours)} | {fmt(flex)} | {fmt(sdpa)} | {fmt(r_flex, 2)} | "
                     f"{fmt(r_sdpa, 2)} | {target} | {'yes' if met else 'no'} | {checks}{' ' + errors if errors else ''} | "
                     f"{fmt(a_flex)} | {fmt(a_sdpa)} |")
    return lines


def train_table(rows: list[dict], anchor: dict) -> list[str]:
    tr = [r for r in rows if r.get("stage") == "train_step" and "model" in r]
    if not tr:
        return ["(no training figures)"]
    if any(r.get("dry_run") for r in tr):
        lines = ["| model | mask | backend | batch x seq | head dim | mask build (ms) |", "|---|---|---|---|---:|---:|"]
        for r in tr:
            lines.append(f"| {r['model']} | {r['mask']} | {r['backend']} | {r.get('batch')} x {r.get('seq')} | "
                         f"{r.get('head_dim', '')} | {r.get('mask_build_ms', r.get('error', ''))} |")
        return lines
    causal = {r["model"]: r.get("mfu") for r in tr if r["mask"] == "causal" and r["backend"] == "sdpa"}
    lines = ["| model | mask | backend | tokens/s | MFU | / causal-SDPA MFU | target met | anchor MFU (megatron+SDPA) |",
             "|---|---|---|---:|---:|---:|---|---:|"]
    for r in tr:
        mfu, base = r.get("mfu"), causal.get(r["model"])
        ratio = mfu / base if mfu and base else None
        met = "" if r["mask"] == "causal" else ("yes" if ratio is not None and ratio >= MFU_TARGET else "no")
        a = anchor.get((r["model"], "megatron_core_local_sdpa"))
        lines.append(f"| {r['model']} | {r['mask']} | {r['backend']} | {r.get('tokens_per_s', r.get('error', ''))} | "
                     f"{fmt(mfu, 3)} | {fmt(ratio, 2)} | {met} | {fmt(a, 3)} |")
    return lines


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("jsonl", type=Path)
    ap.add_argument("--anchors", type=Path, default=Path("../shared/bench/results"))
    args = ap.parse_args(argv)
    rows = read_jsonl(args.jsonl)
    anchor = anchors(args.anchors)
    env = next((r for r in rows if r.get("stage") == "env"), {})
    stages = {r["stage"]: r for r in rows if "rc" in r}
    tests = next((r for r in rows if r.get("stage") == "tests" and "summary" in r), {})
    out = [f"# GPU check: {env.get('gpu') or 'dry run (no GPU)'}", "",
           f"`bash bench/gpu_check.sh`, torch {env.get('torch')}, triton {env.get('triton')}, "
           f"from `{args.jsonl.name}`.", "",
           "Stages: " + ", ".join(f"{k} rc={v['rc']} in {v['seconds']} s" for k, v in stages.items()), "",
           f"**Tests** (`-m gpu`): {tests.get('summary', 'n/a')}", "",
           "**Attention, forward+backward effective TFLOP/s** (unmasked entries only, bf16; anchors: "
           "recorded earlier on another machine, for scale only)", ""]
    out += attention_table(rows, anchor)
    graphs = [r for r in rows if "flex_graphs_compiled" in r]
    if graphs:
        out += ["", "Flex graphs compiled while timing (one per shape expected): " + ", ".join(
            f"B{r['B']} H{r['H']} S{r['S']} D{r['D']}: {r['flex_graphs_compiled']}" for r in graphs)]
    out += ["", "**Training step** (tokens/s, MFU over 989 TFLOP/s)", ""]
    out += train_table(rows, anchor)
    print("\n".join(out))


if __name__ == "__main__":
    main()
