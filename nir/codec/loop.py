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

#: block modes (as :mod:`nir.codec.context`)
RAW, NET, MAP = 0, 1, 2
BUCKETS, Q_BUCKETS = 12, 3
#: activity bucket edges, in cells (exact powers of two: comparisons only, no logarithm)
EDGES = 0.25 * 2.0 ** np.arange(BUCKETS - 1)
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


@njit(inline="always", boundscheck=False)
def _at(x, mode, base, stride, n, t, s, on_map):  # pragma: no cover - compiled
    """``t``'s neighbour at ``t + s`` (``s`` signed): its value and whether it is usable (in the
    grid, in a block of the same kind: the map's or the network's)."""
    i = t + s
    if i < 0 or i >= n:
        return 0.0, False
    j = base + i * stride
    return x[j], (mode[j] == MAP) == on_map


@njit(inline="always", boundscheck=False)
def _predict(x, mode, coded, base, stride, n, t, s, cubic, edges, level_bit):  # pragma: no cover - compiled
    """The prediction of target ``t`` on a line and its context id."""
    m = mode[base + t * stride]
    on_map = m == MAP
    a, ha = _at(x, mode, base, stride, n, t, -3 * s, on_map)
    b, hb = _at(x, mode, base, stride, n, t, -s, on_map)
    c, hc = _at(x, mode, base, stride, n, t, s, on_map)
    d, hd = _at(x, mode, base, stride, n, t, 3 * s, on_map)
    if not cubic:  # the step's linear interpolation: the inner neighbours only
        ha, hd = False, False
    if m == RAW:
        pred = 0.0
        act = (abs(b) if hb else 0.0) + (abs(c) if hc else 0.0)
    else:
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
            act = abs(c - b)
        elif ha and hb:
            act = abs(b - a)
        elif hc and hd:
            act = abs(c - d)
        else:
            act = 0.0
    bucket = 0
    for e in range(edges.size):
        if edges[e] <= act:
            bucket += 1
    near = np.int64(coded[base + (t - s) * stride])
    if t + s < n:
        near += coded[base + (t + s) * stride]
    near = min(near, 3) - (1 if near >= 2 else 0)
    ctx = 1 + ((np.int64(m) * 2 + level_bit) * BUCKETS + bucket) * Q_BUCKETS + near
    return pred, ctx


@njit(parallel=True, cache=True, boundscheck=False)
def cost(x, values, mode, coded, bases, stride, n, s, cubic, cell, edges):  # pragma: no cover - compiled
    """The step's ``sum log2(1 + 2 |q|)`` with ``cubic`` or linear interpolation (the encoder's
    choice between them)."""
    T = (n - s + 2 * s - 1) // (2 * s)
    total = 0.0
    for k in prange(bases.size):
        base = bases[k]
        part = 0.0
        for j in range(T):
            t = s + 2 * s * j
            pred, _ = _predict(x, mode, coded, base, stride, n, t, s, cubic, edges, 0)
            q = np.rint((values[base + t * stride] - pred) / cell)
            part += np.log2(1.0 + 2.0 * abs(q))
        total += part
    return total


@njit(parallel=True, cache=True, boundscheck=False)
def quantise(x, values, mode, coded, bases, stride, n, s, cubic, cell, edges, level_bit, q_out, ctx_out, grid_q
             ):  # pragma: no cover - compiled  # fmt: skip
    """The encoder's step: each target's integer ``clip(rint((value - prediction) / cell))`` and
    context (flat, line order), its decoded value ``prediction + cell * q`` written into ``x``,
    ``min(|q|, 3)`` into ``coded``; ``grid_q`` (the grid's size, or empty): the integer at its
    sample."""
    T = (n - s + 2 * s - 1) // (2 * s)
    keep = grid_q.size > 0
    for k in prange(bases.size):
        base = bases[k]
        for j in range(T):
            t = s + 2 * s * j
            idx = base + t * stride
            pred, ctx = _predict(x, mode, coded, base, stride, n, t, s, cubic, edges, level_bit)
            q = min(max(np.rint((values[idx] - pred) / cell), -TOP), TOP)
            qi = np.int32(q)
            x[idx] = pred + cell * qi
            coded[idx] = min(abs(qi), 3)
            q_out[k * T + j] = qi
            ctx_out[k * T + j] = ctx
            if keep:
                grid_q[idx] = qi


@njit(parallel=True, cache=True, boundscheck=False)
def contexts(x, mode, coded, bases, stride, n, s, cubic, edges, level_bit, pred_out, ctx_out
             ):  # pragma: no cover - compiled  # fmt: skip
    """The decoder's first half of a step: each target's prediction and context (flat, line order)."""
    T = (n - s + 2 * s - 1) // (2 * s)
    for k in prange(bases.size):
        base = bases[k]
        for j in range(T):
            t = s + 2 * s * j
            pred, ctx = _predict(x, mode, coded, base, stride, n, t, s, cubic, edges, level_bit)
            pred_out[k * T + j] = pred
            ctx_out[k * T + j] = ctx


@njit(parallel=True, cache=True, boundscheck=False)
def recover(x, coded, bases, stride, n, s, cell, pred, q):  # pragma: no cover - compiled
    """The decoder's second half: ``prediction + cell * q`` into ``x`` and ``min(|q|, 3)`` into
    ``coded`` at the step's targets."""
    T = (n - s + 2 * s - 1) // (2 * s)
    for k in prange(bases.size):
        base = bases[k]
        for j in range(T):
            idx = base + (s + 2 * s * j) * stride
            qi = q[k * T + j]
            x[idx] = pred[k * T + j] + cell * qi
            coded[idx] = min(abs(qi), 3)
