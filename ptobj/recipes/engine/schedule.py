"""Learning-rate schedule: linear warmup, then cosine decay to a floor.

Stateless on purpose: the rate is a pure function of the step, so resuming
needs nothing but the step number, and it works the same for torch's AdamW and
megatron-core's distributed optimizer (both expose ``param_groups``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class WarmupCosine:
    peak_lr: float
    warmup_steps: int
    total_steps: int
    min_lr: float = 0.0

    def __post_init__(self):
        if self.peak_lr < 0 or self.min_lr < 0:
            raise ValueError(f"learning rates must be >= 0, got peak_lr={self.peak_lr}, min_lr={self.min_lr}")
        if self.min_lr > self.peak_lr:
            raise ValueError(f"min_lr ({self.min_lr}) exceeds peak_lr ({self.peak_lr})")
        if self.warmup_steps < 0 or self.total_steps < 1:
            raise ValueError(f"need warmup_steps >= 0 and total_steps >= 1, got {self.warmup_steps}, {self.total_steps}")

    def __call__(self, step: int) -> float:
        """Rate used by optimizer step ``step`` (0-based)."""
        if self.warmup_steps > 0 and step < self.warmup_steps:
            return self.peak_lr * (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr + 0.5 * (self.peak_lr - self.min_lr) * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
