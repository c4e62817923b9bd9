"""Row-interval masked attention: a Triton kernel (forward and backward), its torch
reference, and torch helpers that build the intervals. Importing this package does
not import triton. Needs the ``[train]`` extra (torch; triton for the kernel)."""

from objectives.extras import require

require("train", "torch", by=__name__)

from .attention import masked_attention
from .reference import masked_attention_reference

__all__ = ["masked_attention", "masked_attention_reference"]
