"""MASS: masked sequence-to-sequence pre-training (Song et al. 2019), in a single decoder stack.

Per segment of ``m`` tokens (one document's span of whole sentences, as MASS
reads sentences):

1. one contiguous fragment of ``k = floor(fragment_share * m + 1/2)`` tokens
   (at least 1) is chosen, its start uniform over the ``m - k + 1`` places
   (the paper: k = 50% of m, a random start);
2. source: the segment with the fragment corrupted as BERT does, per token
   80% [MASK], 10% a random regular id, 10% unchanged
   (:class:`ptobj.objectives.masking.Corruption`, drawn from the row's own stream);
   target: the fragment's original tokens;
3. the row is ``source [SEP] fragment [EOT]`` (:mod:`ptobj.objectives.seq2seq`): the
   source is seen bidirectionally (MASS's encoder), the fragment causally over
   the source and the fragment before it (MASS's decoder, which sees only the
   fragment positions, shifted right: [SEP] predicts the first fragment token),
   and the loss covers the fragment and its EOT.

In MASS the decoder's position embeddings repeat the fragment's positions in
the sentence; here the target rows take the positions after the source (the
decoder's rotary positions follow the row), and the fragment's place shows in
the source through the [MASK] run it attends to.

The sampler cuts ``m`` = the longest segment whose row still fits
``seq_length + 1`` ids (``input_length``: ``m + k + 2``); for ``seq_length``
512 that is 340 tokens with a fragment of 170.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ptobj.objectives.masking import Corruption, check_action_probs
from ptobj.objectives.sample import CONTRACT_FIELDS, Batch, ConfiguredTransform, SpecialTokens, lengths
from ptobj.objectives.seq2seq import single_stack
from ptobj.objectives.streams import RowStreams, site
from ptobj.objectives.task import Task

_SITE_START = site("mass.fragment_start")


@dataclass(frozen=True)
class MASSConfig:
    seq_length: int = 512
    fragment_share: float = 0.5                       # k / m: the masked fragment's share of the segment
    replace_probs: tuple = (0.8, 0.1, 0.1)            # fragment tokens in the source: [MASK], random, kept

    def __post_init__(self):
        if not isinstance(self.seq_length, (int, np.integer)) or isinstance(self.seq_length, bool) \
                or self.seq_length < 3:
            raise ValueError(f"seq_length must be an int >= 3 ([MASK] [SEP] x [EOT]), got {self.seq_length!r}")
        if not 0.0 < float(self.fragment_share) <= 1.0:
            raise ValueError(f"fragment_share must lie in (0, 1], got {self.fragment_share!r}")
        check_action_probs(self.replace_probs, "replace_probs")


def fragment_length(m, config: MASSConfig) -> np.ndarray:
    """Tokens in the masked fragment of a segment of ``m`` tokens (arrays or ints): the share
    rounded half up, at least 1 (0 for an empty segment)."""
    m = np.asarray(m, np.int64)
    k = np.floor(m * float(config.fragment_share) + 0.5).astype(np.int64)
    return np.clip(k, np.minimum(m, 1), m)


def input_length(config: MASSConfig) -> int:
    """The longest segment whose ``source [SEP] fragment [EOT]`` fits ``seq_length + 1`` ids."""
    m = np.arange(1, int(config.seq_length) + 1)
    fits = m + fragment_length(m, config) + 2 <= int(config.seq_length) + 1
    return int(m[fits].max())


class MASS(ConfiguredTransform):
    """MASS on a segment, as ``source [SEP] fragment [EOT]`` in one decoder row."""

    config_type = MASSConfig
    reads = ("tokens",)
    writes = CONTRACT_FIELDS

    def __init__(self, config: MASSConfig, *, special: SpecialTokens, vocab_size: int, tokenizer=None):
        super().__init__(config, special=special, vocab_size=vocab_size)
        self.width = input_length(config)
        self.corruption = Corruption(config.replace_probs, per_span=False, mask_id=special.mask,
                                     low=special.first_regular, high=self.vocab_size)

    def apply(self, batch: Batch, streams: RowStreams) -> Batch:
        source = np.array(np.asarray(batch["tokens"])[:, :self.width], dtype=np.int32, order="C")  # a copy
        m = np.minimum(lengths(batch), self.width)
        B, W = source.shape
        k = fragment_length(m, self.config)
        u = streams.uniform(_SITE_START, 1)[:, 0]
        start = np.minimum((u * (m - k + 1)).astype(np.int64), m - k)
        j = np.arange(int(k.max(initial=0)))[None, :]
        in_fragment = j < k[:, None]
        target = np.where(in_fragment, np.take_along_axis(source, np.minimum(start[:, None] + j, max(W - 1, 0)),
                                                          axis=1), 0).astype(np.int32)
        rows, col = np.nonzero(in_fragment)
        self.corruption(streams, source, rows * W + start[rows] + col, rows, np.arange(B) * W + start)
        return single_stack(source, m, target, k, self.config.seq_length, self.special)


TASKS = (
    Task("mass", MASS, MASSConfig, model="decoder", sampler="segment", input_length=input_length,
         special=("mask", "sep", "eot", "pad")),
)
