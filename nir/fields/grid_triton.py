"""The grid encoding's Triton kernels (``model.encoding.backend=triton``; issue 26).

The same arithmetic as :meth:`nir.fields.encodings.GridEncoding.forward` (the torch path, the
reference), written as two kernels that need nothing but ``pip install triton``: Triton compiles
them at run time on a CUDA device, and its interpreter (``TRITON_INTERPRET=1``) runs them on the
CPU, which is how ``make test`` checks them against the torch path.

- ``_grid_fwd``: one program per (block of points, level). For each of the ``2^d`` corners of the
  point's cell: the table row (dense row-major on levels that fit, tiny-cuda-nn's spatial hash on
  the others), the d-linear weight, and a gather of the row's features; the weighted sum is the
  level's output. No ``N x L x 2^d`` index or weight tensor is ever stored.
- ``_grid_bwd``: the same walk; the table's gradient is accumulated with atomic adds straight into
  the table-sized gradient (no dense per-sample tensor), and the input's gradient (for
  ``Field.gradient``) is the weights' derivative times the features, summed per point.

Second derivatives (a loss on ``Field.gradient`` trained through the kernels) are not supported:
the backward is ``once_differentiable`` and says so in one line; the torch path
(``model.encoding.backend=torch``) has them.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor

from nir.errors import NirError

try:  # triton is optional: the torch path needs nothing of it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised where triton is absent
    triton = None

MAX_DIM = 4
FEATURES = (1, 2, 4, 8)
BLOCK = 64


def available(device: torch.device) -> str | None:
    """``None`` when the kernels can run on ``device``, else the one-line reason they cannot."""
    if triton is None:
        return "triton is not installed (pip install triton)"
    if device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
        return None
    return f"the Triton kernels run on CUDA devices (or on the CPU under TRITON_INTERPRET=1), not on {device.type}"


if triton is not None:

    @triton.jit
    def _cell(x_ptr, offs, mask, lo_ptr, span_ptr, res, k: tl.constexpr, D: tl.constexpr):
        """Lower vertex and fraction of the points' cell along axis ``k`` at a level of ``res``."""
        x = tl.load(x_ptr + offs * D + k, mask=mask, other=0.0)
        lo = tl.load(lo_ptr + k)
        span = tl.load(span_ptr + k)
        u = tl.minimum(tl.maximum((x - lo) / span, 0.0), 1.0)
        pos = u * (res - 1.0)
        base = tl.minimum(tl.floor(pos), res - 2.0)
        inside = ((x - lo) / span >= 0.0) & ((x - lo) / span <= 1.0)  # the clamp's derivative (torch's: 1 on the faces)
        return base.to(tl.int64), pos - base, inside

    @triton.jit
    def _row(c0, c1, c2, c3, res_i, dense, size, D: tl.constexpr):
        """Table row of integer vertex ``(c0, .., c_{D-1})`` within its level: row-major on a
        dense level, tiny-cuda-nn's spatial hash (primes 1, 2654435761, 805459861, 3674653429)
        on a hashed one."""
        r = c0
        h = c0
        if D > 1:
            r = r * res_i + c1
            h = h ^ ((c1 * 2654435761) & 0xFFFFFFFF)
        if D > 2:
            r = r * res_i + c2
            h = h ^ ((c2 * 805459861) & 0xFFFFFFFF)
        if D > 3:
            r = r * res_i + c3
            h = h ^ ((c3 * 3674653429) & 0xFFFFFFFF)
        return tl.where(dense, r, (h & 0xFFFFFFFF) % size)

    @triton.jit
    def _side(corner: tl.constexpr, k: tl.constexpr, b, f):
        """Axis ``k`` of corner ``corner``: its vertex, its linear weight and that weight's sign
        in d weight / d frac."""
        if (corner >> k) & 1:
            return b + 1, f, 1.0
        else:
            return b, 1.0 - f, -1.0

    @triton.jit
    def _cells(x_ptr, offs, mask, lo_ptr, span_ptr, res, D: tl.constexpr):
        b0, f0, i0 = _cell(x_ptr, offs, mask, lo_ptr, span_ptr, res, 0, D)
        b1, f1, i1, b2, f2, i2, b3, f3, i3 = b0, f0, i0, b0, f0, i0, b0, f0, i0
        if D > 1:
            b1, f1, i1 = _cell(x_ptr, offs, mask, lo_ptr, span_ptr, res, 1, D)
        if D > 2:
            b2, f2, i2 = _cell(x_ptr, offs, mask, lo_ptr, span_ptr, res, 2, D)
        if D > 3:
            b3, f3, i3 = _cell(x_ptr, offs, mask, lo_ptr, span_ptr, res, 3, D)
        return b0, f0, i0, b1, f1, i1, b2, f2, i2, b3, f3, i3

    @triton.jit
    def _program(res_ptr, off_ptr, size_ptr, dense_ptr, n, BLOCK: tl.constexpr):
        """This program's level, its block of points, and the level's resolution, table offset,
        table size and whether it is dense."""
        level = tl.program_id(1)
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        res_i = tl.load(res_ptr + level)
        dense = tl.load(dense_ptr + level) != 0
        return (
            level,
            offs,
            offs < n,
            res_i,
            res_i.to(tl.float32),
            tl.load(off_ptr + level),
            tl.load(size_ptr + level),
            dense,
        )

    @triton.jit
    def _grid_fwd(x_ptr, table_ptr, out_ptr, lo_ptr, span_ptr, res_ptr, off_ptr, size_ptr, dense_ptr, n,
                  D: tl.constexpr, F: tl.constexpr, L: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
        level, offs, mask, res_i, res, offset, size, dense = _program(res_ptr, off_ptr, size_ptr, dense_ptr, n, BLOCK)
        b0, f0, i0, b1, f1, i1, b2, f2, i2, b3, f3, i3 = _cells(x_ptr, offs, mask, lo_ptr, span_ptr, res, D)
        feat = tl.arange(0, F)
        acc = tl.zeros((BLOCK, F), dtype=tl.float32)
        for corner in tl.static_range(1 << D):
            c0, w, s0 = _side(corner, 0, b0, f0)
            c1, c2, c3 = b1, b2, b3
            if D > 1:
                c1, w1, s1 = _side(corner, 1, b1, f1)
                w = w * w1
            if D > 2:
                c2, w2, s2 = _side(corner, 2, b2, f2)
                w = w * w2
            if D > 3:
                c3, w3, s3 = _side(corner, 3, b3, f3)
                w = w * w3
            row = offset + _row(c0, c1, c2, c3, res_i, dense, size, D)
            vals = tl.load(table_ptr + row[:, None] * F + feat[None, :], mask=mask[:, None], other=0.0)
            acc += vals * w[:, None]
        out = acc.to(out_ptr.dtype.element_ty)  # fp32, or the autocast dtype: features leave in the MLP's precision
        tl.store(out_ptr + offs[:, None] * (L * F) + level * F + feat[None, :], out, mask=mask[:, None])

    @triton.jit
    def _grid_bwd(x_ptr, table_ptr, gout_ptr, gtable_ptr, gx_ptr, lo_ptr, span_ptr, res_ptr, off_ptr, size_ptr,
                  dense_ptr, n, D: tl.constexpr, F: tl.constexpr, L: tl.constexpr, BLOCK: tl.constexpr,
                  NEED_X: tl.constexpr):  # fmt: skip
        level, offs, mask, res_i, res, offset, size, dense = _program(res_ptr, off_ptr, size_ptr, dense_ptr, n, BLOCK)
        b0, f0, i0, b1, f1, i1, b2, f2, i2, b3, f3, i3 = _cells(x_ptr, offs, mask, lo_ptr, span_ptr, res, D)
        feat = tl.arange(0, F)
        g = tl.load(gout_ptr + offs[:, None] * (L * F) + level * F + feat[None, :], mask=mask[:, None], other=0.0)
        d0 = tl.zeros((BLOCK,), dtype=tl.float32)
        d1 = tl.zeros((BLOCK,), dtype=tl.float32)
        d2 = tl.zeros((BLOCK,), dtype=tl.float32)
        d3 = tl.zeros((BLOCK,), dtype=tl.float32)
        one = tl.full((BLOCK,), 1.0, tl.float32)
        for corner in tl.static_range(1 << D):
            c0, w0, s0 = _side(corner, 0, b0, f0)
            c1, c2, c3 = b1, b2, b3
            w1, w2, w3 = one, one, one
            s1, s2, s3 = 0.0, 0.0, 0.0
            if D > 1:
                c1, w1, s1 = _side(corner, 1, b1, f1)
            if D > 2:
                c2, w2, s2 = _side(corner, 2, b2, f2)
            if D > 3:
                c3, w3, s3 = _side(corner, 3, b3, f3)
            w = w0 * w1 * w2 * w3
            row = offset + _row(c0, c1, c2, c3, res_i, dense, size, D)
            ptrs = row[:, None] * F + feat[None, :]
            tl.atomic_add(gtable_ptr + ptrs, g * w[:, None], mask=mask[:, None])
            if NEED_X:
                gv = tl.sum(g * tl.load(table_ptr + ptrs, mask=mask[:, None], other=0.0), axis=1)
                d0 += gv * s0 * w1 * w2 * w3
                d1 += gv * s1 * w0 * w2 * w3
                d2 += gv * s2 * w0 * w1 * w3
                d3 += gv * s3 * w0 * w1 * w2
        if NEED_X:  # d frac_k / d x_k = (res - 1) / span_k inside the box, 0 where the clamp holds
            tl.atomic_add(gx_ptr + offs * D, tl.where(i0, d0 * (res - 1.0) / tl.load(span_ptr), 0.0), mask=mask)
            if D > 1:
                tl.atomic_add(gx_ptr + offs * D + 1, tl.where(i1, d1 * (res - 1.0) / tl.load(span_ptr + 1), 0.0), mask=mask)  # fmt: skip
            if D > 2:
                tl.atomic_add(gx_ptr + offs * D + 2, tl.where(i2, d2 * (res - 1.0) / tl.load(span_ptr + 2), 0.0), mask=mask)  # fmt: skip
            if D > 3:
                tl.atomic_add(gx_ptr + offs * D + 3, tl.where(i3, d3 * (res - 1.0) / tl.load(span_ptr + 3), 0.0), mask=mask)  # fmt: skip


class GridFunction(torch.autograd.Function):
    """The encoding through the Triton kernels: ``(x (N, d) fp32, table (rows, F) fp32)`` ->
    ``(N, L * F)`` fp32; backward gives the table's and the input's gradients."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, table: Tensor, enc: Any, dtype: torch.dtype = torch.float32) -> Tensor:
        n, d = x.shape
        levels, f = enc.n_levels, enc.n_features
        out = torch.empty(n, levels * f, device=x.device, dtype=dtype)
        args = (enc.lo, enc.span, enc._res_i, enc._offsets, enc._sizes, enc._dense_i, n)
        if n:
            _grid_fwd[(triton.cdiv(n, BLOCK), levels)](x, table, out, *args, D=d, F=f, L=levels, BLOCK=BLOCK)
        ctx.save_for_backward(x, table)
        ctx.enc = enc
        return out

    @staticmethod
    def backward(ctx: Any, gout: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        if torch.is_grad_enabled():
            raise NirError(
                "the Triton grid encoding has no second derivative (a loss on Field.gradient); "
                "use model.encoding.backend=torch for it"
            )
        x, table = ctx.saved_tensors
        enc = ctx.enc
        n, d = x.shape
        levels, f = enc.n_levels, enc.n_features
        gtable = torch.zeros_like(table)
        need_x = ctx.needs_input_grad[0]
        gx = torch.zeros_like(x) if need_x else x.new_zeros(1)
        args = (enc.lo, enc.span, enc._res_i, enc._offsets, enc._sizes, enc._dense_i, n)
        if n:
            _grid_bwd[(triton.cdiv(n, BLOCK), levels)](x, table, gout.contiguous().float(), gtable, gx, *args, D=d, F=f,
                                                       L=levels, BLOCK=BLOCK, NEED_X=need_x)  # fmt: skip
        return (gx if need_x else None), gtable, None, None


def encode(enc: Any, x: Tensor, dtype: torch.dtype = torch.float32, table: Tensor | None = None) -> Tensor:
    """``enc``'s encoding of fp32 points ``x`` (N, d) through the kernels, the features written
    as ``dtype`` (fp32, or bf16 / fp16 under autocast; computed in fp32 either way); ``table``
    in place of ``enc.embeddings`` (the first-use check of ``backend=auto`` passes its own)."""
    return GridFunction.apply(x.contiguous(), enc.embeddings if table is None else table, enc, dtype)
