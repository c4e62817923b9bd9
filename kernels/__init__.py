"""Row-interval masked attention: a Triton kernel (forward and backward), its torch
reference, and torch helpers that build the intervals. Importing this package does
not import triton."""

from .attention import masked_attention
from .reference import masked_attention_reference

__all__ = ["masked_attention", "masked_attention_reference"]
