"""The stored precision of a field file: ``float32``, ``float16``, or ``int8`` with a scale.

Only the network's parameters (weights, biases, grid tables) are stored in the lower precision;
buffers (a Fourier matrix ``B``, the transform's statistics, the box) stay float32, since their
errors would be multiplied (a frequency error of 1e-3 is a phase error of ~1 rad at the top of a
Fourier encoding). ``int8`` stores ``round(w / scale)`` in [-127, 127] with ``scale = max|w| / 127``,
one scale per row of a 2-D weight matrix (``int8_scale="row"``, the output channel, as in
PyTorch's per-channel quantisation) or one per tensor (``"tensor"``; always for biases and grid
tables). On load every tensor is turned back into float32 (dequantised), so a loaded field is
an ordinary fp32 module that answers exactly what the file holds.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from nir.errors import require

DTYPES = ("float32", "float16", "int8")
INT8_SCALES = ("row", "tensor")
SCALE_SUFFIX = ".__int8_scale__"


def check(dtype: str, int8_scale: str = "row") -> None:
    require(dtype in DTYPES, f"store.dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    require(int8_scale in INT8_SCALES, f"store.int8_scale must be row or tensor, got {int8_scale!r}")


def _int8(name: str, v: Tensor, int8_scale: str) -> tuple[Tensor, Tensor]:
    per_row = int8_scale == "row" and v.ndim == 2 and name.endswith("weight")
    amax = v.abs().amax(dim=1, keepdim=True) if per_row else v.abs().amax().reshape(1)
    scale = (amax / 127.0).clamp_min(torch.finfo(torch.float32).tiny)
    q = torch.round(v / scale).clamp(-127, 127).to(torch.int8)
    return q, scale.float()


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
        elif dtype == "float16":
            out[name] = v.half()
        else:
            out[name], out[name + SCALE_SUFFIX] = _int8(name, v.float(), int8_scale)
    return out


def decode(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """A state dict (float32) from the tensors of a field file, whatever their stored precision."""
    out = {}
    for name, v in tensors.items():
        if name.endswith(SCALE_SUFFIX):
            continue
        scale = tensors.get(name + SCALE_SUFFIX)
        out[name] = v.float() * scale if scale is not None else (v.float() if v.is_floating_point() else v)
    return out


def round_trip(
    state: dict[str, Tensor], params: Iterable[str], dtype: str, int8_scale: str = "row"
) -> dict[str, Tensor]:
    """``decode(encode(...))``: the values a field stored at ``dtype`` answers with."""
    return decode(encode(state, params, dtype, int8_scale))
