"""Combining transforms: run several in sequence, or pick one per sample by weight.

Both are transforms themselves (``batch(batch, streams)``, a sample is the batch
of one). ``Compose([a, b])`` runs ``a`` then ``b`` on its output, member ``i``
drawing from ``streams.child(i)``, so the result is still a pure function of
(sample, key).

``MixByWeight([(w1, t1), (w2, t2)])`` draws each row's objective from the row's
own stream (at its own site) and runs every member's ``batch`` on the rows that
chose it, with those rows' streams, putting the rows back in input order: a
row's output is what its member gives on that row alone. Batches only collate
when every row has the same fields, so a mix fills the fields its chosen member
did not write with
*neutral* values that no loss reads, given as ``fill={field: (kind, value)}``
with kind ``"scalar"`` or ``"per_token"`` (int32, length of the sample's
``tokens``). :func:`ptobj.objectives.registry.build_spec` passes the values the
objectives' Task declarations define (``ptobj.objectives.task.HEAD_KINDS``); a member
whose output misses a field with no neutral value raises ``ValueError`` naming it.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ptobj.objectives.sample import Batch, Transform
from ptobj.objectives.streams import RowStreams, site

_SITE_CHOICE = site("compose.mix_choice")


def _fill_entry(field: str, entry) -> tuple[str, int, type]:
    kind, value = entry[0], entry[1]
    if kind not in ("scalar", "per_token"):
        raise ValueError(f"MixByWeight: fill kind for {field!r} must be 'scalar' or 'per_token', got {kind!r}")
    return kind, int(value), np.int32


class Compose(Transform):
    """Apply transforms in order; member ``i`` draws from ``streams.child(i)``."""

    def __init__(self, transforms: Sequence):
        if not transforms:
            raise ValueError("Compose: transforms must not be empty")
        self.transforms = list(transforms)
        self.reads = tuple(getattr(self.transforms[0], "reads", ()))
        writes: list[str] = []
        for t in self.transforms:
            writes += [f for f in getattr(t, "writes", ()) if f not in writes]
        self.writes = tuple(writes)

    def apply(self, batch: Batch, streams: RowStreams) -> Batch:
        out = batch
        for i, t in enumerate(self.transforms):
            out = t.batch(out, streams.child(i))
        return dict(out)

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class MixByWeight(Transform):
    """Pick one member per row with probability proportional to its weight.

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

    def choose(self, streams: RowStreams) -> np.ndarray:
        """Each row's member index, from its own stream."""
        u = streams.uniform(_SITE_CHOICE, 1)[:, 0]
        return np.searchsorted(self.cumulative, u, side="right")

    def apply(self, batch: Batch, streams: RowStreams) -> Batch:
        choice = self.choose(streams)
        B = len(choice)
        parts: dict[int, tuple[np.ndarray, Batch]] = {}
        for k in np.unique(choice):
            rows = np.flatnonzero(choice == k)
            sub = {f: v[rows] for f, v in batch.items()}
            parts[int(k)] = (rows, self.transforms[int(k)].batch(sub, streams.take(rows)))
        fields = list(dict.fromkeys(f for _, out in parts.values() for f in out)) + \
            [f for f in self.writes if all(f not in out for _, out in parts.values())]
        ref = next(iter(parts.values()))[1]
        S = ref["tokens"].shape[1] if "tokens" in ref else 0
        result: Batch = {}
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
