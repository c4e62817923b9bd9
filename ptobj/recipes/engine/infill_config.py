"""Settings of the infilling evaluation (:mod:`ptobj.recipes.evaluation.infill`), the ``eval.infill`` section."""

from __future__ import annotations

from dataclasses import dataclass

KINDS = ("single_line", "multi_line", "random_span")
DECODINGS = ("greedy", "best_of_n", "eot_best_of_n")


@dataclass(frozen=True)
class InfillConfig:
    # run at the end of training when the objective declares an infilling evaluation (FIM)
    enabled: bool = True
    kinds: tuple[str, ...] = KINDS
    tasks_per_kind: int = 8
    # of those, the first this many per kind are decoded (greedy and samples: the exact-match
    # metrics); every task is scored by the loss of its reference middle, which is cheap.
    # 0: decode them all
    decode_per_kind: int = 0
    # best-of-n: n samples at this temperature, ranked by mean log-probability (greedy is the baseline)
    samples: int = 4
    temperature: float = 0.8
    max_new_tokens: int = 24
    # middles longer than this many tokens are not picked (default: max_new_tokens - 1, room for EOT)
    max_middle_tokens: int = 0
    # prompt modes (default: what the objective declares, PSM and SPM for FIM)
    modes: tuple[str, ...] = ()
    # tasks are drawn from held-out documents with this seed; sampled tokens from (seed, task, sample)
    seed: int = 0
    # rows decoded together (greedy and samples of several tasks)
    batch_rows: int = 256

    def __post_init__(self):
        bad = [k for k in self.kinds if k not in KINDS]
        if bad or not self.kinds:
            raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {self.kinds!r}")
        for name in ("tasks_per_kind", "samples", "max_new_tokens", "batch_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.decode_per_kind < 0:
            raise ValueError(f"decode_per_kind must be >= 0 (0: every task), got {self.decode_per_kind}")
        if not 0 <= self.seed <= 2**63 - 1:
            raise ValueError(f"seed must lie in [0, 2**63 - 1], got {self.seed}")
        if self.max_middle_tokens < 0:
            raise ValueError(f"max_middle_tokens must be >= 0, got {self.max_middle_tokens}")
        bad = [m for m in self.modes if m not in ("psm", "spm")]
        if bad:
            raise ValueError(f"modes must be 'psm' and/or 'spm', got {self.modes!r}")

    @property
    def middle_tokens(self) -> int:
        return self.max_middle_tokens or max(1, self.max_new_tokens - 1)
