"""Ablation sweeps: a grid of recipes, run in parallel locally or as a SLURM array job, then a table.

    ptobj sweep --configs gpt_fim_tiny causal_lm_tiny \\
        --grid "optim.lr=[1e-3, 3e-3]" --grid "schedule.seed=[1, 2]" --set schedule.train_steps=20 \\
        --out runs/sweep [--launcher local --jobs 2 | --launcher slurm --slurm-partition gpu --gpus-per-node 1]
    ptobj sweep collect runs/sweep                 # table and plots from whatever has finished

A config is a bundled recipe's name or a YAML file. Every config is crossed with every combination of ``--grid`` values (a YAML
list per key); ``--set`` overrides apply to all runs. Each grid point is one
``ptobj.recipes.train`` run in its own directory under ``--out``; the plan is kept in
``sweep.json`` and each point records its state in ``status.json``.

Launchers: ``serial`` (one after another, the default), ``local`` (``--jobs``
at a time on this machine), ``slurm`` (one array job through ``submitit``,
``--jobs`` at a time; a job that reaches its time limit or is preempted is
requeued and resumes from its last checkpoint) and ``submitit-local``
(submitit's local executor: the SLURM code path on this machine). A point whose
``final_metrics.json`` exists is skipped (``--force`` reruns it); an
interrupted one resumes from its checkpoints (``ptobj.recipes.train`` resumes by
default). The collector builds the table (``results.md``, ``results.csv``) and
the plots (``loss_curves.png``, ``metrics.png``; matplotlib, the ``[sweep]``
extra) from every point that finished and marks the others failed, running or
not started. Points that differ only in ``schedule.seed`` are one row: the
mean over seeds, ± one standard deviation.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import os
import re
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import yaml

LAUNCHERS = ("serial", "local", "submitit-local", "slurm")
SEED_KEY = "schedule.seed"


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

    @property
    def group(self) -> str:
        """The label without its seed: runs that differ only in seed are one row."""
        stem = Path(self.config).name.removesuffix(".yaml")
        return " ".join([stem, *(o for o in self.overrides if not o.startswith(SEED_KEY + "="))])

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "cached")


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


def slug(text: str) -> str:
    """A folder-safe name for a run (at most 120 characters)."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_")[:120]


def plan(configs: Sequence[str], grid: list[tuple[str, list[str]]], fixed: Sequence[str], out: Path) -> list[SweepRun]:
    runs = []
    keys = [k for k, _ in grid]
    for config in configs:
        for combo in itertools.product(*[vals for _, vals in grid]) if grid else [()]:
            varied = [f"{k}={v}" for k, v in zip(keys, combo)]
            name = slug("__".join([Path(config).name.removesuffix(".yaml"), *varied]))
            runs.append(SweepRun(config=config, overrides=[*fixed, *varied], run_dir=out / name))
    return runs


def command(run: SweepRun, nproc: int, python: str = sys.executable) -> list[str]:
    """The training command of one point (``ptobj train`` as ``python -m``, under torchrun when
    ``nproc`` > 1); a point's config is a bundled recipe's name or a YAML file."""
    launch = [python, "-m", "ptobj.recipes.train"]
    if nproc > 1:
        launch = [python, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                  "-m", "ptobj.recipes.train"]
    return [*launch, run.config, *run.overrides, f"logging.run_dir={run.run_dir}", "logging.progress_bar=false"]


# a run is its own world: rendezvous settings of the calling process must not leak into it
DIST_ENV = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK")


def run_env(threads: int | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DIST_ENV}
    env["PYTHONWARNINGS"] = "ignore"
    if threads:  # runs sharing a machine share its cores
        env.setdefault("OMP_NUM_THREADS", str(threads))
    return env


# ----------------------------------------------------------------------------- one point


def _write_status(run_dir: Path, **status) -> None:
    tmp = run_dir / "status.json.tmp"
    tmp.write_text(json.dumps(status))
    os.replace(tmp, run_dir / "status.json")


def _same_point(run: SweepRun) -> bool:
    """Whether the run directory is this point's (or new): ``point.json`` records what it runs."""
    path = run.run_dir / "point.json"
    here = {"config": run.config, "overrides": run.overrides}
    if not path.is_file():
        run.run_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(here))
        return True
    return json.loads(path.read_text()) == here


def metric(metrics: dict, key: str):
    """``key``'s value; ``a|b`` takes the first of several names present (runs whose heads differ
    name the same measurement differently: ``nsp_task/nsp_acc|nsp_task/sop_acc``)."""
    for k in key.split("|"):
        if k in metrics:
            return metrics[k]
    return None


def execute(run: SweepRun, nproc: int = 1, force: bool = False, log=print, threads: int | None = None) -> SweepRun:
    """Run one point to completion (resuming its checkpoints), unless it is done already. A run
    directory that holds a run of other settings is never reused (or skipped as done)."""
    metrics_file = run.run_dir / "final_metrics.json"
    if not _same_point(run):
        run.status = (f"failed (exit -; {run.run_dir} holds a run of other settings (see its point.json): "
                      "choose another --out)")
        return run
    if metrics_file.is_file() and not force:
        run.status, run.metrics = "cached", json.loads(metrics_file.read_text())
        return run
    run.run_dir.mkdir(parents=True, exist_ok=True)
    if force:
        metrics_file.unlink(missing_ok=True)
    cmd = command(run, nproc)
    log(f"[sweep] {run.label}\n[sweep]   {' '.join(cmd)}")
    started = time.time()
    _write_status(run.run_dir, state="running", host=socket.gethostname(), pid=os.getpid(), started=started)
    with open(run.run_dir / "sweep.log", "a") as out:
        rc = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, env=run_env(threads))
    if rc == 0 and metrics_file.is_file():
        run.status, run.metrics = "ok", json.loads(metrics_file.read_text())
    else:
        run.status = f"failed (exit {rc}; see {run.run_dir / 'sweep.log'})"
    _write_status(run.run_dir, state="done" if run.ok else "failed", exit=rc, host=socket.gethostname(),
                  started=started, ended=time.time(), seconds=round(time.time() - started, 1))
    return run


def point_state(run: SweepRun) -> SweepRun:
    """What a run directory says about its point (for the collector): finished, failed, running
    or not started."""
    metrics_file = run.run_dir / "final_metrics.json"
    status_file = run.run_dir / "status.json"
    if metrics_file.is_file():
        run.status, run.metrics = "ok", json.loads(metrics_file.read_text())
        return run
    if status_file.is_file():
        s = json.loads(status_file.read_text())
        run.status = (f"failed (exit {s.get('exit')}; see {run.run_dir / 'sweep.log'})" if s.get("state") == "failed"
                      else "running" if s.get("state") == "running" else s.get("state", "unknown"))
    else:
        run.status = "not started"
    return run


# ----------------------------------------------------------------------------- launching


def write_plan(runs: Sequence[SweepRun], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(
        [{"config": r.config, "overrides": r.overrides, "run_dir": str(r.run_dir)} for r in runs], indent=1))


def read_plan(out: Path) -> list[SweepRun]:
    path = out / "sweep.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; is {out} a sweep directory?")
    return [SweepRun(p["config"], list(p["overrides"]), Path(p["run_dir"])) for p in json.loads(path.read_text())]


def launch(runs: Sequence[SweepRun], *, launcher: str = "serial", jobs: int = 1, nproc: int = 1, force: bool = False,
           out: Path, wait: bool = True, slurm: dict | None = None) -> list[SweepRun]:
    """Run every point with ``launcher``; returns the points with their status (after waiting)."""
    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher must be one of {LAUNCHERS}, got {launcher!r}")
    write_plan(runs, out)
    todo = [r for r in runs if force or not (r.run_dir / "final_metrics.json").is_file()]
    for r in runs:
        if r not in todo:
            execute(r)  # cached, or refused as a run of other settings
    if launcher in ("serial", "local"):
        workers = 1 if launcher == "serial" else max(1, jobs)
        threads = max(1, (os.cpu_count() or 1) // workers) if workers > 1 else None
        if workers == 1:
            for i, r in enumerate(todo, 1):
                print(f"[sweep] run {i}/{len(todo)}", flush=True)
                execute(r, nproc, force)
        else:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(lambda r: execute(r, nproc, force, threads=threads), todo))
        return list(runs)
    from ptobj.recipes.experiments.submit import submit

    submit(todo, execute, nproc=nproc, force=force, folder=out / "submitit",
           cluster="local" if launcher == "submitit-local" else "slurm", jobs=jobs, wait=wait, **(slurm or {}))
    return [point_state(r) for r in runs]


# ----------------------------------------------------------------------------- collecting


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
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4f}"
    return str(v)


def grouped(runs: Sequence[SweepRun]) -> list[tuple[str, list[SweepRun]]]:
    """Runs grouped by their label without the seed, in plan order."""
    out: dict[str, list[SweepRun]] = {}
    for r in runs:
        out.setdefault(r.group, []).append(r)
    return list(out.items())


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    v = [float(x) for x in values if isinstance(x, (int, float)) and not math.isnan(float(x))]
    if not v:
        return math.nan, math.nan, 0
    m = sum(v) / len(v)
    s = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
    return m, s, len(v)


def cell(values: Sequence[float], digits: int = 4) -> str:
    m, s, n = mean_std(values)
    if n == 0:
        return "-"
    return f"{m:.{digits}f} ± {s:.{digits}f}" if n > 1 else f"{m:.{digits}f}"


def markdown(runs: Sequence[SweepRun], columns: Sequence[tuple[str, str]] | None = None) -> str:
    """Markdown table, one row per group (seeds averaged), with each group's status."""
    columns = columns or [(c, c) for c in metric_columns(runs) if c != "train_loss"][:12]
    head = ["run", "done", *[label for _, label in columns]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, group in grouped(runs):
        ok = [r for r in group if r.ok]
        bad = [r.status.split(";")[0] for r in group if not r.ok]
        done = f"{len(ok)}/{len(group)}" + (f" ({', '.join(sorted(set(bad)))})" if bad else "")
        lines.append("| " + " | ".join([label, done, *[cell([r.metrics.get(k) for r in ok]) for k, _ in columns]])
                     + " |")
    return "\n".join(lines)


def write_csv(runs: Sequence[SweepRun], path: Path) -> None:
    cols = metric_columns(runs)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["config", "overrides", "run_dir", "status", "step", *cols])
        for r in runs:
            w.writerow([r.config, " ".join(r.overrides), str(r.run_dir), r.status, r.metrics.get("step", ""),
                        *[r.metrics.get(c, "") for c in cols]])


def plots(runs: Sequence[SweepRun], out: Path, columns: Sequence[tuple[str, str]] | None = None,
          labels: dict[str, str] | None = None, title: str = "") -> list[Path]:
    """``loss_curves.png`` (training loss of every group) and ``metrics.png`` (final metrics,
    mean ± std over seeds); none without matplotlib."""
    try:
        from ptobj.recipes.engine.plots import compare_curves, metric_bars
    except ModuleNotFoundError as exc:
        print(f"[sweep] no plots: {exc}")
        return []
    labels = labels or {}
    groups = [(labels.get(g, g), [r for r in rs if r.ok]) for g, rs in grouped(runs)]
    curves = {g: [r.run_dir / "metrics.jsonl" for r in rs] for g, rs in groups if rs}
    made = [compare_curves(curves, out / "loss_curves.png", title=f"{title}: training loss".strip(": "))]
    columns = columns or [(c, c) for c in metric_columns(runs) if c != "train_loss"][:6]

    rows = [(g, {k: [metric(r.metrics, k) for r in rs] for k, _ in columns}) for g, rs in groups]
    if columns and rows:
        made.append(metric_bars(rows, columns, out / "metrics.png", title=title))
    return made


def collect(runs: Sequence[SweepRun], out: Path, *, quiet: bool = False) -> str:
    """Table, CSV and plots of ``runs`` (statuses as found); returns the text table."""
    runs = [r if r.ok or r.status.startswith("failed") else point_state(r) for r in runs]
    text = table(runs)
    (out / "results.txt").write_text(text + "\n")
    (out / "results.md").write_text(markdown(runs) + "\n")
    write_csv(runs, out / "results.csv")
    made = plots(runs, out)
    if not quiet:
        print(text)
        print(f"[sweep] wrote {out / 'results.md'}, {out / 'results.csv'}"
              + "".join(f", {p}" for p in made))
    return text


# ----------------------------------------------------------------------------- command line


def add_launch_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--launcher", default="serial", choices=LAUNCHERS,
                   help="serial | local (--jobs at a time) | slurm (submitit array job) | submitit-local")
    p.add_argument("--jobs", type=int, default=1, help="points running at once (local, slurm array parallelism)")
    p.add_argument("--nproc", type=int, default=1, help="processes per run (torchrun when > 1)")
    p.add_argument("--force", action="store_true", help="rerun points whose final metrics exist")
    p.add_argument("--no-wait", action="store_true", help="slurm: return after submitting (collect later)")
    p.add_argument("--slurm-partition", default=None)
    p.add_argument("--slurm-account", default=None)
    p.add_argument("--slurm-time", type=int, default=60, help="minutes per job (requeued at the limit)")
    p.add_argument("--gpus-per-node", type=int, default=0)
    p.add_argument("--cpus-per-task", type=int, default=None)


def slurm_params(a) -> dict:
    return {"partition": a.slurm_partition, "account": a.slurm_account, "timeout_min": a.slurm_time,
            "gpus_per_node": a.gpus_per_node, "cpus_per_task": a.cpus_per_task}


def main(argv: Sequence[str] | None = None, prog: str = "ptobj sweep") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["collect"]:
        p = argparse.ArgumentParser(prog=f"{prog} collect")
        p.add_argument("out", help="a sweep directory (holding sweep.json)")
        a = p.parse_args(argv[1:])
        runs = [point_state(r) for r in read_plan(Path(a.out))]
        collect(runs, Path(a.out))
        return 0 if all(r.ok for r in runs) else 1
    p = argparse.ArgumentParser(prog=prog, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", required=True, help="recipe YAML files")
    p.add_argument("--grid", action="append", default=[], help='key=[v1, v2] (repeatable; crossed)')
    p.add_argument("--set", dest="fixed", action="append", default=[], help="key=value for every run (repeatable)")
    p.add_argument("--out", default="runs/sweep", help="sweep directory (one run directory per grid point)")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    add_launch_args(p)
    a = p.parse_args(argv)
    out = Path(a.out)
    runs = plan(a.configs, parse_grid(a.grid), a.fixed, out)
    if a.dry_run:
        for r in runs:
            print(" ".join(command(r, a.nproc)))
        return 0
    runs = launch(runs, launcher=a.launcher, jobs=a.jobs, nproc=a.nproc, force=a.force, out=out,
                  wait=not a.no_wait, slurm=slurm_params(a))
    if a.no_wait and a.launcher in ("slurm", "submitit-local"):
        print(f"[sweep] submitted; collect with: ptobj sweep collect {out}")
        return 0
    collect(runs, out)
    return 0 if all(r.ok for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
