"""The sample contract shared by every transform.

A sample is a ``dict[str, numpy.ndarray]``; a *batch* is the same with a
leading row axis ``B`` on every field. A transform is a :class:`Transform`
built from a frozen, validated config dataclass. It has ONE implementation,
``apply(batch, streams)``, vectorised over the rows of a batch, in which row
``b`` draws only from its own counter-based stream ``streams`` row b
(:class:`ptobj.objectives.streams.RowStreams`, keyed by the sample's (seed, epoch,
index)). So a row's output never depends on which batch, worker or read order
it came in, and a single sample is a batch of one:

    out = t.batch(batch, RowStreams.for_rows(seed, epoch, indices))   # [B, ...] fields
    out = t.batch([s1, s2], RowStreams.for_rows(seed, 0, [0, 1]))     # a list is stacked first
    one = t(sample, seed, epoch=epoch, index=index)                   # the batch of one, row 0

``t(sample, seed, epoch=e, index=i)`` is row ``b`` of ``t.batch(...)`` for any batch
holding that sample with key ``(seed, e, i)`` at row b. There is no hidden global
state.

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

Raw batches. Per-token fields come in groups that share a length: the group
``p`` is ``p + "tokens"`` and every 1-D field whose name starts with ``p``
(``word_start``, ``sentence_start`` in group ""; ``random_word_start`` in group
"random_"; the longest prefix wins). In a batch a group's fields are
right-padded to one width ``W`` and ``p + "length"`` (int64 [B]) holds each
row's true length; without it every row is full width (packed contexts).
Padding is zeros and never read. Scalar fields become ``[B]``.
:func:`stack` builds a batch from samples and :func:`row` cuts one back out;
the samplers read whole batches in this form directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from ptobj.objectives.streams import RowStreams

Sample = dict[str, np.ndarray]
Batch = dict[str, np.ndarray]

CONTRACT_FIELDS = ("tokens", "labels", "loss_mask", "position_ids", "segment_ids", "kv_start", "kv_end")


@dataclass(frozen=True)
class SpecialTokens:
    """Reserved ids the pipeline emits; raw text can never encode to them (a literal
    ``"<|user|>"`` in a record is ordinary text).

    The named ids sit below ``first_regular``, where the tokenizer's pieces start.
    Span sentinels (T5's ``<extra_id_i>`` = ``sentinel_base + i``) sit after the
    pieces, as in T5, so one prepared corpus serves objectives with and without
    them: a run that needs ``n`` sentinels sets ``sentinel_base`` to the
    tokenizer's vocabulary size and grows the model's vocabulary by ``n``."""

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
    # the chat template's control tokens (ptobj.objectives.sft): a turn is <|role|> content <|end|>
    chat_system: int = 10
    chat_user: int = 11
    chat_assistant: int = 12
    chat_end: int = 13
    # ids below this are reserved for the pipeline; tokenizer pieces start here
    first_regular: int = 16
    sentinel_base: int = 0
    num_sentinels: int = 0

    def __post_init__(self):
        if int(self.num_sentinels) < 0:
            raise ValueError(f"SpecialTokens.num_sentinels must be >= 0, got {self.num_sentinels}")
        if self.num_sentinels and self.sentinel_base < self.first_regular:
            raise ValueError(f"SpecialTokens.sentinel_base={self.sentinel_base} must lie after the tokenizer's "
                             f"pieces (>= first_regular={self.first_regular})")

    def sentinels(self, count: int | None = None) -> np.ndarray:
        """The first ``count`` sentinel ids (all of them by default), int32."""
        n = self.num_sentinels if count is None else int(count)
        if n > self.num_sentinels:
            raise ValueError(f"{n} sentinel ids wanted, these special tokens reserve {self.num_sentinels} "
                             "(recipes reserve what the objective's Task declares)")
        return np.arange(self.sentinel_base, self.sentinel_base + n, dtype=np.int32)

    def with_sentinels(self, vocab_size: int, count: int) -> "SpecialTokens":
        """These ids plus ``count`` sentinels after a vocabulary of ``vocab_size`` ids."""
        import dataclasses

        return dataclasses.replace(self, sentinel_base=int(vocab_size), num_sentinels=int(count))

    def is_special(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids)
        out = ids < self.first_regular
        if self.num_sentinels:
            out |= (ids >= self.sentinel_base) & (ids < self.sentinel_base + self.num_sentinels)
        return out

    def ids(self) -> np.ndarray:
        return np.arange(self.first_regular, dtype=np.int32)


def _group(field: str, groups: Sequence[str]) -> str | None:
    """The group (prefix) a per-token field belongs to: the longest ``p`` in ``groups``
    that ``field`` starts with."""
    best = None
    for p in groups:
        if field.startswith(p) and (best is None or len(p) > len(best)):
            best = p
    return best


def _groups(fields) -> list[str]:
    return [f[: -len("tokens")] for f in fields if f.endswith("tokens")]


def stack(samples: Sequence[Mapping[str, np.ndarray]]) -> Batch:
    """Samples -> a batch: per-token fields right-padded per group (zeros) with
    ``p + "length"`` [B]; scalar fields -> [B]; other fields stacked (same shape)."""
    if not samples:
        raise ValueError("stack: no samples")
    fields = list(samples[0])
    for i, s in enumerate(samples[1:], 1):
        if set(s) != set(fields):
            raise KeyError(f"stack: sample {i} has fields {sorted(s)}, sample 0 has {sorted(fields)}")
    groups = _groups(fields)
    cols = {f: [np.asarray(s[f]) for s in samples] for f in fields}
    lengths = {}
    for p in groups:
        arrs = cols[p + "tokens"]
        if any(a.ndim != 1 for a in arrs):
            raise ValueError(f"stack: field {p + 'tokens'!r} must be 1-D in every sample")
        lengths[p] = np.fromiter((a.shape[0] for a in arrs), np.int64, len(arrs))
    out: Batch = {}
    B = len(samples)
    for f in fields:
        arrs = cols[f]
        nd = arrs[0].ndim
        if any(a.ndim != nd for a in arrs):
            raise ValueError(f"stack: field {f!r} has {nd} dimensions in sample 0 but not in every sample")
        if nd == 1 and groups:
            p = _group(f, groups)
            if p is not None:
                n = lengths[p]
                for i, a in enumerate(arrs):
                    if a.shape[0] != n[i]:
                        raise ValueError(f"stack: sample {i}: field {f!r} has {a.shape[0]} values, "
                                         f"{p + 'tokens'!r} has {n[i]}")
                W = int(n.max(initial=0))
                grid = np.zeros((B, W), arrs[0].dtype)
                for i, a in enumerate(arrs):
                    grid[i, : a.shape[0]] = a
                out[f] = grid
                continue
        shapes = {a.shape for a in arrs}
        if len(shapes) != 1:
            raise ValueError(f"stack: field {f!r} has differing shapes {sorted(shapes)}")
        out[f] = np.stack(arrs)
    for p, n in lengths.items():
        out[p + "length"] = n
    return out


def lengths(batch: Mapping[str, np.ndarray], prefix: str = "") -> np.ndarray:
    """Per-row length of group ``prefix`` (int64 [B]): ``prefix + "length"``, or the full
    width when the batch has no such field."""
    tok = batch[prefix + "tokens"]
    n = batch.get(prefix + "length")
    if n is None:
        return np.full(tok.shape[0], tok.shape[1], np.int64)
    n = np.asarray(n, np.int64)
    if n.shape != (tok.shape[0],) or (n.size and (n.min() < 0 or n.max() > tok.shape[1])):
        raise ValueError(f"{prefix}length must hold one length in [0, {tok.shape[1]}] per row, got {n!r}")
    return n


def before(n: np.ndarray, width: int) -> np.ndarray:
    """[B, width] bool: True at the columns ``j < n[b]`` of row b (compared in int32: half
    the bytes of int64 grids; ``n`` is clipped into int32 range first)."""
    cols = np.arange(int(width), dtype=np.int32)
    return cols[None, :] < np.minimum(n, width).astype(np.int32)[:, None]


def windows(flat: np.ndarray, start: np.ndarray, n: np.ndarray, width: int, dtype) -> np.ndarray:
    """Rows ``flat[start[b] : start[b] + n[b]]`` as a [B, width] array of ``dtype``, zero-padded.

    The rows are picked from a sliding-window view of ``flat`` (one fancy index on its
    first axis copies them whole); rows that would run past the end are copied one by one.
    The tails are zeroed in the same pass that converts to ``dtype``."""
    B = start.size
    if width == 0 or B == 0:
        return np.zeros((B, width), dtype)
    N = flat.shape[0]
    fits = start + width <= N
    view = np.lib.stride_tricks.as_strided(flat, shape=(N - width + 1, width), strides=(flat.strides[0],) * 2,
                                           writeable=False) if N >= width else None
    if view is not None and fits.all():
        rows = view[start]
    else:
        rows = np.zeros((B, width), flat.dtype)
        if view is not None and fits.any():
            rows[fits] = view[start[fits]]
        for b in np.flatnonzero(~fits).tolist():
            rows[b, : n[b]] = flat[start[b]: start[b] + n[b]]
    if n.min() >= width:
        return rows.astype(dtype, copy=False)
    # what follows a short row is not its own
    return np.multiply(rows, before(n, width), out=np.empty((B, width), dtype), casting="unsafe")


def row(batch: Mapping[str, np.ndarray], i: int) -> Sample:
    """Row ``i`` of a batch as a sample (per-token fields cut to their group's length)."""
    groups = [p for p in _groups(batch) if p + "length" in batch]
    out: Sample = {}
    for f, v in batch.items():
        if f.endswith("length") and f[: -len("length")] in groups:
            continue
        v = np.asarray(v)[i]
        p = _group(f, groups) if v.ndim == 1 else None
        if p is not None:
            v = v[: int(batch[p + "length"][i])]
        out[f] = v
    return out


def as_batch(batch) -> Batch:
    """A batch as given, or a list of samples stacked into one."""
    if isinstance(batch, (list, tuple)):
        return stack(batch)
    if not isinstance(batch, Mapping):
        raise TypeError(f"a batch is a dict of [B, ...] arrays or a list of samples, got {type(batch).__name__}")
    return dict(batch)


def batch_rows(batch: Mapping[str, np.ndarray], who: str) -> int:
    """The batch's number of rows B (every field must agree)."""
    sizes = {f: (v.shape[0] if v.ndim else None) if isinstance(v, np.ndarray) else
             (np.shape(v)[0] if np.ndim(v) else None) for f, v in batch.items()}
    values = set(sizes.values())
    if len(values) != 1 or None in values:
        bad = [f for f, b in sizes.items() if b is None]
        if bad:
            raise ValueError(f"{who}: batch field(s) {bad} have no row axis (a single sample? use t(sample, seed))")
        raise ValueError(f"{who}: batch fields disagree on the number of rows: {sizes}")
    return values.pop()


class Transform:
    """Base of every objective transform: ``batch -> batch`` with per-row streams.

    Subclasses set ``reads`` / ``writes`` and implement :meth:`apply`, the one
    implementation; :meth:`batch` checks its arguments and calls it, and a call on
    one sample is the batch of one."""

    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()

    def apply(self, batch: Batch, streams: RowStreams) -> Batch:
        raise NotImplementedError(f"{type(self).__name__} must implement apply(batch, streams)")

    def batch(self, batch, streams: RowStreams) -> Batch:
        """The transform on a batch (a dict of [B, ...] arrays, or a list of samples)."""
        batch = as_batch(batch)
        who = type(self).__name__
        if not isinstance(streams, RowStreams):
            raise TypeError(f"{who}.batch: streams must be a RowStreams (RowStreams.for_rows(seed, epoch, "
                            f"indices)), got {type(streams).__name__}")
        require_fields(batch, self.reads, who)
        B = batch_rows(batch, who)
        if len(streams) != B:
            raise ValueError(f"{who}.batch: {B} rows but {len(streams)} streams")
        return self.apply(batch, streams)

    def __call__(self, sample: Mapping[str, np.ndarray], seed=0, *, epoch: int = 0, index: int = 0) -> Sample:
        """One sample, keyed by ``(seed, epoch, index)``: row 0 of the batch of one."""
        return row(self.batch(stack([sample]), RowStreams.of(seed, epoch, index)), 0)

    def __repr__(self) -> str:
        config = getattr(self, "config", None)
        return f"{type(self).__name__}({config!r})" if config is not None else f"{type(self).__name__}()"


class ConfiguredTransform(Transform):
    """A transform built from a typed config, as every objective is: the constructor checks
    that ``config`` is a ``config_type`` and that the vocabulary is larger than the reserved
    ids, and keeps ``config``, ``special`` and ``vocab_size``."""

    config_type: type = object

    def __init__(self, config, *, special: SpecialTokens, vocab_size: int, tokenizer=None):
        self.vocab_size = check_transform_args(type(self).__name__, config, self.config_type, special, vocab_size)
        self.config, self.special = config, special


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
