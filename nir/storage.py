"""The stored precision of a field file: ``float32``, ``float16``, or ``int8`` with a scale.

Only the network's parameters (weights, biases, grid tables) are stored in the lower precision;
buffers (a Fourier matrix ``B``, the transform's statistics, the box) stay float32, since their
errors would be multiplied (a frequency error of 1e-3 is a phase error of ~1 rad at the top of a
Fourier encoding).

``float16`` stores ``w / 2^e`` with 2^e the power of two nearest max|w| (one per tensor, exact to
apply): grid tables start at 1e-4 and would otherwise fall among float16's subnormals, where
precision runs out (measured: +0.37 points on a hash grid's worst decade, 0.00 with the scale).

``int8`` stores ``round(w / scale)`` in [-127, 127] with ``scale = max|w| / 127`` for the bulk of
the bytes: weight matrices whose fan-in exceeds 4, one scale per row (``int8_scale="row"``, the
output channel, as PyTorch's per-channel scheme) or per tensor (``"tensor"``), and grid tables,
one scale per block of 256 rows (``"row"``) or per tensor. Biases and the coordinate layer's
weights (fan-in <= 4) are stored as scaled float16 instead: they are a few hundred values, and
their errors are multiplied by the first layer's frequency scale (measured on the default
SIREN: -3.6 dB with them in int8, -0.15 dB as float16).

On load every tensor is turned back into float32 (dequantised), so a loaded field is an ordinary
fp32 module that answers exactly what the file holds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor

from nir.errors import require

DTYPES = ("float32", "float16", "int8")
INT8_SCALES = ("row", "tensor")
SCALE_SUFFIX = ".__int8_scale__"
F16_SUFFIX = ".__f16_scale__"
TABLE_BLOCK = 256  # rows of a grid table per int8 scale


def check(dtype: str, int8_scale: str = "row") -> None:
    require(dtype in DTYPES, f"store.dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    require(int8_scale in INT8_SCALES, f"store.int8_scale must be row or tensor, got {int8_scale!r}")


def _int8_eligible(name: str, v: Tensor) -> bool:
    """The bulk of the bytes: weight matrices with fan-in > 4, and grid tables (other 2-D parameters)."""
    return v.ndim == 2 and (not name.endswith("weight") or v.shape[1] > 4)


def _int8(name: str, v: Tensor, int8_scale: str) -> tuple[Tensor, Tensor]:
    if int8_scale == "row" and name.endswith("weight"):
        amax = v.abs().amax(dim=1, keepdim=True)
    elif int8_scale == "row":  # a grid table: one scale per block of rows
        blocks = -(-v.shape[0] // TABLE_BLOCK)
        padded = torch.nn.functional.pad(v.abs().amax(dim=1), (0, blocks * TABLE_BLOCK - v.shape[0]))
        amax = padded.reshape(blocks, TABLE_BLOCK).amax(dim=1).repeat_interleave(TABLE_BLOCK)[: v.shape[0], None]
    else:
        amax = v.abs().amax().reshape(1)
    scale = (amax / 127.0).clamp_min(torch.finfo(torch.float32).tiny)
    q = torch.round(v / scale).clamp(-127, 127).to(torch.int8)
    if int8_scale == "row" and not name.endswith("weight"):
        scale = scale[::TABLE_BLOCK].contiguous()  # stored once per block
    return q, scale.float()


def _float16(v: Tensor) -> tuple[Tensor, Tensor]:
    amax = float(v.abs().max()) if v.numel() else 0.0
    scale = torch.tensor([2.0 ** round(math.log2(amax)) if amax > 0 else 1.0])
    return (v / scale).half(), scale


def encode(
    state: dict[str, Tensor], params: Iterable[str], dtype: str = "float32", int8_scale: str = "row"
) -> dict[str, Tensor]:
    """The tensors to write for ``state`` (a field's state dict) at ``dtype``; ``params`` names
    the entries that are parameters (the only ones stored below float32)."""
    check(dtype, int8_scale)
    params = set(params)
    out: dict[str, Tensor] = {}
    for name, value in state.items():
        v = value.detach().cpu().contiguous()
        if name not in params or not v.is_floating_point() or dtype == "float32":
            out[name] = v.float() if v.is_floating_point() else v
        elif dtype == "int8" and _int8_eligible(name, v):
            out[name], out[name + SCALE_SUFFIX] = _int8(name, v.float(), int8_scale)
        else:
            out[name], out[name + F16_SUFFIX] = _float16(v.float())
    return out


def decode(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """A state dict (float32) from the tensors of a field file, whatever their stored precision."""
    out = {}
    for name, v in tensors.items():
        if name.endswith((SCALE_SUFFIX, F16_SUFFIX)):
            continue
        scale = tensors.get(name + SCALE_SUFFIX)
        if scale is not None and scale.shape[0] not in (1, v.shape[0]):  # one scale per block of table rows
            scale = scale.repeat_interleave(TABLE_BLOCK, dim=0)[: v.shape[0]]
        scale = tensors.get(name + F16_SUFFIX) if scale is None else scale
        out[name] = v.float() * scale if scale is not None else (v.float() if v.is_floating_point() else v)
    return out


def round_trip(
    state: dict[str, Tensor], params: Iterable[str], dtype: str, int8_scale: str = "row"
) -> dict[str, Tensor]:
    """``decode(encode(...))``: the values a field stored at ``dtype`` answers with."""
    return decode(encode(state, params, dtype, int8_scale))
