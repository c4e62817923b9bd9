"""Re-evaluate a run: ``ptobj evaluate RUN_DIR [dotted.key=value ...]``.

Loads the run's saved config and its newest checkpoint that verifies, and prints
the held-out metrics (:mod:`ptobj.recipes.engine.heldout`) as JSON.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from ptobj.recipes.engine.trainer import Session
from ptobj.recipes.engine.train_config import load_train_config


def evaluate_run(run_dir: str | Path, overrides: Sequence[str] = ()) -> dict[str, float]:
    """Evaluate the newest checkpoint of ``run_dir`` with its saved config."""
    run_dir = Path(run_dir)
    cfg = load_train_config(run_dir / "config.yaml", overrides)
    sess = Session(cfg, progress=False)
    found = sess.resume(model_only=True, on_skip=lambda line: print(f"[recipes] {line}", file=sys.stderr))
    if found is None:
        raise FileNotFoundError(f"{cfg.checkpoint_dir}: no checkpoint")
    step_dir, step = found
    return {"step": step, "checkpoint": str(step_dir), **sess.evaluate()}


def main(argv = None, prog: str = "ptobj evaluate") -> int:
    import argparse
    import json

    p = argparse.ArgumentParser(prog=prog, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a run directory holding config.yaml and checkpoints/")
    p.add_argument("overrides", nargs="*", help="dotted.key=value overrides (e.g. eval.batches=16)")
    a = p.parse_args(argv)
    metrics = evaluate_run(a.run_dir, a.overrides)
    print(json.dumps(metrics, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
