"""Checkpoint cost: the recipe's format (torch.distributed.checkpoint + a sha256 per
file, verified before every load) next to one plain ``torch.save`` file per rank
(the format it replaced), on the same model and AdamW state, in one process.

    python bench/checkpoint.py                       # 125M decoder, fp32 weights + Adam moments
    python bench/checkpoint.py --preset tiny --dir /tmp/ckpt-bench

Prints one JSON line per format: bytes written, seconds to save (for ours: the
finiteness check, DCP write, hashing, publish), to verify (ours: re-hash every
file), to load; then the parts of one save measured apart; with the 1-minute
load average next to the figures. Disk caches are warm on reloads,
so load and verify read from memory when the machine has room.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ptobj.models.config import preset  # noqa: E402


def _model_and_state(name: str):
    from ptobj.models.model import build_model
    from ptobj.models.parallel import init_parallel

    model = build_model(replace(preset(name), params_dtype="float32"), init_parallel(tp=1, pp=1, backend="gloo"))
    moments = {n: (torch.randn_like(p), torch.rand_like(p)) for n, p in model.named_parameters()}
    return model, moments


def _items(model, moments) -> dict:
    from ptobj.recipes.engine.checkpoint import TensorLayout

    layout = TensorLayout()
    items = layout.model_items(model)
    params = dict(model.named_parameters())
    for n, (m, v) in moments.items():
        items.update(layout.items(f"optimizer/{n}/exp_avg", m, params[n]))
        items.update(layout.items(f"optimizer/{n}/exp_avg_sq", v, params[n]))
    items["data"] = {"position": 123}
    return items


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv=None) -> int:
    from ptobj.recipes.engine import checkpoint as ckpt

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="125M")
    ap.add_argument("--dir", default=None, help="where to write (default: a temporary folder, removed after)")
    args = ap.parse_args(argv)
    root = Path(args.dir or tempfile.mkdtemp(prefix="ckpt-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    model, moments = _model_and_state(args.preset)
    params = sum(p.numel() for p in model.parameters())
    common = {"preset": args.preset, "params": params, "load_avg_1m": round(os.getloadavg()[0], 2)}
    try:
        # the format it replaced: one torch.save file per rank
        plain = root / "plain" / "rank_00000.pt"
        plain.parent.mkdir(parents=True, exist_ok=True)
        state = {"model": model.state_dict(), "moments": moments}
        t = time.perf_counter()
        torch.save(state, plain)
        with open(plain, "rb") as f:
            os.fsync(f.fileno())
        save_s = time.perf_counter() - t
        t = time.perf_counter()
        torch.load(plain, weights_only=False)
        load_s = time.perf_counter() - t
        print(json.dumps({**common, "format": "torch.save per rank", "bytes": plain.stat().st_size,
                          "save_s": round(save_s, 3), "verify_s": None, "load_s": round(load_s, 3)}), flush=True)

        items = _items(model, moments)
        t = time.perf_counter()
        step_dir = ckpt.save_checkpoint(root / "ours", 1, items)
        save_s = time.perf_counter() - t
        t = time.perf_counter()
        ckpt.verify(step_dir)
        verify_s = time.perf_counter() - t
        t = time.perf_counter()
        ckpt.load_checkpoint(step_dir, _items(model, moments))  # verify, then load in place
        load_s = time.perf_counter() - t
        print(json.dumps({**common, "format": "dcp + sha256 (ptobj.recipes.engine.checkpoint)", "bytes": _size(step_dir),
                          "save_s": round(save_s, 3), "verify_s": round(verify_s, 3),
                          "load_s": round(load_s, 3)}), flush=True)

        # where a save's time goes
        import torch.distributed.checkpoint as dcp

        parts = {}
        t = time.perf_counter()
        ckpt.non_finite(items)
        parts["finite_check_s"] = time.perf_counter() - t
        t = time.perf_counter()
        dcp.save(items, storage_writer=dcp.FileSystemWriter(root / "parts", sync_files=True), no_dist=True)
        parts["dcp_write_s"] = time.perf_counter() - t
        t = time.perf_counter()
        ckpt._hash_files(root / "parts")
        parts["hash_s"] = time.perf_counter() - t
        print(json.dumps({**common, "format": "dcp + sha256, parts of a save",
                          **{k: round(v, 3) for k, v in parts.items()}}), flush=True)
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
