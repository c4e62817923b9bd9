"""A LayerNorm / RMSNorm for megatron specs that also works with sequence parallelism.

megatron-core's fallback norm without apex or Transformer Engine
(``WrappedTorchNorm``) refuses ``sequence_parallel``. This one builds the same
torch module and marks its parameters ``sequence_parallel`` the way megatron's
fused norms do: under sequence parallelism each rank sees a slice of the
sequence, so those gradients must be summed over the tensor-parallel group
after backward (``ptobj.models.parallel.allreduce_sequence_parallel_grads``, or
megatron's ``finalize_model_grads``).
"""

from __future__ import annotations

import torch


class SequenceParallelNorm:
    def __new__(cls, config, hidden_size: int, eps: float = 1e-5, persist_layer_norm: bool = False,
                zero_centered_gamma: bool = False, normalization: str | None = None):
        kind = normalization or config.normalization
        norm_cls = {"RMSNorm": torch.nn.RMSNorm, "LayerNorm": torch.nn.LayerNorm}.get(kind)
        if norm_cls is None:
            raise ValueError(f"normalization must be 'RMSNorm' or 'LayerNorm', got {kind!r}")
        norm = norm_cls(hidden_size, eps=eps, dtype=config.params_dtype)
        for param in norm.parameters():
            param.sequence_parallel = config.sequence_parallel
        return norm
