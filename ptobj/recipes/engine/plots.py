"""PNG plots of runs: loss curves from ``metrics.jsonl`` and final metrics with error bars.

Needs matplotlib (the ``[sweep]`` extra); drawn off-screen (Agg).
"""

from __future__ import annotations

from ptobj.extras import require

require("sweep", "matplotlib", by=__name__)

import json
import math
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(path: str | Path) -> dict[str, dict[int, dict]]:
    """``metrics.jsonl`` -> {kind: {step: record}}; a resumed run's later record of a step wins."""
    out: dict[str, dict[int, dict]] = {}
    p = Path(path)
    if not p.is_file():
        return out
    for line in p.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        out.setdefault(rec.get("kind", "train"), {})[int(rec["step"])] = rec
    return out


def _series(records: Mapping[int, dict], key: str) -> tuple[list[int], list[float]]:
    steps = [s for s in sorted(records) if isinstance(records[s].get(key), (int, float))]
    return steps, [float(records[s][key]) for s in steps]


def run_curves(metrics_jsonl: str | Path, out_png: str | Path, *, title: str = "") -> Path:
    """One run: training loss per logged step, and every held-out ``*_loss`` at its evaluations."""
    m = read_metrics(metrics_jsonl)
    fig, ax = plt.subplots(figsize=(6.4, 4))
    steps, loss = _series(m.get("train", {}), "loss")
    ax.plot(steps, loss, label="train loss", color="black")
    evals = m.get("eval", {})
    keys = sorted({k for rec in evals.values() for k in rec if k.endswith("_loss")})
    for k in keys:
        s, v = _series(evals, k)
        ax.plot(s, v, marker="o", label=f"held-out {k}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / target)")
    ax.set_title(title or str(Path(metrics_jsonl).parent.name), fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, out_png)
    plt.close(fig)
    return Path(out_png)


def compare_curves(runs: Mapping[str, Sequence[str | Path]], out_png: str | Path, *, key: str = "loss",
                   kind: str = "train", title: str = "") -> Path:
    """Several runs' ``key`` curves on one plot; a label with several runs (seeds) is drawn
    as its mean with a band from the lowest to the highest seed."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, paths in runs.items():
        series = [_series(read_metrics(p).get(kind, {}), key) for p in paths]
        series = [s for s in series if s[0]]
        if not series:
            continue
        common = sorted(set.intersection(*(set(s) for s, _ in series)))
        vals = [[dict(zip(s, v))[t] for t in common] for s, v in series]
        mean = [sum(col) / len(col) for col in zip(*vals)]
        line, = ax.plot(common, mean, label=f"{label}" + (f" ({len(vals)} seeds)" if len(vals) > 1 else ""))
        if len(vals) > 1:
            ax.fill_between(common, [min(c) for c in zip(*vals)], [max(c) for c in zip(*vals)],
                            color=line.get_color(), alpha=0.2)
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    _save(fig, out_png)
    plt.close(fig)
    return Path(out_png)


def metric_bars(rows: Sequence[tuple[str, Mapping[str, Sequence[float]]]], metrics: Sequence[tuple[str, str]],
                out_png: str | Path, *, title: str = "") -> Path:
    """One panel per metric (``(key, label)``), one bar per row: the mean over its values (seeds)
    with an error bar of one standard deviation where there are several."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(max(4.0, 3.2 * len(metrics)), 0.5 * len(rows) + 1.8),
                             squeeze=False)
    labels = [label for label, _ in rows]
    for ax, (key, name) in zip(axes[0], metrics):
        means, errs = [], []
        for _, values in rows:
            v = [x for x in values.get(key, []) if x is not None and not math.isnan(x)]
            means.append(sum(v) / len(v) if v else math.nan)
            errs.append(_std(v) if len(v) > 1 else 0.0)
        ax.barh(range(len(rows)), [0.0 if math.isnan(m) else m for m in means], xerr=errs, capsize=3,
                color="tab:blue", alpha=0.8)
        ax.set_yticks(range(len(rows)), labels if ax is axes[0][0] else [""] * len(rows), fontsize=8)
        ax.invert_yaxis()
        ax.set_title(name, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    _save(fig, out_png)
    plt.close(fig)
    return Path(out_png)


def _std(v: Sequence[float]) -> float:
    m = sum(v) / len(v)
    return math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))


def _save(fig, out_png) -> None:
    with warnings.catch_warnings():  # long run labels: the layout does what it can
        warnings.simplefilter("ignore", UserWarning)
        fig.tight_layout()
    fig.savefig(out_png, dpi=110)
