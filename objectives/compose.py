"""Combining transforms: run several in sequence, or pick one per sample by weight.

``Compose([a, b])(sample, rng)`` is ``b(a(sample, rng), rng)``: one rng threads
through, so the result is still a pure function of (sample, seed).

``MixByWeight([(w1, t1), (w2, t2)])`` draws the objective from the sample's own
rng (one uniform draw, before the chosen transform draws anything), so a mix is
as deterministic as its members. Batches only collate when every sample has the
same fields, so a mix fills the fields its chosen member did not write with
*neutral* values that no loss reads, given as ``fill={field: (kind, value)}``
with kind ``"scalar"`` or ``"per_token"`` (int32, length of the sample's
``tokens``). :func:`objectives.registry.build_spec` passes the values the
objectives' Task declarations define (``objectives.task.HEAD_KINDS``); a member
whose output misses a field with no neutral value raises ``ValueError`` naming it.

``MixByWeight.batch(samples, rng)`` is the vectorised form: it runs each member's
``batch`` on the samples that chose it and returns the rows in input order.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from objectives.sample import Sample

def _fill_entry(field: str, entry) -> tuple[str, int, type]:
    kind, value = entry[0], entry[1]
    if kind not in ("scalar", "per_token"):
        raise ValueError(f"MixByWeight: fill kind for {field!r} must be 'scalar' or 'per_token', got {kind!r}")
    return kind, int(value), np.int32


class Compose:
    """Apply transforms in order, threading one rng through all of them."""

    def __init__(self, transforms: Sequence):
        if not transforms:
            raise ValueError("Compose: transforms must not be empty")
        self.transforms = list(transforms)
        self.reads = tuple(getattr(self.transforms[0], "reads", ()))
        writes: list[str] = []
        for t in self.transforms:
            writes += [f for f in getattr(t, "writes", ()) if f not in writes]
        self.writes = tuple(writes)

    def __call__(self, sample: Mapping[str, np.ndarray], rng: np.random.Generator) -> Sample:
        out = sample
        for t in self.transforms:
            out = t(out, rng)
        return dict(out)

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class MixByWeight:
    """Pick one member per sample with probability proportional to its weight.

    ``tag_field`` (optional) names an int32 scalar field that records the index
    of the chosen member, e.g. for per-objective loss logging.
    """

    def __init__(self, members: Sequence[tuple[float, object]], *, fill: Mapping | None = None,
                 tag_field: str | None = None):
        if not members:
            raise ValueError("MixByWeight: members must not be empty")
        weights = np.array([float(w) for w, _ in members], dtype=np.float64)
        if not np.all(np.isfinite(weights)) or np.any(weights < 0) or weights.sum() <= 0:
            raise ValueError(f"MixByWeight: weights must be finite, >= 0 and not all 0, got {weights.tolist()}")
        self.weights = weights / weights.sum()
        self.cumulative = np.cumsum(self.weights)
        self.cumulative[-1] = 1.0
        self.transforms = [t for _, t in members]
        self.fill = {f: _fill_entry(f, v) for f, v in (fill or {}).items()}
        self.tag_field = tag_field
        self.reads = tuple(dict.fromkeys(f for t in self.transforms for f in getattr(t, "reads", ())))
        self.writes = tuple(dict.fromkeys(f for t in self.transforms for f in getattr(t, "writes", ())))
        missing = [f for t in self.transforms for f in self.writes
                   if f not in getattr(t, "writes", ()) and f not in self.fill]
        if missing:
            raise ValueError(f"MixByWeight: no neutral value for field(s) {sorted(set(missing))} that only "
                             f"some members write; pass fill={{field: (kind, value)}}")

    def choose(self, rng: np.random.Generator) -> int:
        return int(np.searchsorted(self.cumulative, rng.random(), side="right"))

    def __call__(self, sample: Mapping[str, np.ndarray], rng: np.random.Generator) -> Sample:
        k = self.choose(rng)
        out = dict(self.transforms[k](sample, rng))
        n = len(out["tokens"]) if "tokens" in out else 0
        for field in self.writes:
            if field in out:
                continue
            if field not in self.fill:
                raise ValueError(f"MixByWeight: member {k} did not write {field!r} and it has no neutral value")
            kind, value, dtype = self.fill[field]
            if kind == "scalar":
                out[field] = np.array(value, dtype=dtype)
            elif kind == "per_token":
                out[field] = np.full(n, value, dtype=dtype)
            else:
                raise ValueError(f"MixByWeight: fill kind for {field!r} must be 'scalar' or 'per_token', got {kind!r}")
        if self.tag_field:
            out[self.tag_field] = np.array(k, dtype=np.int32)
        return out

    def batch(self, samples: Sequence[Mapping[str, np.ndarray]], rng: np.random.Generator) -> Sample:
        """Vectorised form: one choice per sample (drawn from ``rng`` for the whole
        batch), each member's ``batch`` on its share, rows put back in input order."""
        B = len(samples)
        choice = np.searchsorted(self.cumulative, rng.random(B), side="right")
        parts: dict[int, tuple[np.ndarray, Sample]] = {}
        for k in np.unique(choice):
            rows = np.flatnonzero(choice == k)
            member = self.transforms[int(k)]
            sub = [samples[i] for i in rows]
            if hasattr(member, "batch"):
                out = member.batch(sub, rng)
            else:
                outs = [member(s, rng) for s in sub]
                out = {f: np.stack([o[f] for o in outs]) for f in outs[0]}
            parts[int(k)] = (rows, out)
        fields = list(dict.fromkeys(f for _, out in parts.values() for f in out)) + \
            [f for f in self.writes if all(f not in out for _, out in parts.values())]
        ref = next(iter(parts.values()))[1]
        S = ref["tokens"].shape[1] if "tokens" in ref else 0
        result: Sample = {}
        for f in fields:
            template = next((out[f] for _, out in parts.values() if f in out), None)
            if template is None:
                kind, value, dtype = self.fill[f]
                template = np.full((1,) if kind == "scalar" else (1, S), value, dtype)
            arr = np.empty((B,) + template.shape[1:], template.dtype)
            for k, (rows, out) in parts.items():
                if f in out:
                    arr[rows] = out[f]
                else:
                    if f not in self.fill:
                        raise ValueError(f"MixByWeight: member {k} did not write {f!r} and it has no neutral value")
                    arr[rows] = self.fill[f][1]
            result[f] = arr
        if self.tag_field:
            result[self.tag_field] = choice.astype(np.int32)
        return result

    def __repr__(self) -> str:
        return f"MixByWeight({list(zip(self.weights.round(4).tolist(), self.transforms))!r})"
