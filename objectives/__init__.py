"""Pretraining objectives as pure, seeded numpy transforms (no torch needed)."""

from objectives.sample import CONTRACT_FIELDS, Sample, SpecialTokens, Transform
from objectives import intervals

__all__ = ["CONTRACT_FIELDS", "Sample", "SpecialTokens", "Transform", "intervals"]
