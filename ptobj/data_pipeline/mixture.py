"""A mixture of instruction datasets: its config and each dataset's share (no I/O here).

FLAN (Wei et al. 2022) trains on many datasets at once, each phrased through its own
instruction templates (:mod:`ptobj.data_pipeline.instructions`), mixed
*examples-proportionally with a cap*: dataset ``d`` of ``n_d`` training records is
drawn at the rate

    r_d = min(n_d, K) / sum_e min(n_e, K)          (FLAN: K = 3,000; K = 0: no cap)

T5 (Raffel et al. 2020, section 3.5.2) adds a temperature: the capped rates raised to
``1 / T`` and renormalised, ``r_d ∝ min(n_d, K) ** (1 / T)`` (T = 1: the rates above;
large T: equal shares).

An epoch of the mixture holds ``N = sum_d min(n_d, K)`` examples, dataset ``d``
contributing ``c_d`` of them: ``r_d * N`` rounded by largest remainders, so the counts
sum to ``N`` exactly and each is within one example of its share (:func:`counts`).
When a capped dataset holds more records than it contributes per epoch, the sampler
runs ``P = max_d ceil(n_d / c_d)`` such epochs as one of its own, so every training
record is seen in each of its epochs (:func:`passes`).

Datasets are grouped into task clusters (NLI, sentiment, QA, ...; each templates file
names its cluster); ``held_out`` clusters stay out of the mixture entirely and are
scored zero-shot (:mod:`ptobj.recipes.evaluation.zero_shot`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Sequence

RATES = ("examples", "temperature")


@dataclass(frozen=True)
class MixtureDataset:
    """One dataset of a mixture: its templates file and, optionally, where its records are."""

    # a templates YAML: embedded:NAME (ptobj/data_pipeline/templates/NAME.yaml) or a file
    templates: str = ""
    # its records: a .jsonl/.json/.parquet file, a hub dataset or embedded:NAME; "" = the templates file's
    source: str = ""
    subset: str = ""        # hub datasets: the configuration ("" = the templates file's)
    split: str = ""         # hub datasets: the training split ("" = the templates file's, else train)
    eval_split: str = ""    # hub datasets: the split a held-out cluster is scored on ("" = the templates file's)
    max_records: int = 0    # read at most this many records (FLAN: 30,000); 0 = all

    def __post_init__(self):
        if not isinstance(self.templates, str) or not self.templates:
            raise ValueError("templates: empty; name a templates YAML (embedded:NAME or a file)")
        if self.max_records < 0:
            raise ValueError(f"max_records must be >= 0 (0: all), got {self.max_records}")


@dataclass(frozen=True)
class ZeroShotConfig:
    """How the held-out clusters are scored (:mod:`ptobj.recipes.evaluation.zero_shot`)."""

    max_items: int = 0          # per held-out dataset, a seeded subset of its records; 0 = all
    templates: int = 0          # forward templates each item is scored under: 0 = all of them, n = n drawn
    max_new_tokens: int = 16    # generation tasks: the answer's budget (greedy)
    batch_size: int = 32        # sequences per forward pass
    seed: int = 0               # the subset and the drawn templates

    def __post_init__(self):
        for name in ("max_items", "templates", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"zero_shot.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"zero_shot.{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class MixtureConfig:
    datasets: list[MixtureDataset] = field(default_factory=list)
    rate: Literal["examples", "temperature"] = "examples"
    cap: int = 3000             # K; 0 = no cap
    temperature: float = 1.0    # T (rate: temperature)
    held_out: list[str] = field(default_factory=list)   # clusters left out of training, scored zero-shot
    zero_shot: ZeroShotConfig = field(default_factory=ZeroShotConfig)

    def __post_init__(self):
        if not self.datasets:
            raise ValueError("mixture.datasets: empty; list the datasets ({templates: ...} each)")
        if self.rate not in RATES:
            raise ValueError(f"mixture.rate must be one of {RATES}, got {self.rate!r}")
        if self.cap < 0:
            raise ValueError(f"mixture.cap must be >= 0 (0: no cap), got {self.cap}")
        if not self.temperature > 0:
            raise ValueError(f"mixture.temperature must be > 0, got {self.temperature}")
        if self.rate == "examples" and self.temperature != 1.0:
            raise ValueError(f"mixture.temperature={self.temperature} needs mixture.rate: temperature")
        if len(set(self.held_out)) != len(self.held_out):
            raise ValueError(f"mixture.held_out: a cluster named twice: {list(self.held_out)}")


def rates(sizes: Sequence[int], *, rate: str = "examples", cap: int = 0, temperature: float = 1.0) -> list[float]:
    """Each dataset's share of the mixture from its number of training records (module doc)."""
    if rate not in RATES:
        raise ValueError(f"mixture rate must be one of {RATES}, got {rate!r}")
    if not sizes or any(int(n) < 0 for n in sizes) or sum(sizes) <= 0:
        raise ValueError(f"mixture: dataset sizes must be >= 0 with a positive sum, got {list(sizes)}")
    capped = [min(int(n), cap) if cap else int(n) for n in sizes]
    power = 1.0 / temperature if rate == "temperature" else 1.0
    weights = [c ** power if c else 0.0 for c in capped]
    total = math.fsum(weights)
    return [w / total for w in weights]


def counts(shares: Sequence[float], total: int) -> list[int]:
    """``shares * total`` rounded to integers summing to ``total`` (largest remainders; ties to
    the earlier dataset)."""
    exact = [s * total for s in shares]
    out = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda d: (-(exact[d] - out[d]), d))
    for d in by_remainder[: total - sum(out)]:
        out[d] += 1
    return out


def epoch_size(sizes: Sequence[int], cap: int) -> int:
    """``N = sum_d min(n_d, K)``: the examples of one epoch of the mixture."""
    return sum(min(int(n), cap) if cap else int(n) for n in sizes)


def passes(sizes: Sequence[int], per_epoch: Sequence[int]) -> int:
    """Mixture epochs per sampler epoch, so each dataset's records are all seen:
    ``max_d ceil(n_d / c_d)`` over the datasets that contribute."""
    return max([math.ceil(int(n) / c) for n, c in zip(sizes, per_epoch) if c > 0] or [1])
