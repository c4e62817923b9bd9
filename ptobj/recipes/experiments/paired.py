"""Paired comparisons of two arms over seeds.

Arms that share a seed share their initial weights and data order, so the per-seed difference
``a_s - b_s`` carries far less noise than either arm: the verdict reads its 95% t interval
(Student's t over the paired seeds). A check holds when the interval lies on the paper's side
of zero (or, for "~", inside the tolerance), is "opposite" when it lies on the other side
(outside the tolerance), and is "unresolved" otherwise; the interval's half-width is the
smallest difference this design could have resolved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

# two-sided 95% quantiles of Student's t, by degrees of freedom (1 .. 30); 1.96 beyond
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042]


def t975(df: int) -> float:
    return _T975[df - 1] if 1 <= df <= len(_T975) else 1.96


@dataclass(frozen=True)
class Paired:
    seeds: tuple[int, ...]
    mean: float          # mean of a_s - b_s
    sd: float            # their standard deviation
    low: float           # the 95% t interval
    high: float

    @property
    def n(self) -> int:
        return len(self.seeds)

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def paired(a: Mapping[int, float], b: Mapping[int, float]) -> Paired | None:
    """The paired difference over the seeds both arms measured; None below two seeds."""
    seeds = tuple(sorted(s for s in a if s in b and _finite(a[s]) and _finite(b[s])))
    if len(seeds) < 2:
        return None
    d = [float(a[s]) - float(b[s]) for s in seeds]
    n = len(d)
    m = sum(d) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in d) / (n - 1))
    h = t975(n - 1) * sd / math.sqrt(n)
    return Paired(seeds, m, sd, m - h, m + h)


def verdict(p: Paired | None, op: str, tolerance: float = 0.0) -> str:
    """holds / opposite / unresolved for "a op b" (op one of > >= < <= ~), from the interval."""
    if p is None:
        return "unresolved"
    if op in (">", ">="):
        return "holds" if p.low > 0 else "opposite" if p.high < 0 else "unresolved"
    if op in ("<", "<="):
        return "holds" if p.high < 0 else "opposite" if p.low > 0 else "unresolved"
    if op == "~":
        if -tolerance <= p.low and p.high <= tolerance:
            return "holds"
        return "opposite" if p.low > tolerance or p.high < -tolerance else "unresolved"
    raise ValueError(f"unknown comparison {op!r}")


def describe(p: Paired | None, op: str, tolerance: float = 0.0) -> str:
    """The verdict with its numbers, for a report."""
    v = verdict(p, op, tolerance)
    if p is None:
        return f"{v} (fewer than two paired seeds: no interval)"
    tol = f", tolerance ±{tolerance:g}" if op == "~" else ""
    if p.sd == 0:
        return (f"{v}: a - b = {p.mean:+.4g} in each of {p.n} paired seeds (no spread: the metric did not "
                f"separate the arms in any seed{tol})")
    return (f"{v}: a - b = {p.mean:+.4g}, 95% interval [{p.low:+.4g}, {p.high:+.4g}] over {p.n} paired seeds "
            f"(sd {p.sd:.3g}{tol}); this design resolves differences beyond ±{p.half_width:.3g}")


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(float(x))
