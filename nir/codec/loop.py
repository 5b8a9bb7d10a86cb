"""The context coder's closed loop, compiled (issue 46; :mod:`nir.codec.context` describes it).

One step of the interpolation predictor (a stride ``s`` along one axis) works on its *lines*:
the flat offsets of the samples it touches on the other axes (multiples of ``s`` on the axes
before, of ``2s`` on those after), and along each line the targets ``t = s, 3s, 5s, ...`` with
their neighbours at ``t +- s`` and ``t +- 3s`` (even multiples of ``s``: decoded by earlier
steps, so a step reads and writes without a race, and its targets run in parallel). A step's
integers and contexts are flat in line order, the targets of a line innermost (the order of
the NumPy loop before it, which the committed streams hold: tests/test_legacy.py).

The arithmetic is the NumPy version's, operation for operation (float64 additions,
multiplications and divisions by powers of two, no fused multiply-add: Numba contracts nothing
without ``fastmath``), so the compiled encoder, the compiled decoder and the streams written
before agree to the bit. Compiled on first use and cached on disk by Numba.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
from numba import njit, prange

from nir.codec import rans

#: block modes (as :mod:`nir.codec.context`)
RAW, NET, MAP = 0, 1, 2
BUCKETS, Q_BUCKETS = 12, 3
TOP = 1 << 20


def steps(shape: Sequence[int]) -> Iterator[tuple[int, int, int]]:
    """The interpolation's steps for a grid of ``shape``: ``(level, stride, axis)``, coarse to
    fine (level 0 is the finest stride)."""
    s = 1 << max(0, math.ceil(math.log2(max(shape))) - 1) if max(shape) > 1 else 0
    while s >= 1:
        for axis in range(len(shape)):
            if shape[axis] > s:
                yield int(math.log2(s)), s, axis
        s //= 2


def lines(shape: Sequence[int], s: int, axis: int) -> np.ndarray:
    """The flat offsets of a step's lines (C order over the other axes)."""
    strides = np.cumprod((1, *shape[::-1]))[-2::-1]
    out = np.zeros(1, np.int64)
    for a, n in enumerate(shape):
        if a == axis:
            continue
        at = np.arange(0, n, s if a < axis else 2 * s, dtype=np.int64) * strides[a]
        out = (out[:, None] + at[None, :]).reshape(-1)
    return out


def axis_stride(shape: Sequence[int], axis: int) -> int:
    return math.prod(shape[axis + 1 :])


@njit(inline="always")
def _interpolate(raw, a, ha, b, hb, c, hc, d, hd):  # pragma: no cover - compiled
    """The prediction from the neighbours at ``-3s, -s, s, 3s`` (values and whether usable) and
    the activity the context buckets: 0 and the inner neighbours' magnitudes in a raw block,
    else the cubic, quadratic, linear or copied interpolation and the neighbours' spread.
    (Scalars only: Numba inlines it at no cost.)"""
    if raw:
        return 0.0, (abs(b) if hb else 0.0) + (abs(c) if hc else 0.0)
    if ha and hb and hc and hd:
        pred = (9.0 * (b + c) - a - d) / 16.0
    elif hb and hc and hd:
        pred = (3.0 * b + 6.0 * c - d) / 8.0
    elif ha and hb and hc:
        pred = (6.0 * b + 3.0 * c - a) / 8.0
    elif hb and hc:
        pred = (b + c) / 2.0
    elif ha and hb:
        pred = (3.0 * b - a) / 2.0
    elif hc and hd:
        pred = (3.0 * c - d) / 2.0
    elif hb:
        pred = b
    elif hc:
        pred = c
    else:
        pred = 0.0
    if hb and hc:
        return pred, abs(c - b)
    if ha and hb:
        return pred, abs(b - a)
    if hc and hd:
        return pred, abs(c - d)
    return pred, 0.0


@njit(parallel=True, cache=True, boundscheck=False)
def contexts(x, mode, coded, bases, stride, n, s, cubic, quarter, level_bit, pred_out, ctx_out
             ):  # pragma: no cover - compiled  # fmt: skip
    """Each target's prediction from its decoded neighbours in blocks of the same kind (cubic,
    quadratic, linear or a copy by which are there; ``cubic`` False: the inner two only) and
    its context id: the mode, the finest stride or not (``level_bit``), the bucket of its
    activity (powers of two of ``quarter``, a quarter cell) and of the integers coded at its
    inner neighbours. Flat, in line order; ``ctx_out`` empty: the predictions only. (Written out in the loop: a helper taking the arrays
    costs Numba a reference count per array and call, measured 46 against 7 ns a sample.)"""
    T = (n - s + 2 * s - 1) // (2 * s)
    for k in prange(bases.size):
        base = bases[k]
        for j in range(T):
            t = s + 2 * s * j
            idx = base + t * stride
            m = mode[idx]
            on_map = m == MAP
            a = c = d = 0.0
            ha = hc = hd = False
            if cubic and t >= 3 * s:
                i = idx - 3 * s * stride
                a, ha = x[i], (mode[i] == MAP) == on_map
            i = idx - s * stride
            b, hb = x[i], (mode[i] == MAP) == on_map
            if t + s < n:
                i = idx + s * stride
                c, hc = x[i], (mode[i] == MAP) == on_map
            if cubic and t + 3 * s < n:
                i = idx + 3 * s * stride
                d, hd = x[i], (mode[i] == MAP) == on_map
            pred, act = _interpolate(m == RAW, a, ha, b, hb, c, hc, d, hd)
            bucket, edge = 0, quarter  # the edges quarter * 2^e, e < BUCKETS - 1 (doubling is exact)
            while bucket < BUCKETS - 1 and edge <= act:
                bucket += 1
                edge *= 2.0
            near = np.int64(coded[idx - s * stride])
            if t + s < n:
                near += coded[idx + s * stride]
            near = min(near, 3) - (1 if near >= 2 else 0)
            pred_out[k * T + j] = pred
            if ctx_out.size:
                ctx_out[k * T + j] = 1 + ((np.int64(m) * 2 + level_bit) * BUCKETS + bucket) * Q_BUCKETS + near


@njit(parallel=True, cache=True, boundscheck=False)
def cost(values, bases, stride, n, s, cell, pred):  # pragma: no cover - compiled
    """A step's ``sum log2(1 + 2 |q|)`` under the predictions ``pred`` (the encoder's choice
    between cubic and linear interpolation)."""
    T = (n - s + 2 * s - 1) // (2 * s)
    total = 0.0
    for k in prange(bases.size):
        base = bases[k]
        part = 0.0
        for j in range(T):
            q = np.rint((values[base + (s + 2 * s * j) * stride] - pred[k * T + j]) / cell)
            part += np.log2(1.0 + 2.0 * abs(q))
        total += part
    return total


@njit(parallel=True, cache=True, boundscheck=False)
def quantise(x, values, coded, bases, stride, n, s, cell, pred, q_out, grid_q):  # pragma: no cover - compiled
    """The encoder's step: each target's integer ``clip(rint((value - prediction) / cell))``
    (flat, line order), its decoded value ``prediction + cell * q`` into ``x``, ``min(|q|, 3)``
    into ``coded``; ``grid_q`` (the grid's size, or empty): the integer at its sample."""
    T = (n - s + 2 * s - 1) // (2 * s)
    keep = grid_q.size > 0
    for k in prange(bases.size):
        base = bases[k]
        for j in range(T):
            idx = base + (s + 2 * s * j) * stride
            p = pred[k * T + j]
            qi = np.int32(min(max(np.rint((values[idx] - p) / cell), -TOP), TOP))
            x[idx] = p + cell * qi
            coded[idx] = min(abs(qi), 3)
            q_out[k * T + j] = qi
            if keep:
                grid_q[idx] = qi


@njit(cache=True, boundscheck=False)
def decode(x, coded, bases, stride, n, s, cell, pred, ctx, state, words, pos, tables):  # pragma: no cover - compiled
    """The decoder's step: each target's integer read from the stream under its context
    (:mod:`nir.codec.rans`, in the integers' order), its value ``prediction + cell * q`` into
    ``x`` and ``min(|q|, 3)`` into ``coded``. Returns the state, the read position and a status
    (0, or 1: the stream is damaged)."""
    T = (n - s + 2 * s - 1) // (2 * s)
    model_of, kind, lo, size, offs, freq, start, sym = tables
    for k in range(bases.size):
        base = bases[k]
        for j in range(T):
            mi = model_of[ctx[k * T + j]]
            if mi < 0:
                return state, pos, 1
            slot = state & (rans.M - 1)
            z = np.int64(sym[mi * rans.M + slot])
            a = offs[mi] + z
            state = freq[a] * (state >> rans.PREC) + slot - start[a]
            if state < rans.LOW:  # one word always suffices (the state stays at least 2^4)
                if pos >= words.size:
                    return state, pos, 1
                state = (state << 16) | np.int64(words[pos])
                pos += 1
            if kind[mi] != rans.BINNED:
                q = z + lo[mi]
            else:
                if z >= rans.DIRECT:  # an octave's bin: its raw bits follow, the low digit first
                    e = 5 + (z - rans.DIRECT) // 2
                    nbits = e - 1
                    z = (np.int64(1) << e) | (((z - rans.DIRECT) % 2) << nbits)
                    shift = 0
                    while nbits > 0:
                        b = min(nbits, rans.PREC)
                        slot = state & (rans.M - 1)
                        digit = slot >> (rans.PREC - b)
                        state = (state >> rans.PREC) * (1 << (rans.PREC - b)) + slot - (digit << (rans.PREC - b))
                        if state < rans.LOW:
                            if pos >= words.size:
                                return state, pos, 1
                            state = (state << 16) | np.int64(words[pos])
                            pos += 1
                        z |= digit << shift
                        shift += b
                        nbits -= b
                q = (z >> 1) if (z & 1) == 0 else -(z >> 1) - 1
            idx = base + (s + 2 * s * j) * stride
            x[idx] = pred[k * T + j] + cell * q
            coded[idx] = min(abs(q), 3)
    return state, pos, 0


@njit(parallel=True, cache=True, boundscheck=False)
def recover(x, coded, bases, stride, n, s, cell, pred, q):  # pragma: no cover - compiled
    """A step's integers ``q`` (read apart: the streams before issue 46) into ``x`` as
    ``prediction + cell * q`` and into ``coded`` as ``min(|q|, 3)``."""
    T = (n - s + 2 * s - 1) // (2 * s)
    for k in prange(bases.size):
        base = bases[k]
        for j in range(T):
            idx = base + (s + 2 * s * j) * stride
            qi = q[k * T + j]
            x[idx] = pred[k * T + j] + cell * qi
            coded[idx] = min(abs(qi), 3)
