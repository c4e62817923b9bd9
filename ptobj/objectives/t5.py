"""T5 span corruption (Raffel et al. 2020, section 3.1.4), in a single decoder stack.

Per row of ``n`` tokens (a packed context, read as one text as T5 reads its
concatenated documents):

1. ``round(n * noise_density)`` noise tokens (at least 1, at most n - 1) in
   ``round(noise / mean_noise_span_length)`` spans (at least 1); the noise and
   the non-noise tokens are each cut into that many non-empty runs by a uniform
   random composition, and the runs alternate, non-noise first (T5's
   ``random_spans_noise_mask``);
2. source: the text with each noise span replaced by one sentinel
   (``<extra_id_i>`` = ``special.sentinels()[i]``, numbered in order; the
   sentinels sit after the tokenizer's pieces, as in T5);
   target: each sentinel followed by the span it replaced;
3. the row is ``source [SEP] target [EOT]`` (:mod:`ptobj.objectives.seq2seq`): the
   source is seen bidirectionally, the target causally, and the loss covers the
   target and its EOT. T5 ends both parts with EOS; here [SEP] ends the source.

The sampler cuts ``n`` = the longest input whose corrupted row still fits
``seq_length + 1`` ids (``input_length``): ``n + 2 * spans(n) + 2``; for
``seq_length`` 512 that is 465 tokens with 70 noise tokens in 23 spans. The Task declares
that many sentinels, so the recipe reserves them and grows the model's vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ptobj.objectives.sample import CONTRACT_FIELDS, Batch, ConfiguredTransform, SpecialTokens, lengths
from ptobj.objectives.seq2seq import single_stack
from ptobj.objectives.streams import RowStreams, site
from ptobj.objectives.task import Task


@dataclass(frozen=True)
class T5Config:
    seq_length: int = 512
    noise_density: float = 0.15          # share of tokens in noise spans
    mean_noise_span_length: float = 3.0  # mean span length, in tokens

    def __post_init__(self):
        if not isinstance(self.seq_length, (int, np.integer)) or isinstance(self.seq_length, bool) \
                or self.seq_length < 5:
            raise ValueError(f"seq_length must be an int >= 5 (x <extra_id_0> [SEP] <extra_id_0> y [EOT]), "
                             f"got {self.seq_length!r}")
        if not 0.0 < float(self.noise_density) < 1.0:
            raise ValueError(f"noise_density must lie in (0, 1), got {self.noise_density!r}")
        if not float(self.mean_noise_span_length) >= 1.0:
            raise ValueError(f"mean_noise_span_length must be >= 1, got {self.mean_noise_span_length!r}")


def noise_counts(n, config: T5Config) -> tuple[np.ndarray, np.ndarray]:
    """(noise tokens, noise spans) for inputs of ``n`` tokens (arrays or ints), as T5 counts them;
    rows of fewer than 2 tokens get no noise."""
    n = np.asarray(n, np.int64)
    noise = np.clip(np.rint(n * float(config.noise_density)).astype(np.int64), 1, np.maximum(n - 1, 1))
    spans = np.maximum(np.rint(noise / float(config.mean_noise_span_length)).astype(np.int64), 1)
    spans = np.minimum(spans, n - noise)                   # every span needs a non-noise run before it
    short = n < 2
    return np.where(short, 0, noise), np.where(short, 0, spans)


def input_length(config: T5Config) -> int:
    """The longest input whose ``source [SEP] target [EOT]`` fits ``seq_length + 1`` ids."""
    n = np.arange(1, int(config.seq_length) + 1)
    _, spans = noise_counts(n, config)
    fits = n + 2 * spans + 2 <= int(config.seq_length) + 1
    return int(n[fits].max())


def sentinels_needed(config: T5Config) -> int:
    return int(noise_counts(input_length(config), config)[1])


def _compositions(u: np.ndarray, total: np.ndarray, parts: np.ndarray) -> np.ndarray:
    """Per row, ``total`` cut into ``parts`` non-empty runs, uniformly among all such cuts: the
    ``parts - 1`` cut points are the cut positions 1..total-1 with the smallest ``u``. Returns the
    run lengths [B, K] (K = max parts; unused runs are 0). ``u``: uniforms [B, >= max total - 1]."""
    B = u.shape[0]
    K = int(parts.max(initial=0))
    if K == 0:
        return np.zeros((B, 0), np.int64)
    width = max(int(total.max(initial=0)) - 1, 0)
    cut = np.arange(1, width + 1)[None, :]
    key = np.where(cut < total[:, None], u[:, :width], 2.0)
    chosen = np.sort(np.argsort(key, axis=1, kind="stable")[:, :K - 1] + 1, axis=1) if width else \
        np.zeros((B, 0), np.int64)
    used = np.arange(K - 1)[None, :] < (parts - 1)[:, None]
    chosen = np.where(used, chosen, total[:, None])        # unused cuts sit at the end: empty runs
    bounds = np.concatenate([np.zeros((B, 1), np.int64), np.sort(chosen, axis=1), total[:, None]], axis=1)
    return np.diff(bounds, axis=1)


class T5SpanCorruption(ConfiguredTransform):
    """T5's span-corruption objective on a packed context, as ``source [SEP] target [EOT]``."""

    config_type = T5Config
    reads = ("tokens",)
    writes = CONTRACT_FIELDS

    def __init__(self, config: T5Config, *, special: SpecialTokens, vocab_size: int, tokenizer=None):
        super().__init__(config, special=special, vocab_size=vocab_size)
        self.width = input_length(config)
        self.sentinel_ids = special.sentinels(sentinels_needed(config))

    def apply(self, batch: Batch, streams: RowStreams) -> Batch:
        tokens = np.asarray(batch["tokens"])[:, :self.width].astype(np.int32)
        n = np.minimum(lengths(batch), self.width)
        B, W = tokens.shape
        noise, spans = noise_counts(n, self.config)
        noise_runs = _compositions(streams.uniform(site("t5.noise_runs"), max(W - 1, 1)), noise, spans)
        keep_runs = _compositions(streams.uniform(site("t5.keep_runs"), max(W - 1, 1)), n - noise, spans)
        K = noise_runs.shape[1]
        # runs alternate keep, noise, keep, noise, ...; run r of row b covers its next tokens. A
        # last keep run holds what a row without noise keeps (fewer than 2 tokens: all of it).
        runs = np.concatenate([np.stack([keep_runs, noise_runs], axis=2).reshape(B, 2 * K),
                               (n - keep_runs.sum(axis=1) - noise_runs.sum(axis=1))[:, None]], axis=1)
        col = np.arange(W)[None, :]
        real = col < n[:, None]
        run = np.full((B, W), -1, np.int64)                 # padding columns are in no run
        run[real] = np.repeat(np.tile(np.arange(2 * K + 1), B), runs.reshape(-1))
        is_noise = real & (run % 2 == 1)
        span = run // 2
        first = is_noise & np.concatenate([np.ones((B, 1), bool), run[:, 1:] != run[:, :-1]], axis=1)
        sentinel = self.sentinel_ids[np.clip(span, 0, max(len(self.sentinel_ids) - 1, 0))] \
            if len(self.sentinel_ids) else np.zeros_like(tokens)
        # source: non-noise tokens, and one sentinel per noise span
        in_source = real & (~is_noise | first)
        source_len = in_source.sum(axis=1)
        source = np.zeros((B, W), np.int32)
        source[np.nonzero(in_source)[0], (np.cumsum(in_source, axis=1) - 1)[in_source]] = \
            np.where(first, sentinel, tokens)[in_source]
        # target: per span its sentinel, then its tokens: noise token t goes after the t-th
        # noise tokens before it and span + 1 sentinels
        target_len = noise + spans
        target = np.zeros((B, W + K), np.int32)
        before = np.cumsum(is_noise, axis=1) - is_noise
        r, c = np.nonzero(is_noise)
        target[r, before[r, c] + span[r, c] + 1] = tokens[r, c]
        r, c = np.nonzero(first)
        target[r, before[r, c] + span[r, c]] = sentinel[r, c]
        return single_stack(source, source_len, target, target_len, self.config.seq_length, self.special)


TASKS = (
    Task("t5", T5SpanCorruption, T5Config, model="decoder", sampler="packed", input_length=input_length,
         special=("sep", "eot", "pad"), sentinels=sentinels_needed),
)
