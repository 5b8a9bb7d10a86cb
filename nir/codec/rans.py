"""A compiled range-ANS coder for the context coder's integers (issue 46; docs/bounded.md).

Each context's integers follow one *model*, a table of frequencies summing to ``M = 2^12``:

- :data:`SHIFTED`: symbol ``q - lo`` over ``0 .. width - 1`` (a histogram; a context with one
  value is a histogram of width 1, whose frequency is ``M``: it costs no bits at all);
- :data:`BINNED`: symbol the *bin* of ``z = zigzag(q)``: ``z`` itself below :data:`DIRECT`,
  above it the octave of ``z`` and its next bit (two bins an octave, 66 in all up to 2^22),
  the rest of ``z`` following as raw bits (uniform digits of at most 12 bits). Its frequencies
  are a geometric law's mass per bin (a ratio: a Laplace of ``q``) or a histogram of the bins.

Every table is built from its stored numbers the same way on every machine: the histograms by
integer arithmetic (:func:`normalise`), the geometric law by float64 additions,
multiplications and divisions only (correctly rounded everywhere; no logarithm, no power
function). The coder is rANS with a 32-bit state and 16-bit words (the state stays in
``[2^16, 2^32)``); the encoder runs the integers backwards, the decoder forwards, in the closed
loop of :mod:`nir.codec.loop` (a sample's integer is read where its context is known; its read
is written out there).
"""

from __future__ import annotations

import numpy as np
from numba import njit

PREC = 12
M = 1 << PREC
#: the state's lower bound and the word's size: 16 bits each
LOW = 1 << 16
SHIFTED, BINNED = 0, 1
#: zigzag values coded as themselves; above, two bins an octave
DIRECT = 32
#: bins up to zigzag values below 2^22 (the context coder's integers stay below 2^20)
BINS = DIRECT + 2 * (22 - 5)


@njit(inline="always")
def bin_of(z):  # pragma: no cover - compiled
    """The bin of a zigzag value and its raw bits' count (the bits below the octave's next)."""
    if z < DIRECT:
        return z, 0
    e = 63
    while (z >> e) == 0:
        e -= 1
    return DIRECT + 2 * (e - 5) + ((z >> (e - 1)) & 1), e - 1


#: the raw bits after each bin's symbol: none below :data:`DIRECT`, the bits below an octave's
#: next above it (what :func:`bin_of` returns beside the bin)
RAW_BITS = np.concatenate([np.zeros(DIRECT, np.int64), 4 + np.arange(BINS - DIRECT) // 2])


def zigzag(q: np.ndarray) -> np.ndarray:
    """``2q`` for ``q >= 0``, ``-2q - 1`` below (int64)."""
    return np.where(q >= 0, 2 * q.astype(np.int64), -2 * q.astype(np.int64) - 1)


def bins_of(q: np.ndarray) -> np.ndarray:
    """Each integer's bin (of its zigzag value), as the coder's :func:`bin_of` gives it, in NumPy
    (the encoder's estimates and model fitting)."""
    return np.searchsorted(bin_starts()[0], zigzag(q), side="right") - 1


@njit(cache=True)
def bin_starts():  # pragma: no cover - compiled
    """Each bin's first zigzag value and its width (:data:`BINS` of each)."""
    first, width = np.empty(BINS, np.int64), np.empty(BINS, np.int64)
    for b in range(BINS):
        if b < DIRECT:
            first[b], width[b] = b, 1
        else:
            e, m = 5 + (b - DIRECT) // 2, (b - DIRECT) % 2
            width[b] = np.int64(1) << (e - 1)
            first[b] = (np.int64(1) << e) + m * width[b]
    return first, width


@njit(cache=True, boundscheck=False)
def normalise(counts):  # pragma: no cover - compiled
    """Frequencies summing to :data:`M` from non-negative integer ``counts`` (int64): every
    counted symbol at least 1, the rest by ``count * M // total``, the remainder taken from or
    given to the largest. Integer arithmetic only; needs at most :data:`M` counted symbols."""
    total = counts.sum()
    f = np.zeros(counts.size, np.int64)
    for i in range(counts.size):
        if counts[i] > 0:
            f[i] = max(counts[i] * M // total, 1)
    diff = M - f.sum()
    while diff != 0:
        i = np.argmax(f)
        if diff > 0:
            f[i] += diff
            diff = 0
        else:
            take = min(-diff, f[i] - 1)
            f[i] -= take
            diff += take
    return f


@njit(cache=True, boundscheck=False)
def _power(r, n):  # pragma: no cover - compiled
    """``r^n`` by squaring (multiplications only: the same bits everywhere)."""
    out, base = 1.0, r
    while n > 0:
        if n & 1:
            out *= base
        base *= base
        n >>= 1
    return out


@njit(cache=True, boundscheck=False)
def geometric(r16, nbins):  # pragma: no cover - compiled
    """The counts (summing to about 2^40) of the first ``nbins`` bins under ``z ~ r^z``, ``r =
    r16 / 2^16``: each bin's mass ``r^a (1 - r^w) / (1 - r)`` over the whole law's, at least 1."""
    first, width = bin_starts()
    r = r16 / 65536.0
    c = np.empty(nbins, np.int64)
    for b in range(nbins):
        mass = _power(r, first[b]) * (1.0 - _power(r, width[b]))  # the law's total is 1 / (1 - r)
        c[b] = max(np.int64(mass * 1099511627776.0), 1)
    return c


@njit(cache=True, boundscheck=False)
def slots(freq, start, offs, sizes):  # pragma: no cover - compiled
    """Each model's symbol per slot (``M`` a model, models in order)."""
    out = np.empty(sizes.size * M, np.int32)
    for m in range(sizes.size):
        for s in range(sizes[m]):
            a = offs[m] + s
            for k in range(start[a], start[a] + freq[a]):
                out[m * M + k] = s
    return out


@njit(inline="always", boundscheck=False)
def _put(x, words, pos, f, c):  # pragma: no cover - compiled
    """Push a symbol of frequency ``f`` starting at ``c``: the state and the write position
    (words fill ``words`` from its end)."""
    top = ((LOW >> PREC) << 16) * f
    while x >= top:
        pos -= 1
        words[pos] = x & 0xFFFF
        x >>= 16
    return (x // f) * M + (x % f) + c, pos


@njit(cache=True, boundscheck=False)
def encode(q, ctx, model_of, kind, lo, size, offs, freq, start):  # pragma: no cover - compiled
    """The integers ``q`` (int32) under their contexts' models, backwards: the words (uint16)
    and a status (0, or 1 where a context has no model or a value falls outside its table)."""
    words = np.empty(3 * q.size + 16, np.uint16)
    pos = words.size
    x = np.int64(LOW)
    for i in range(q.size - 1, -1, -1):
        m = model_of[ctx[i]]
        if m < 0:
            return words[:0], 1
        v = np.int64(q[i])
        if kind[m] == BINNED:
            z = 2 * v if v >= 0 else -2 * v - 1
            s, nbits = bin_of(z)
            if nbits > PREC:  # the raw bits, high digit first (the decoder reads the low first)
                b = nbits - PREC
                x, pos = _put(x, words, pos, 1 << (PREC - b), ((z >> PREC) & ((1 << b) - 1)) << (PREC - b))
            if nbits > 0:
                b = min(nbits, PREC)
                x, pos = _put(x, words, pos, 1 << (PREC - b), (z & ((1 << b) - 1)) << (PREC - b))
        else:
            s = v - lo[m]
        if s < 0 or s >= size[m]:
            return words[:0], 1
        a = offs[m] + s
        if freq[a] == 0:
            return words[:0], 1
        x, pos = _put(x, words, pos, freq[a], start[a])
    pos -= 2
    words[pos] = x >> 16
    words[pos + 1] = x & 0xFFFF
    return words[pos:].copy(), 0


def start_state(words: np.ndarray) -> tuple[int, int]:
    """The decoder's first state and read position (the encoder's last two words)."""
    return (int(words[0]) << 16) | int(words[1]), 2
