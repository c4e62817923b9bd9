"""Paper reproductions as experiments: one command runs a sweep, evaluates it and writes a report.

    ptobj experiment fim_for_free --size cpu [--launcher local --jobs 2] [--results DIR]
    ptobj experiment --list

An experiment is a YAML file in ``ptobj/recipes/experiments/`` (or a path): the paper
and its claims, the runs (each a recipe config plus overrides), the seeds, a
``cpu`` and a ``gpu`` size, the metrics of its table and the checks of the
paper's direction. Every run of an experiment trains on the same number of
tokens and is evaluated on the same held-out samples (a fixed ``eval.seed``;
the held-out suites in ``eval.suites`` where runs must share them); both are
checked before anything runs. The runs go through :mod:`ptobj.recipes.experiments.sweep` (any
launcher: serial, local in parallel, SLURM array jobs), so a finished run is
skipped and an interrupted one resumes. Then ``report.md`` (the table, mean ±
standard deviation over seeds, the checks, the command, commit, date and load
average), ``loss_curves.png`` and ``metrics.png`` are written to ``--results``
(default: the experiment's output folder).

A check compares two runs on one metric (``a op b``) through their per-seed paired
differences (:mod:`ptobj.recipes.experiments.paired`): *holds* when the 95% t interval of
``a - b`` lies on the paper's side of zero, *opposite* on the other side, *unresolved*
otherwise, with the interval and the smallest difference the design resolves. The checks
state the paper's direction; nothing here is tuned toward it.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from ptobj.recipes.experiments.paired import describe, paired
from ptobj.recipes.experiments.sweep import (SweepRun, add_launch_args, launch, mean_std, metric, plots, point_state, slug,
                           slurm_params)

HERE = Path(__file__).resolve().parent
SIZES = ("cpu", "gpu")
OPS = {">": lambda a, b: a > b, ">=": lambda a, b: a >= b, "<": lambda a, b: a < b, "<=": lambda a, b: a <= b,
       "~": None}


class ExperimentError(ValueError):
    """A bad experiment file or a sweep that would not compare like with like; names the field."""


@dataclass(frozen=True)
class Run:
    label: str
    config: dict[str, str]          # size -> recipe config path
    overrides: tuple[str, ...]


@dataclass(frozen=True)
class Check:
    claim: str
    metric: str
    a: str
    op: str
    b: str
    tolerance: float = 0.0          # op "~": |a - b| <= tolerance
    b_metric: str = ""              # compare a's metric with this one of b (default: the same)


@dataclass(frozen=True)
class Experiment:
    name: str
    title: str
    paper: str
    runs: tuple[Run, ...]
    sizes: dict[str, dict]          # size -> {set: [...], seeds: [...], note: str}
    overrides: tuple[str, ...]      # for every run and size
    table: tuple[tuple[str, str], ...]  # (metric, column label)
    plot: tuple[tuple[str, str], ...]
    checks: tuple[Check, ...]
    notes: str = ""
    path: Path | None = None

    def seeds(self, size: str) -> list[int]:
        return [int(s) for s in self.sizes[size].get("seeds", [1])]

    def points(self, size: str, out: Path) -> list[tuple[Run, int, SweepRun]]:
        if size not in self.sizes:
            raise ExperimentError(f"{self.name}: no size {size!r}; it has {sorted(self.sizes)}")
        common = [*self.sizes[size].get("set", []), *self.overrides]
        pts = []
        for run in self.runs:
            if size not in run.config:
                raise ExperimentError(f"{self.name}: run {run.label!r} has no config for size {size!r}")
            for seed in self.seeds(size):
                name = slug(f"{run.label}__seed{seed}")
                pts.append((run, seed, SweepRun(run.config[size], [*common, *run.overrides, f"schedule.seed={seed}"],
                                                out / name)))
        return pts


def _strs(value, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ExperimentError(f"{where}: expected a list of 'key=value' strings, got {value!r}")
    return tuple(value)


def _pairs(value, where: str) -> tuple[tuple[str, str], ...]:
    out = []
    for i, item in enumerate(value or []):
        if not (isinstance(item, list) and len(item) == 2 and all(isinstance(v, str) for v in item)):
            raise ExperimentError(f"{where}.{i}: expected [metric, label], got {item!r}")
        out.append((item[0], item[1]))
    return tuple(out)


def load(name_or_path: str) -> Experiment:
    path = Path(name_or_path)
    if not path.suffix:
        path = HERE / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ExperimentError(f"{path}: no such experiment; known: {', '.join(names())}")
    raw = yaml.safe_load(path.read_text()) or {}
    known = {"name", "title", "paper", "runs", "sizes", "set", "table", "plot", "checks", "notes", "config"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ExperimentError(f"{path}: {unknown[0]}: unknown key; an experiment knows {sorted(known)}")
    sizes = raw.get("sizes") or {}
    for size, spec in sizes.items():
        if size not in SIZES:
            raise ExperimentError(f"{path}: sizes.{size}: expected one of {SIZES}")
        bad = sorted(set(spec) - {"set", "seeds", "note", "config"})
        if bad:
            raise ExperimentError(f"{path}: sizes.{size}.{bad[0]}: unknown key")
        _strs(spec.get("set"), f"{path}: sizes.{size}.set")
    default_config = {s: spec["config"] for s, spec in sizes.items() if "config" in spec}
    runs = []
    for i, r in enumerate(raw.get("runs") or []):
        where = f"{path}: runs.{i}"
        if not isinstance(r, dict) or "label" not in r:
            raise ExperimentError(f"{where}: needs a label")
        bad = sorted(set(r) - {"label", "config", "set"})
        if bad:
            raise ExperimentError(f"{where}.{bad[0]}: unknown key")
        config = r.get("config", default_config)
        if isinstance(config, str):
            config = {s: config for s in sizes}
        runs.append(Run(str(r["label"]), dict(config), _strs(r.get("set"), f"{where}.set")))
    if not runs:
        raise ExperimentError(f"{path}: runs: at least one run")
    labels = [r.label for r in runs]
    if len(set(labels)) != len(labels):
        raise ExperimentError(f"{path}: runs: labels must differ, got {labels}")
    checks = []
    for i, c in enumerate(raw.get("checks") or []):
        where = f"{path}: checks.{i}"
        if not {"claim", "metric", "a", "op", "b"} <= set(c) <= {"claim", "metric", "a", "op", "b", "tolerance",
                                                                   "b_metric"}:
            raise ExperimentError(f"{where}: needs claim, metric, a, op, b (and tolerance for '~'); got {sorted(c)}")
        if c["op"] not in OPS or c["a"] not in labels or c["b"] not in labels:
            raise ExperimentError(f"{where}: op must be one of {sorted(OPS)} and a, b run labels {labels}")
        checks.append(Check(**{k: str(v) for k, v in c.items() if k != "tolerance"},
                            tolerance=float(c.get("tolerance", 0.0))))
    table = _pairs(raw.get("table"), f"{path}: table")
    return Experiment(name=str(raw.get("name", path.stem)), title=str(raw.get("title", path.stem)),
                      paper=str(raw.get("paper", "")), runs=tuple(runs), sizes=sizes,
                      overrides=_strs(raw.get("set"), f"{path}: set"), table=table,
                      plot=_pairs(raw.get("plot"), f"{path}: plot") or table[:4], checks=tuple(checks),
                      notes=str(raw.get("notes", "")), path=path)


def names() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.yaml"))


# ----------------------------------------------------------------------------- like with like


def training_tokens(cfg, nproc: int = 1) -> int:
    dp = max(1, nproc // (cfg.parallel.tensor_parallel * cfg.parallel.pipeline_parallel))
    s = cfg.schedule
    return s.train_steps * s.micro_batch_size * s.grad_accum_steps * dp * cfg.data.seq_length


def check_comparable(points: Sequence[tuple[Run, int, SweepRun]], nproc: int = 1) -> dict[str, Any]:
    """Every run trains on as many tokens and is evaluated on the same held-out samples
    (corpus, held-out seed, batches); returns what they share."""
    from ptobj.recipes.engine.config import ConfigError
    from ptobj.recipes.engine.train_config import load_train_config

    seen: dict[str, dict] = {}
    for run, seed, point in points:
        try:
            cfg = load_train_config(point.config, point.overrides)
        except ConfigError as exc:
            raise ExperimentError(f"run {run.label!r} (seed {seed}): {exc}") from None
        if cfg.eval.seed is None:
            raise ExperimentError(f"run {run.label!r}: set eval.seed so every run sees the same held-out samples")
        facts = {"training tokens": training_tokens(cfg, nproc), "corpus": dataclasses.asdict(cfg.data.corpus),
                 "tokenizer": dataclasses.asdict(cfg.data.tokenizer), "seq_length": cfg.data.seq_length,
                 "eval.seed": cfg.eval.seed, "eval.batches": cfg.eval.batches,
                 "eval.micro_batch_size": cfg.eval.micro_batch_size,
                 "eval.infill": dataclasses.asdict(cfg.eval.infill)}
        for key, value in facts.items():
            if key in seen and seen[key]["value"] != value:
                raise ExperimentError(f"runs {seen[key]['run']!r} and {run.label!r} differ in {key} "
                                      f"({seen[key]['value']!r} vs {value!r}): they would not be compared like "
                                      "with like")
            seen.setdefault(key, {"value": value, "run": run.label})
    return {k: v["value"] for k, v in seen.items()}


# ----------------------------------------------------------------------------- the report


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def report(exp: Experiment, size: str, points: Sequence[tuple[Run, int, SweepRun]], shared: dict, *,
           command: str, started: float, load_before: tuple, results: Path) -> str:
    by_label: dict[str, list[SweepRun]] = {}
    for run, _, p in points:
        by_label.setdefault(run.label, []).append(point_state(p))
    head = ["run", "done", *[label for _, label in exp.table]]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, group in by_label.items():
        ok = [p for p in group if p.ok]
        bad = sorted({p.status.split(";")[0].split(" (")[0] for p in group if not p.ok})
        done = f"{len(ok)}/{len(group)}" + (f" ({', '.join(bad)})" if bad else "")
        cells = []
        for key, _ in exp.table:
            m, s, n = mean_std([metric(p.metrics, key) for p in ok])
            cells.append("-" if n == 0 else (f"{m:.4f} ± {s:.4f}" if n > 1 else f"{m:.4f}"))
        rows.append("| " + " | ".join([label, done, *cells]) + " |")
    by_seed: dict[str, dict[int, SweepRun]] = {}
    for run, seed, p in points:
        by_seed.setdefault(run.label, {})[seed] = point_state(p)
    checks = []
    for c in exp.checks:
        a = {s: metric(p.metrics, c.metric) for s, p in by_seed.get(c.a, {}).items() if p.ok}
        b = {s: metric(p.metrics, c.b_metric or c.metric) for s, p in by_seed.get(c.b, {}).items() if p.ok}
        op = f"~ (within {c.tolerance:g})" if c.op == "~" else c.op
        what = f"{c.a} `{c.metric}` {op} {c.b} `{c.b_metric}`" if c.b_metric else \
            f"`{c.metric}`: {c.a} {op} {c.b}"
        checks.append(f"- {c.claim} ({what}): **{describe(paired(a, b), c.op, c.tolerance)}**")
    noise = []
    for key, label in exp.table:
        se = [metric(p.metrics, f"{k}_se") for p in (q for g in by_label.values() for q in g if q.ok)
              for k in key.split("|")[:1]]
        se = [x for x in se if isinstance(x, (int, float)) and math.isfinite(x)]
        spreads = [mean_std([metric(p.metrics, key) for p in g if p.ok])[1] for g in by_label.values()]
        spreads = [s for s in spreads if math.isfinite(s) and s > 0]
        if se:
            noise.append(f"- {label}: standard error over evaluation items {sum(se) / len(se):.4f} (mean over "
                         f"runs); spread over seeds {sum(spreads) / len(spreads):.4f} (mean over arms)"
                         if spreads else f"- {label}: standard error over evaluation items {sum(se) / len(se):.4f}")
    load_after = os.getloadavg()
    seeds = exp.seeds(size)
    lines = [
        f"# {exp.title} ({size} size)", "",
        f"Paper: {exp.paper}", "",
        f"Command: `{command}`  ",
        f"Commit: `{_git('rev-parse', 'HEAD')}`{' (with local changes)' if _git('status', '--porcelain', '--untracked-files=no') else ''}  ",
        f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; wall time "
        f"{(time.time() - started) / 60:.1f} min (runs already done were not rerun)  ",
        f"Machine: {os.cpu_count()} CPUs; 1-minute load average {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after  ",
        f"Every run: {shared.get('training tokens', 0):,} training tokens, sequence length "
        f"{shared.get('seq_length')}, held-out seed {shared.get('eval.seed')}; seeds {seeds} "
        f"({'mean ± standard deviation over seeds' if len(seeds) > 1 else 'one seed: no error bars'}).", "",
        *([exp.sizes[size]["note"], ""] if exp.sizes[size].get("note") else []),
        *rows, "",
        *(["How much of a number is the evaluation set (the metric's own standard error over held-out "
           "items) and how much the seed:", "", *noise, ""] if noise else []),
        "The paper's direction, checked on the per-seed paired differences (arm a minus arm b, seed by "
        "seed; 95% t interval): holds when the interval lies on the paper's side of zero (inside the "
        "tolerance for ~), opposite on the other side, unresolved otherwise.", "",
        *(checks or ["- (no checks)"]), "",
        *([exp.notes.strip(), ""] if exp.notes.strip() else []),
        "![training loss](loss_curves.png)", "", "![final metrics](metrics.png)", "",
    ]
    text = "\n".join(lines)
    (results / "report.md").write_text(text)
    return text


# ----------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None, prog: str = "ptobj experiment") -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", nargs="?", help=f"a name ({', '.join(names())}) or a YAML path")
    p.add_argument("--list", action="store_true", help="list the experiments and exit")
    p.add_argument("--size", default="cpu", choices=SIZES)
    p.add_argument("--out", default=None, help="run folders (default: runs/experiments/NAME-SIZE)")
    p.add_argument("--results", default=None, help="where report.md and the plots go (default: --out)")
    p.add_argument("--set", dest="extra", action="append", default=[],
                   help="key=value for every run (e.g. data.cache_dir=...); recorded in the report")
    p.add_argument("--dry-run", action="store_true", help="check the runs and print their commands only")
    add_launch_args(p)
    a = p.parse_args(argv)
    if a.list or not a.experiment:
        for n in names():
            e = load(n)
            print(f"{n:<22} {e.title}  [{', '.join(e.sizes)}]")
        return 0
    command = "ptobj experiment " + " ".join(sys.argv[1:] if argv is None else argv)
    try:
        exp = load(a.experiment)
        if a.extra:
            exp = dataclasses.replace(exp, overrides=(*exp.overrides, *a.extra))
        out = Path(a.out or f"runs/experiments/{exp.name}-{a.size}")
        points = exp.points(a.size, out)
        shared = check_comparable(points, a.nproc)
    except ExperimentError as exc:
        print(f"experiment error: {exc}", file=sys.stderr)
        return 2
    if a.dry_run:
        from ptobj.recipes.experiments.sweep import command as run_command

        for _, _, pt in points:
            print(" ".join(run_command(pt, a.nproc)))
        return 0
    load_before, started = os.getloadavg(), time.time()
    print(f"[experiment] {exp.title}: {len(points)} runs of {shared['training tokens']:,} tokens ({a.size} size)",
          flush=True)
    runs = launch([pt for _, _, pt in points], launcher=a.launcher, jobs=a.jobs, nproc=a.nproc, force=a.force,
                  out=out, wait=not a.no_wait, slurm=slurm_params(a))
    if a.no_wait and a.launcher in ("slurm", "submitit-local"):
        print(f"[experiment] submitted; write the report later by rerunning: {command}")
        return 0
    results = Path(a.results or out)
    results.mkdir(parents=True, exist_ok=True)
    labels = {pt.group: run.label for run, _, pt in points}
    plots(runs, results, columns=list(exp.plot), labels=labels, title=exp.title)
    text = report(exp, a.size, points, shared, command=command, started=started, load_before=load_before,
                  results=results)
    print(text)
    print(f"[experiment] wrote {results / 'report.md'}")
    return 0 if all(r.ok for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
