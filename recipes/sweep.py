"""Ablation sweeps: a grid of recipes run one after another, then a table.

    python -m recipes.sweep --configs recipes/configs/gpt_fim_tiny.yaml recipes/configs/causal_lm_tiny.yaml \\
        --grid "optim.lr=[1e-3, 3e-3]" --set schedule.train_steps=20 --out runs/sweep

Every config is crossed with every combination of ``--grid`` values (a YAML
list per key); ``--set`` overrides apply to all runs. Each run gets its own
run directory under ``--out``; its final held-out metrics
(``final_metrics.json``) are collected into a printed table, ``results.csv``
and, when matplotlib is installed, ``results.png`` (one panel per metric).
Runs are subprocesses (``--nproc N`` launches each with torchrun); a failed
run is recorded and the sweep goes on. A rerun skips runs whose metrics exist
(``--force`` reruns them).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import yaml


@dataclass
class SweepRun:
    config: str
    overrides: list[str]
    run_dir: Path
    status: str = "pending"
    metrics: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        stem = Path(self.config).name.removesuffix(".yaml")
        return " ".join([stem, *self.overrides])


def parse_grid(items: Sequence[str]) -> list[tuple[str, list[str]]]:
    """``key=[a, b]`` (YAML list) or ``key=a`` -> (key, ["a", "b"]) with values as override text."""
    grid = []
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--grid {item!r}: expected key=[v1, v2, ...]")
        key, text = item.split("=", 1)
        values = yaml.safe_load(text) if text.strip().startswith("[") else [text]
        if not isinstance(values, list) or not values:
            raise SystemExit(f"--grid {item!r}: expected a non-empty YAML list")
        grid.append((key.strip(), [_as_override(v) for v in values]))
    return grid


def _as_override(value) -> str:
    if isinstance(value, (list, dict)):
        return yaml.safe_dump(value, default_flow_style=True).strip()
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_")[:120]


def plan(configs: Sequence[str], grid: list[tuple[str, list[str]]], fixed: Sequence[str], out: Path) -> list[SweepRun]:
    runs = []
    keys = [k for k, _ in grid]
    for config in configs:
        for combo in itertools.product(*[vals for _, vals in grid]) if grid else [()]:
            varied = [f"{k}={v}" for k, v in zip(keys, combo)]
            name = _slug("__".join([Path(config).name.removesuffix(".yaml"), *varied]))
            runs.append(SweepRun(config=config, overrides=[*fixed, *varied], run_dir=out / name))
    return runs


def command(run: SweepRun, nproc: int, python: str = sys.executable) -> list[str]:
    launch = [python, "-m", "recipes.train"]
    if nproc > 1:
        launch = [python, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                  "-m", "recipes.train"]
    return [*launch, run.config, *run.overrides, f"logging.run_dir={run.run_dir}", "logging.progress_bar=false"]


# a run is its own world: rendezvous settings of the calling process must not leak into it
DIST_ENV = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK")


def run_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DIST_ENV}
    env["PYTHONWARNINGS"] = "ignore"
    return env


def execute(run: SweepRun, nproc: int, force: bool, log=print) -> SweepRun:
    metrics_file = run.run_dir / "final_metrics.json"
    if metrics_file.is_file() and not force:
        run.status, run.metrics = "cached", json.loads(metrics_file.read_text())
        return run
    run.run_dir.mkdir(parents=True, exist_ok=True)
    cmd = command(run, nproc)
    log(f"[sweep] {run.label}\n[sweep]   {' '.join(cmd)}")
    with open(run.run_dir / "sweep.log", "w") as out:
        rc = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, env=run_env())
    if rc == 0 and metrics_file.is_file():
        run.status, run.metrics = "ok", json.loads(metrics_file.read_text())
    else:
        run.status = f"failed (exit {rc}; see {run.run_dir / 'sweep.log'})"
    return run


def metric_columns(runs: Sequence[SweepRun]) -> list[str]:
    cols: list[str] = []
    for r in runs:
        cols += [k for k in r.metrics if k not in cols and k != "step"]
    return cols


def table(runs: Sequence[SweepRun]) -> str:
    cols = metric_columns(runs)
    header = ["run", "status", "step", *cols]
    rows = [[r.label, r.status.split(" ")[0], str(r.metrics.get("step", "")),
             *[_fmt(r.metrics.get(c)) for c in cols]] for r in runs]
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4f}"
    return str(v)


def write_csv(runs: Sequence[SweepRun], path: Path) -> None:
    cols = metric_columns(runs)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["config", "overrides", "run_dir", "status", "step", *cols])
        for r in runs:
            w.writerow([r.config, " ".join(r.overrides), str(r.run_dir), r.status, r.metrics.get("step", ""),
                        *[r.metrics.get(c, "") for c in cols]])


def plot(runs: Sequence[SweepRun], path: Path) -> bool:
    """One bar panel per metric; returns False (and draws nothing) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    cols = [c for c in metric_columns(runs) if any(isinstance(r.metrics.get(c), (int, float)) for r in runs)]
    if not cols:
        return False
    fig, axes = plt.subplots(len(cols), 1, figsize=(8, 2.2 * len(cols)), squeeze=False)
    labels = [r.label for r in runs]
    for ax, c in zip(axes[:, 0], cols):
        ax.barh(range(len(runs)), [r.metrics.get(c) or 0.0 for r in runs])
        ax.set_yticks(range(len(runs)), labels, fontsize=7)
        ax.set_title(c, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m recipes.sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", required=True, help="recipe YAML files")
    p.add_argument("--grid", action="append", default=[], help='key=[v1, v2] (repeatable; crossed)')
    p.add_argument("--set", dest="fixed", action="append", default=[], help="key=value for every run (repeatable)")
    p.add_argument("--out", default="runs/sweep", help="sweep directory (one run directory per grid point)")
    p.add_argument("--nproc", type=int, default=1, help="processes per run (torchrun when > 1)")
    p.add_argument("--force", action="store_true", help="rerun runs whose final metrics exist")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    a = p.parse_args(argv)
    out = Path(a.out)
    runs = plan(a.configs, parse_grid(a.grid), a.fixed, out)
    if a.dry_run:
        for r in runs:
            print(" ".join(command(r, a.nproc)))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    for i, r in enumerate(runs, 1):
        print(f"[sweep] run {i}/{len(runs)}", flush=True)
        execute(r, a.nproc, a.force)
    text = table(runs)
    print(text)
    (out / "results.txt").write_text(text + "\n")
    write_csv(runs, out / "results.csv")
    drew = plot(runs, out / "results.png")
    print(f"[sweep] wrote {out / 'results.csv'}" + (f" and {out / 'results.png'}" if drew else " (no matplotlib: no plot)"))
    return 0 if all(not r.status.startswith("failed") for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
