"""Row-interval masked attention: Triton kernels (forward and backward), a FlexAttention
and an SDPA backend, and the torch reference, all behind ``masked_attention`` and an
``AttentionMask`` built once per micro-batch. Importing this package does not import
triton. Needs the ``[train]`` extra (torch; triton for the kernels)."""

from ptobj.extras import require

require("train", "torch", by=__name__)

from .attention import masked_attention, resolve_backend
from .attention_mask import BACKENDS, AttentionMask
from .reference import masked_attention_reference

__all__ = ["AttentionMask", "BACKENDS", "masked_attention", "masked_attention_reference", "resolve_backend"]
