"""The sample contract shared by every transform.

A sample is a ``dict[str, numpy.ndarray]``. A transform is a callable built from
a frozen, validated config dataclass and called as ``transform(sample, rng)``
with a ``numpy.random.Generator``; it never touches global random state, so
the same (sample, seed) always gives the same output.

Output fields (all length ``S`` = the transform's ``seq_length``, padded):

=============  ==============  ===============================================
field          dtype           meaning
=============  ==============  ===============================================
tokens         int32 [S]       model input
labels         int32 [S]       target per position (next token for decoders,
                               original token for encoders)
loss_mask      float32 [S]     1.0 where the token loss counts
position_ids   int32 [S]       positions, restarting per document if wanted
segment_ids    int32 [S]       document / segment index; UniLM LM id
kv_start       int32 [S]       query i sees keys j with
kv_end         int32 [S]         kv_start[i] <= j < kv_end[i]
=============  ==============  ===============================================

Input ("raw") samples come from the data pipeline's samplers:

* packed context (decoders): ``tokens`` int32 [S+1], documents joined by EOT.
* segment (encoders): ``tokens`` int32 [n] of one document, ``word_start``
  bool [n] (True where a token starts a word), optional ``sentence_start``
  bool [n] (True where a token starts a sentence / line block).
* For NSP also ``random_tokens`` / ``random_word_start``: a segment of another
  document, used as the negative "B".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Protocol

import numpy as np

Sample = dict[str, np.ndarray]

CONTRACT_FIELDS = ("tokens", "labels", "loss_mask", "position_ids", "segment_ids", "kv_start", "kv_end")


@dataclass(frozen=True)
class SpecialTokens:
    """Reserved ids the pipeline emits; raw text can never encode to them."""

    pad: int = 0
    eot: int = 1
    mask: int = 2
    cls: int = 3
    sep: int = 4
    fim_prefix: int = 5
    fim_middle: int = 6
    fim_suffix: int = 7
    fim_pad: int = 8
    unk: int = 9
    # ids below this are reserved for the pipeline; tokenizer pieces start here
    first_regular: int = 16

    def is_special(self, ids: np.ndarray) -> np.ndarray:
        return np.asarray(ids) < self.first_regular

    def ids(self) -> np.ndarray:
        return np.arange(self.first_regular, dtype=np.int32)


class Transform(Protocol):
    """``sample -> sample``; declares the fields it reads and writes."""

    reads: tuple[str, ...]
    writes: tuple[str, ...]

    def __call__(self, sample: Mapping[str, np.ndarray], rng: np.random.Generator) -> Sample: ...


def require_fields(sample: Mapping[str, np.ndarray], fields: tuple[str, ...], who: str) -> None:
    missing = [f for f in fields if f not in sample]
    if missing:
        raise KeyError(f"{who}: sample lacks field(s) {missing}; it has {sorted(sample)}")


def check_rate(name: str, value: float) -> None:
    if not (0.0 <= float(value) <= 1.0):
        raise ValueError(f"{name} must lie in [0, 1], got {value!r}")


def check_positive(name: str, value: float) -> None:
    if not float(value) > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


def check_transform_args(owner: str, config, config_type: type, special: SpecialTokens, vocab_size: int) -> int:
    """The checks every transform constructor makes; returns ``vocab_size`` as an int."""
    if not isinstance(config, config_type):
        raise TypeError(f"{owner} needs a {config_type.__name__}, got {type(config).__name__}")
    if int(vocab_size) <= special.first_regular:
        raise ValueError(f"vocab_size must exceed first_regular={special.first_regular}, got {vocab_size}")
    return int(vocab_size)
