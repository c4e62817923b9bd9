"""Counter-based random streams: one per row, drawn for a whole batch at once.

Every random number a transform uses is a pure function of

    (purpose, seed, epoch, index, site, counter)

hashed to 64 bits (SplitMix64's finaliser, as JAX's threefry and numpy's Philox
turn a key and a counter into bits). ``purpose`` names the consumer
("transform", "sampler.order", ...), ``(seed, epoch, index)`` the sample, ``site``
the place in the code that draws (``site("masking.lengths")``) and ``counter``
the draw's number there (often a token column or a span number). Nothing is
sequential: a row's draws do not depend on which batch, worker or read order it
came in, nor on how many numbers the other rows took, and a batch of B rows
draws all its numbers in a few vectorised numpy calls.

    streams = RowStreams.for_rows(seed, epoch, np.arange(64))     # 64 rows
    u = streams.uniform(site("mlm.actions"), 8)                   # [64, 8], row b's own numbers
    v = streams.uniform_at(site("mlm.ids"), rows, columns)        # one number per (row, column)

Keys of different purposes can never coincide by construction: the purpose's
tag is the first word hashed into every key, and sequential consumers (a
sampler's epoch permutation) get ``generator(purpose, ...)``, a numpy Generator
whose seed words also start with the tag.

Every key word (seed, epoch, index, ...) is an integer in ``[0, 2**64)``; seeds are
documented as ``0 .. 2**63 - 1``. A word outside that range is refused, never
wrapped, and a generator's words enter numpy's SeedSequence at a fixed width (two
32-bit halves each, after their count), so seed ``2**32 + s`` at epoch 0 cannot
read as seed ``s`` at epoch 1 (numpy alone splits an integer into as many 32-bit
words as it needs, and drops high zero words).
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_M1, _M2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
_U_GOLDEN, _U_M1, _U_M2 = np.uint64(_GOLDEN), np.uint64(_M1), np.uint64(_M2)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_TO_UNIT = 1.0 / (1 << 53)
_TO_UNIT32 = 1.0 / (1 << 32)
_S32, _LOW32 = np.uint64(32), np.uint64(0xFFFFFFFF)

# Every consumer of randomness has its own tag; a new consumer adds a line here.
PURPOSES: dict[str, int] = {
    "transform": 1,        # a sample's objective transform, keyed by (seed, epoch, index)
    "sampler.order": 2,    # a sampler's per-epoch order, keyed by (seed, epoch)
    "sampler.pick": 3,     # a sampler's per-sample picks (NSP's other segment, a source/target cut)
    "document": 4,         # a document-level transform before packing, keyed by (seed, epoch, document)
    "infill.sample": 5,    # the infilling evaluation's token draws, keyed by (seed, task, sample)
    "instruction.template": 6,  # an instruction example's template, keyed by (seed, epoch, index) and its dataset
    "instruction.mixture": 7,   # which records of a dataset fill a mixture, keyed by (seed, dataset)
}


def _tag(purpose: str) -> int:
    try:
        return PURPOSES[purpose]
    except KeyError:
        raise KeyError(f"unknown stream purpose {purpose!r}; known: {sorted(PURPOSES)}") from None


def _mix_int(h: int) -> int:
    """SplitMix64's finaliser on a Python int (a bijection of 64-bit words)."""
    h &= _MASK64
    h = ((h ^ (h >> 30)) * _M1) & _MASK64
    h = ((h ^ (h >> 27)) * _M2) & _MASK64
    return h ^ (h >> 31)


def _mix(z: np.ndarray) -> np.ndarray:
    """The same finaliser, in place on a uint64 array (wrapping products)."""
    z = np.asarray(z)
    if z.ndim == 0:                                      # a scalar would warn on the wrap
        z = z.reshape(1)
        return _mix(z)[0]
    z ^= z >> _S30
    z *= _U_M1
    z ^= z >> _S27
    z *= _U_M2
    z ^= z >> _S31
    return z


def _word(w) -> int:
    """A key word as a Python int in ``[0, 2**64)``; anything else is an error naming it."""
    if isinstance(w, (bool, np.bool_)) or not isinstance(w, (int, np.integer)):
        raise TypeError(f"a random-stream key word must be an integer, got {w!r}")
    w = int(w)
    if not 0 <= w <= _MASK64:
        raise ValueError(f"a random-stream key word (seed, epoch, index) must lie in [0, 2**64), got {w}")
    return w


@functools.lru_cache(maxsize=256)
def key(purpose: str, *words: int) -> int:
    """The 64-bit key of one stream: ``key("transform", seed, epoch, index)``."""
    h = _mix_int(_GOLDEN ^ _tag(purpose))
    for w in words:
        h = _mix_int(h ^ _word(w))
    return h


with np.errstate(over="ignore"):
    _STEPS = np.arange(1, 1 << 16, dtype=np.uint64) * _U_GOLDEN    # offsets of counters 0 .. 65534


def generator(purpose: str, *words: int) -> np.random.Generator:
    """A sequential numpy Generator for consumers that need one (a permutation per
    epoch). Its entropy is the purpose's tag, the number of words, then each word as
    two 32-bit halves: a fixed-width encoding, so distinct keys are distinct entropy."""
    entropy = [_tag(purpose), len(words)]
    for w in words:
        w = _word(w)
        entropy += [w & 0xFFFFFFFF, w >> 32]
    return np.random.default_rng(np.random.SeedSequence(np.array(entropy, np.uint32)))


@functools.lru_cache(maxsize=1024)
def site(name: str) -> int:
    """A draw site's id from its name (``"module.what"``); distinct names, distinct sites."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")


def _unit(z: np.ndarray) -> np.ndarray:
    """uint64 words -> float64 uniforms in [0, 1) (the top 53 bits)."""
    return np.multiply(z >> _S11, _TO_UNIT)


def _steps(counters) -> np.ndarray:
    """``(counter + 1) * golden`` as uint64 (wrapping): counter c's offset in a SplitMix64 stream."""
    c = np.asarray(counters).astype(np.uint64)
    with np.errstate(over="ignore"):                       # 64-bit products wrap on purpose
        c += np.uint64(1)
        c *= _U_GOLDEN
    return c


class RowStreams:
    """One counter-based stream per row of a batch (``keys``: uint64 [B])."""

    __slots__ = ("keys",)

    def __init__(self, keys):
        keys = np.asarray(keys)
        if keys.ndim != 1:
            raise ValueError(f"RowStreams: keys must be 1-D, got shape {keys.shape}")
        if keys.dtype != np.uint64:
            if keys.size and (keys.dtype.kind not in "iu" or int(keys.min()) < 0):
                raise ValueError(f"RowStreams: keys must be non-negative integers, got dtype {keys.dtype}")
            keys = keys.astype(np.uint64)
        self.keys = keys

    @classmethod
    def for_rows(cls, seed: int, epoch, index, purpose: str = "transform") -> "RowStreams":
        """Streams keyed by ``(purpose, seed, epoch, index)``; ``epoch`` and ``index``
        are ints or arrays (broadcast): row b's key is ``key(purpose, seed, epoch[b], index[b])``."""
        epoch, index = np.asarray(epoch), np.asarray(index)
        for name, a in (("epoch", epoch), ("index", index)):
            if a.size and (a.dtype.kind not in "iu" or a.min() < 0):
                raise ValueError(f"RowStreams.for_rows: {name} must be integers >= 0, got {a!r}")
            if a.dtype.kind == "u" and a.dtype.itemsize > 8 or a.dtype == object:
                raise ValueError(f"RowStreams.for_rows: {name} must fit 64 bits, got dtype {a.dtype}")
        if epoch.shape != index.shape:
            epoch, index = np.broadcast_arrays(epoch, index)
        z = epoch.reshape(-1).astype(np.uint64) ^ np.uint64(key(purpose, int(seed)))
        _mix(z)
        z ^= index.reshape(-1).astype(np.uint64)
        return cls(_mix(z))

    @classmethod
    def of(cls, seed, epoch: int = 0, index: int = 0) -> "RowStreams":
        """One row: ``(seed, epoch, index)`` of a sample, or an existing one-row RowStreams."""
        if isinstance(seed, RowStreams):
            if len(seed) != 1:
                raise ValueError(f"a single sample takes a one-row RowStreams, got {len(seed)} rows")
            return seed
        if isinstance(seed, np.random.Generator) or not isinstance(seed, (int, np.integer)):
            raise TypeError("a transform takes a sample and its key: t(sample, seed, epoch=..., index=...) "
                            f"with integers (or t.batch(batch, RowStreams)), got {type(seed).__name__}")
        return cls.for_rows(int(seed), epoch, index)

    def __len__(self) -> int:
        return int(self.keys.size)

    def __repr__(self) -> str:
        return f"RowStreams({len(self)} rows)"

    def take(self, rows) -> "RowStreams":
        """The streams of some rows (index array or boolean mask), in that order."""
        return RowStreams(self.keys[rows])

    def child(self, i: int) -> "RowStreams":
        """Independent streams derived from these (member ``i`` of a Compose or a mix)."""
        return RowStreams(_mix(self.keys ^ np.uint64(site(f"child:{int(i)}"))))

    def split(self, n: int) -> "RowStreams":
        """``n`` independent streams per row, as B * n rows: row ``b * n + i`` is ``child(i)``'s row b
        (for objectives that cut one sample into several rows)."""
        return RowStreams(np.stack([self.child(i).keys for i in range(int(n))], axis=1).reshape(-1))

    def _site_keys(self, at: int) -> np.ndarray:
        return _mix(self.keys ^ np.uint64(at & _MASK64))

    def bits(self, at: int, rows, counters) -> np.ndarray:
        """uint64 words for draw ``counters`` of rows ``rows`` at site ``at``; ``rows`` and
        ``counters`` broadcast together (rows [n, 1] against counters [1, m] give [n, m])."""
        z = self._site_keys(at)[rows] + _steps(counters)      # a new array of the broadcast shape
        return _mix(z)

    def uniform_at(self, at: int, rows, counters) -> np.ndarray:
        """Uniforms in [0, 1): draw ``counters`` of rows ``rows`` at site ``at``; ``rows`` and
        ``counters`` are int arrays (or scalars) broadcast together."""
        return _unit(self.bits(at, rows, counters))

    def uniform(self, at: int, counters) -> np.ndarray:
        """Draws ``0 .. n-1`` (``counters`` = n), or the draws ``counters`` (a 1-D int array),
        of every row at site ``at``: float64 [B, n]. Row b's draw j is the same whatever
        the other draws asked for and whatever the other rows are."""
        if np.ndim(counters) == 0:
            n = int(counters)
            steps = _STEPS[:n] if n <= _STEPS.size else _steps(np.arange(n))
        else:
            steps = _steps(counters)
        z = self._site_keys(at)[:, None] + steps[None, :]
        return _unit(_mix(z))

    def split_at(self, at: int, rows, counters, low: int, high: int) -> tuple[np.ndarray, np.ndarray]:
        """Two independent draws from one word per (row, counter): a uniform in [0, 1) from
        its high 32 bits and an integer in ``[low, high)`` from its low 32 bits."""
        if not 0 < int(high) - int(low) < (1 << 32):
            raise ValueError(f"split_at: range [{low}, {high}) must hold 1 to 2**32 values")
        z = self.bits(at, rows, counters)
        u = np.multiply(z >> _S32, _TO_UNIT32)
        ids = ((z & _LOW32) * np.uint64(int(high) - int(low))) >> _S32
        return u, ids.astype(np.int64) + int(low)

    def integers_at(self, at: int, rows, counters, low: int, high: int) -> np.ndarray:
        """Integers uniform in ``[low, high)`` (int64), one per (row, counter)."""
        if not int(low) < int(high):
            raise ValueError(f"integers_at: empty range [{low}, {high})")
        return self.split_at(at, rows, counters, low, high)[1]
