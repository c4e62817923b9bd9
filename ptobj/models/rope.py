"""megatron's RotaryEmbedding, minus its move of ``inv_freq`` to CUDA.

megatron-core 0.16.1 moves the frequencies to ``torch.cuda.current_device()``
on the first forward, which fails on a CPU-only build; this subclass does that
move only when CUDA is available.
"""

from __future__ import annotations

import torch
from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding


class DeviceRotaryEmbedding(RotaryEmbedding):
    def get_emb(self, max_seq_len: int, offset: int = 0) -> torch.Tensor:
        if self.inv_freq.device.type == "cpu" and torch.cuda.is_available():
            self.inv_freq = self.inv_freq.to(device=torch.cuda.current_device())
        freqs = self.get_freqs_non_repeated(max_seq_len, offset)
        if self.rotary_interleaved:
            emb = torch.stack((freqs.view(-1, 1), freqs.view(-1, 1)), dim=-1).view(freqs.shape[0], -1)
        else:
            emb = torch.cat((freqs, freqs), dim=-1)
        return emb[:, None, None, :]


def make_device_safe(rotary: RotaryEmbedding) -> None:
    """Swap the class of an existing megatron RotaryEmbedding in place."""
    rotary.__class__ = DeviceRotaryEmbedding
