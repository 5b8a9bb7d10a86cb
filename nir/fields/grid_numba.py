"""The grid encoding's fused CPU kernels (``model.encoding.backend=numba``; issue 34).

The same arithmetic as :meth:`nir.fields.encodings.GridEncoding.forward` (the torch path, the
reference), written as loops that Numba compiles to machine code the first time they run (and
caches on disk beside this file, or in the user's cache where that is read-only). No
``N x L x 2^d`` index or weight tensor is ever stored: each point's corners are walked in
registers and small stack buffers.

- ``forward``: parallel over blocks of points (``prange``). Per point and level: the cell's lower
  vertex and fraction on each axis, then the ``2^d`` corners by doubling over the axes (corner
  ``c``'s row is built from corner ``c - 2^k``'s and one per-axis term, its weight likewise), then
  the weighted sum of the corners' features. Hashed levels use tiny-cuda-nn's spatial hash in
  uint32 arithmetic (the products wrap modulo 2^32, as the reference's ``& 0xFFFFFFFF`` does) and
  a mask for the table size (hashed tables are powers of two); dense levels are row-major,
  axis 0 slowest.
- ``table_grad``: parallel over levels. A level's rows are its own slice of the concatenated
  table, so each thread scatter-adds into rows no other thread touches: no atomics, no
  per-thread copies of the table, and the same sums in the same order on every run.
- ``input_grad``: parallel over blocks of points; d out / d x through the weights' derivative
  (``Field.gradient``), 0 where the box's clamp holds, as torch's clamp gives.

Why Numba (measured, docs/performance.md): on hashgrid_lt3d the reference path reaches
~0.3 M points/s on this 2-core CPU; one ``embedding_bag`` per level (the gather and weighted sum
fused) 0.5 M; ``torch.compile`` (inductor's C++) of either 0.1-0.8 M after 8-37 s of
compilation; these kernels ~7 M, after ~5 s of compilation the first time only. Numba ships as
wheels (no compiler on the user's machine) and is an ordinary dependency; where it does not
import, ``auto`` takes the torch path.

Second derivatives (a loss on ``Field.gradient`` trained through the kernels) are not
supported: the backward says so in one line; ``model.encoding.backend=torch`` has them.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nir.errors import NirError

try:  # numba is a dependency, but the torch path must never need it
    import numba
    from numba import njit, prange
except ImportError:  # pragma: no cover - exercised where numba is absent
    numba = None

MAX_DIM = 4
BLOCK = 256  # points a task: a few kB of scratch, the levels' tables stay in cache (measured: 256-4096 equal)
PRIMES = np.array([1, 2654435761, 805459861, 3674653429], dtype=np.uint32)  # tiny-cuda-nn's, as encodings.PRIMES


def available(device: torch.device) -> str | None:
    """``None`` when the kernels can run on ``device``, else the one-line reason they cannot."""
    if numba is None:
        return "numba is not installed (pip install numba)"
    if device.type != "cpu":
        return f"the Numba kernels run on the CPU, not on {device.type}"
    return None


if numba is not None:

    @njit(inline="always", boundscheck=False)
    def _cell(x, i, lo, span, r, hs, ws, dense, d):  # pragma: no cover - compiled
        """Rows (within the level) and weights of point ``i``'s 2^d corners at resolution ``r``."""
        one, zero = np.float32(1.0), np.float32(0.0)
        rm1, rm2 = np.float32(r - 1), np.float32(r - 2)
        for k in range(d):
            u = min(max((x[i, k] - lo[k]) / span[k], zero), one)
            p = u * rm1
            b = min(np.floor(p), rm2)
            f = p - b
            bi = np.uint32(b)
            if dense:
                ta, tb = np.int64(bi), np.int64(bi) + 1
            else:
                ta, tb = np.int64(bi * PRIMES[k]), np.int64((bi + np.uint32(1)) * PRIMES[k])
            half = 1 << k
            if k == 0:
                hs[0], hs[1] = ta, tb
                ws[0], ws[1] = one - f, f
            else:
                for j in range(half):
                    hj, wj = hs[j], ws[j]
                    if dense:
                        hj = hj * r
                        hs[j + half], hs[j] = hj + tb, hj + ta
                    else:
                        hs[j + half], hs[j] = hj ^ tb, hj ^ ta
                    ws[j + half], ws[j] = wj * f, wj * (one - f)


@functools.cache
def kernels(d: int, F: int) -> tuple[Any, Any, Any]:
    """The three kernels (forward, table gradient, input gradient) for ``d`` axes and ``F``
    features a level (compile-time constants, so the corner and feature loops unroll); compiled
    on first call and cached on disk by Numba (the closures hold plain integers only, which is
    what lets Numba's cache find them again)."""
    return _forward(d, F), _table_grad(d, F), _input_grad(d, F)


def _forward(d: int, F: int) -> Any:
    C = 1 << d

    @njit(parallel=True, cache=True, boundscheck=False)
    def forward(x, table, out, lo, span, res, offs, sizes, dense):  # pragma: no cover - compiled
        n, L = x.shape[0], res.shape[0]
        for blk in prange((n + BLOCK - 1) // BLOCK):
            hs = np.empty(C, np.int64)
            ws = np.empty(C, np.float32)
            acc = np.empty(F, np.float32)
            for i in range(blk * BLOCK, min(n, (blk + 1) * BLOCK)):
                for level in range(L):
                    isd = dense[level]
                    _cell(x, i, lo, span, res[level], hs, ws, isd, d)
                    mask, off = sizes[level] - 1, offs[level]
                    for f in range(F):
                        acc[f] = np.float32(0.0)
                    for c in range(C):
                        row = off + (hs[c] if isd else hs[c] & mask)
                        for f in range(F):
                            acc[f] += ws[c] * table[row, f]
                    for f in range(F):
                        out[i, level * F + f] = acc[f]

    return forward


def _table_grad(d: int, F: int) -> Any:
    C = 1 << d

    @njit(parallel=True, cache=True, boundscheck=False)
    def table_grad(x, gout, gtable, lo, span, res, offs, sizes, dense):  # pragma: no cover - compiled
        n, L = x.shape[0], res.shape[0]
        for level in prange(L):
            hs = np.empty(C, np.int64)
            ws = np.empty(C, np.float32)
            isd = dense[level]
            mask, off, r = sizes[level] - 1, offs[level], res[level]
            for i in range(n):
                _cell(x, i, lo, span, r, hs, ws, isd, d)
                for c in range(C):
                    row = off + (hs[c] if isd else hs[c] & mask)
                    for f in range(F):
                        gtable[row, f] += ws[c] * gout[i, level * F + f]

    return table_grad


def _input_grad(d: int, F: int) -> Any:
    C = 1 << d

    @njit(parallel=True, cache=True, boundscheck=False)
    def input_grad(x, table, gout, gx, lo, span, res, offs, sizes, dense):  # pragma: no cover - compiled
        n, L = x.shape[0], res.shape[0]
        for blk in prange((n + BLOCK - 1) // BLOCK):
            hs = np.empty(C, np.int64)
            ws = np.empty(C, np.float32)
            fr = np.empty(d, np.float32)
            for i in range(blk * BLOCK, min(n, (blk + 1) * BLOCK)):
                for level in range(L):
                    isd, r = dense[level], res[level]
                    _cell(x, i, lo, span, r, hs, ws, isd, d)
                    for k in range(d):  # the fractions again, for the weights' derivative
                        u = min(max((x[i, k] - lo[k]) / span[k], np.float32(0.0)), np.float32(1.0))
                        p = u * np.float32(r - 1)
                        fr[k] = p - min(np.floor(p), np.float32(r - 2))
                    mask, off = sizes[level] - 1, offs[level]
                    for c in range(C):
                        row = off + (hs[c] if isd else hs[c] & mask)
                        gv = np.float32(0.0)
                        for f in range(F):
                            gv += gout[i, level * F + f] * table[row, f]
                        for k in range(d):
                            dw = np.float32(1.0) if (c >> k) & 1 else np.float32(-1.0)
                            for j in range(d):
                                if j != k:
                                    dw *= fr[j] if (c >> j) & 1 else np.float32(1.0) - fr[j]
                            gx[i, k] += gv * dw * np.float32(r - 1) / span[k]
            for i in range(blk * BLOCK, min(n, (blk + 1) * BLOCK)):
                for k in range(d):  # the clamp's derivative (torch's: 1 on the faces, 0 outside)
                    u = (x[i, k] - lo[k]) / span[k]
                    if u < 0 or u > 1:
                        gx[i, k] = np.float32(0.0)

    return input_grad


def _levels(enc: Any) -> tuple[np.ndarray, ...]:
    """The encoding's level description as the kernels take it (host arrays, cached on ``enc``)."""
    got = getattr(enc, "_numba_levels", None)
    if got is None:
        got = (
            enc.lo.detach().cpu().numpy().astype(np.float32),
            enc.span.detach().cpu().numpy().astype(np.float32),
            np.asarray(enc.resolutions, dtype=np.int64),
            enc._offsets.cpu().numpy().astype(np.int64),
            enc._sizes.cpu().numpy().astype(np.int64),
            np.asarray(enc.dense_levels, dtype=np.bool_),
        )
        enc._numba_levels = got
    return got


def _threads() -> None:
    """Numba's threads follow torch's setting (a worker limited to one thread stays at one)."""
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


class GridFunction(torch.autograd.Function):
    """The encoding through the Numba kernels: ``(x (N, d) fp32, table (rows, F) fp32)`` ->
    ``(N, L * F)`` fp32; backward gives the table's and the input's gradients."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, table: Tensor, enc: Any) -> Tensor:
        n, d = x.shape
        out = torch.empty(n, enc.n_levels * enc.n_features, dtype=torch.float32)
        if n:
            _threads()
            kernels(d, enc.n_features)[0](x.detach().numpy(), table.detach().numpy(), out.numpy(), *_levels(enc))
        ctx.save_for_backward(x, table)
        ctx.enc = enc
        return out

    @staticmethod
    def backward(ctx: Any, gout: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        if torch.is_grad_enabled():
            raise NirError(
                "the Numba grid encoding has no second derivative (a loss on Field.gradient); "
                "use model.encoding.backend=torch for it"
            )
        x, table = ctx.saved_tensors
        enc = ctx.enc
        n, d = x.shape
        _, table_grad, input_grad = kernels(d, enc.n_features)
        g = gout.contiguous().float().numpy()
        levels = _levels(enc)
        _threads()
        gtable = None
        if ctx.needs_input_grad[1]:
            gtable = torch.zeros_like(table)
            if n:
                table_grad(x.detach().numpy(), g, gtable.numpy(), *levels)
        gx = None
        if ctx.needs_input_grad[0]:
            gx = torch.zeros_like(x)
            if n:
                input_grad(x.detach().numpy(), table.detach().numpy(), g, gx.numpy(), *levels)
        return gx, gtable, None


def encode(enc: Any, x: Tensor, table: Tensor | None = None) -> Tensor:
    """``enc``'s encoding of points ``x`` (N, d) on the CPU through the kernels, in fp32;
    ``table`` in place of ``enc.embeddings`` (the first-use check of ``backend=auto`` passes its own)."""
    return GridFunction.apply(x.float().contiguous(), enc.embeddings if table is None else table, enc)
