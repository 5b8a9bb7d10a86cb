"""A compiled range-ANS coder for the context coder's integers (issue 46; docs/bounded.md).

Each context's integers follow one *model*, a table of frequencies summing to ``M = 2^12``:

- :data:`SHIFTED`: symbol ``q - lo`` over ``0 .. width - 1`` (a histogram; a context with one
  value is a histogram of width 1, whose frequency is ``M``: it costs no bits at all);
- :data:`GEOMETRIC`: symbol ``zigzag(q)`` under ``r^z`` for ``z < E`` and an escape ``E`` for
  the rest, whose ``zigzag(q) - E`` follows as two uniform 12-bit digits.

Every table is built from its stored integers by integer arithmetic only (:func:`normalise`,
:func:`geometric`), so every machine codes with the same frequencies. The coder is rANS with a
32-bit state and 16-bit words (the state stays in ``[2^16, 2^32)``); the encoder runs the
integers backwards, the decoder forwards, in the closed loop of :mod:`nir.codec.loop` (a
sample's integer is read where its context is known). Escapes and damaged streams are
reported by the kernels' status, never by a crash.
"""

from __future__ import annotations

import numpy as np
from numba import njit

PREC = 12
M = 1 << PREC
#: the state's lower bound and the word's size: 16 bits each
LOW = 1 << 16
SHIFTED, GEOMETRIC = 0, 1
#: a geometric table's largest symbol count before the escape
MAX_E = 1024
#: uniform digits after an escape, PREC bits each (zigzag values below 2^24)
DIGITS = 2


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
def geometric(r16, e):  # pragma: no cover - compiled
    """The pseudo-counts of a geometric table: ``z < e`` under ``(r16 / 2^16)^z`` (at least 1
    each), then the escape with the tail's mass."""
    c = np.empty(e + 1, np.int64)
    v = np.int64(1) << 40
    for z in range(e):
        c[z] = max(v, 1)
        v = (v * r16) >> 16
    c[e] = max(v * 65536 // (65536 - r16), 1)
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
        if kind[m] == GEOMETRIC:
            s = 2 * v if v >= 0 else -2 * v - 1
            e = size[m] - 1
            if s >= e:
                rest = s - e
                if rest >= (np.int64(1) << (PREC * DIGITS)):
                    return words[:0], 1
                for d in range(DIGITS - 1, -1, -1):
                    x, pos = _put(x, words, pos, 1, (rest >> (PREC * d)) & (M - 1))
                s = e
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
