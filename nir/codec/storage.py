"""The stored precision of a field: ``float32``, ``float16``, or N-bit integers with scales
(``int2`` .. ``int8``; ``store.bits=N`` in a run, ``int8`` also as ``store.dtype=int8``).

Only the network's parameters (weights, biases, grid tables) are stored in the lower precision;
buffers (a Fourier matrix ``B``, the transform's statistics, the box) stay float32, since their
errors would be multiplied (a frequency error of 1e-3 is a phase error of ~1 rad at the top of a
Fourier encoding).

``float16`` stores ``w / 2^e`` with 2^e the power of two nearest max|w| (one per tensor, exact to
apply): grid tables start at 1e-4 and would otherwise fall among float16's subnormals, where
precision runs out (measured: +0.37 points on a hash grid's worst decade, 0.00 with the scale).

``intN`` stores ``round(w / scale)`` in [-Q, Q] with ``Q = 2^(N-1) - 1`` and ``scale = max|w| / Q``
(rounded to a bfloat16 value, as it is stored) for the bulk of the bytes: weight matrices whose
fan-in exceeds 4, one scale per row (``int8_scale="row"``, the output channel, as PyTorch's
per-channel scheme) or per tensor (``"tensor"``), and grid tables, one scale per block of 256
rows (``"row"``) or per tensor. Biases and the coordinate layer's weights (fan-in <= 4) are
stored as scaled float16 instead: they are a few hundred values, and their errors are multiplied
by the first layer's frequency scale (measured on the default SIREN: -3.6 dB with them in int8,
-0.15 dB as float16).

On load every tensor is turned back into float32 (dequantised), so a loaded field is an ordinary
fp32 module that answers exactly what the file holds. :func:`fake_quantize` is the same rounding
with a straight-through gradient, for quantisation-aware training.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from nir.errors import require

INT_DTYPES = tuple(f"int{b}" for b in range(2, 9))
DTYPES = ("float32", "float16", *INT_DTYPES)
INT8_SCALES = ("row", "tensor")
SCALE_SUFFIX = ".__int8_scale__"
F16_SUFFIX = ".__f16_scale__"
TABLE_BLOCK = 256  # rows of a grid table per int8 scale


def check(dtype: str, int8_scale: str = "row") -> None:
    require(
        dtype in DTYPES,
        f"store.dtype must be float32, float16 or int8 (int2 .. int8 through store.bits=2..8), got {dtype!r}",
    )
    require(int8_scale in INT8_SCALES, f"store.int8_scale must be row or tensor, got {int8_scale!r}")


#: ``store.dtype=auto`` (the default): the compact precision measured free of loss with its
#: quantisation-aware training: 8-bit integers (docs/compression.md: on the default image
#: -0.10 dB against float32 for 4.2x fewer bytes; 6 bits cost 1.1 dB there)
AUTO = "int8"


def dtype_of(dtype: str = "auto", bits: Any = None) -> str:
    """The stored dtype from ``store.dtype`` and ``store.bits`` (``bits`` N -> ``intN``; setting
    both to different things is one line; ``auto``: :data:`AUTO`, or ``intN`` with ``bits``)."""
    if dtype == "auto":
        dtype = AUTO if bits is None else f"int{bits}"
    if bits is None:
        check(dtype)
        return dtype
    require(
        isinstance(bits, int) and not isinstance(bits, bool) and 2 <= bits <= 8,
        f"store.bits must be an integer from 2 to 8, got {bits!r}",
    )
    require(
        dtype in ("float32", f"int{bits}"),
        f"store.bits={bits} stores integers but store.dtype={dtype}; set one of the two",
    )
    return f"int{bits}"


def bits_of(dtype: str) -> int | None:
    """N for ``intN``; None for the float dtypes."""
    return int(dtype[3:]) if dtype.startswith("int") else None


def quantized(name: str, v: Tensor) -> bool:
    """Stored as integers under ``intN``: weight matrices with fan-in > 4, and grid tables (other
    2-D parameters); the rest (biases, coordinate layers) as scaled float16."""
    return v.ndim == 2 and (not name.endswith("weight") or v.shape[1] > 4)


def _scales(name: str, v: Tensor, qmax: int, int8_scale: str) -> Tensor:
    """The stored scales (bfloat16 values, kept as float32: float16's range would not hold a
    grid table's 1e-4 / 127): one per weight row, per block of
    :data:`TABLE_BLOCK` table rows, or one per tensor."""
    a = v.detach().abs()
    if int8_scale == "row" and name.endswith("weight"):
        amax = a.amax(dim=1, keepdim=True)
    elif int8_scale == "row":  # a grid table: one scale per block of rows
        blocks = -(-v.shape[0] // TABLE_BLOCK)
        amax = torch.nn.functional.pad(a.amax(dim=1), (0, blocks * TABLE_BLOCK - v.shape[0]))
        amax = amax.reshape(blocks, TABLE_BLOCK).amax(dim=1, keepdim=True)
    else:
        amax = a.amax().reshape(1, 1)
    return (amax / qmax).clamp_min(torch.finfo(torch.float32).tiny).bfloat16().float()


def _expand(scale: Tensor, rows: int) -> Tensor:
    """Scales broadcast over a tensor's rows (a table's per-block scales repeated)."""
    if scale.shape[0] not in (1, rows):
        scale = scale.repeat_interleave(TABLE_BLOCK, dim=0)[:rows]
    return scale


def _int(name: str, v: Tensor, bits: int, int8_scale: str) -> tuple[Tensor, Tensor]:
    qmax = 2 ** (bits - 1) - 1
    scale = _scales(name, v, qmax, int8_scale)
    q = torch.round(v / _expand(scale, v.shape[0])).clamp(-qmax, qmax).to(torch.int8)
    return q, scale


def _float16(v: Tensor) -> tuple[Tensor, Tensor]:
    amax = float(v.abs().max()) if v.numel() else 0.0
    scale = torch.tensor([2.0 ** round(math.log2(amax)) if amax > 0 else 1.0])
    return (v / scale.to(v.device)).half(), scale


def fake_quantize(name: str, v: Tensor, dtype: str, int8_scale: str = "row") -> Tensor:
    """``v`` rounded as it would be stored at ``dtype``, with a straight-through gradient (the
    gradient of the identity): quantisation-aware training's forward."""
    bits = bits_of(dtype)
    if dtype == "float32":
        return v
    if bits is not None and quantized(name, v):
        qmax = 2 ** (bits - 1) - 1
        scale = _expand(_scales(name, v, qmax, int8_scale), v.shape[0])
        rounded = torch.round(v.detach() / scale).clamp(-qmax, qmax) * scale
    else:
        half, scale = _float16(v.detach().float())
        rounded = half.float() * scale.to(v.device)
    return v + (rounded.to(v.dtype) - v).detach()


def rate_proxy(name: str, v: Tensor, dtype: str, int8_scale: str = "row") -> Tensor | None:
    """A differentiable estimate of the bits ``v`` costs once quantised and entropy coded:
    ``sum log2(1 + |v| / scale)`` with the stored scale detached (a log-sum prior: small
    integers are cheap); None for a tensor that is not stored as integers."""
    bits = bits_of(dtype)
    if bits is None or not quantized(name, v):
        return None
    scale = _expand(_scales(name, v, 2 ** (bits - 1) - 1, int8_scale), v.shape[0])
    return torch.log2(1 + v.abs() / scale).sum()


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
        elif dtype.startswith("int") and quantized(name, v):
            out[name], scale = _int(name, v.float(), bits_of(dtype), int8_scale)
            out[name + SCALE_SUFFIX] = scale.bfloat16()
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
        if scale is not None:  # one per row, per block of table rows, or per tensor
            scale = _expand(scale.float().reshape(-1, 1), v.shape[0])
        scale = tensors.get(name + F16_SUFFIX) if scale is None else scale
        out[name] = v.float() * scale if scale is not None else (v.float() if v.is_floating_point() else v)
    return out


def round_trip(
    state: dict[str, Tensor], params: Iterable[str], dtype: str, int8_scale: str = "row"
) -> dict[str, Tensor]:
    """``decode(encode(...))``: the values a field stored at ``dtype`` answers with."""
    return decode(encode(state, params, dtype, int8_scale))


@dataclass(frozen=True)
class Store:
    """A run's ``store`` settings, checked: ``dtype`` (``float32``, ``float16`` or ``intN``, from
    ``store.dtype`` and ``store.bits``), ``int8_scale``, ``coder``, ``qat_fraction`` and
    ``rate_weight``."""

    dtype: str = "float32"
    int8_scale: str = "row"
    coder: str = "auto"
    qat_fraction: float = 0.0
    rate_weight: float = 0.0

    @classmethod
    def of(cls, node: Mapping[str, Any]) -> Store:
        """The settings of a plain ``store`` node; anything that is not one is one line naming the key."""
        from nir.codec.ints import CODERS

        given = str(node.get("dtype", "auto"))
        require(given in ("auto", "float32", "float16", "int8"),
                f"store.dtype must be one of auto, float32, float16, int8 (other integer widths: store.bits=2..8), got {given!r}")  # fmt: skip
        coder = str(node.get("coder", "auto"))
        require(coder in ("auto", *CODERS), f"store.coder must be auto, raw, ans or zstd, got {coder!r}")
        numbers = {key: node.get(key, 0.0) for key in ("qat_fraction", "rate_weight")}
        for key, v in numbers.items():
            require(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 and math.isfinite(v),
                    f"store.{key} must be a number >= 0, got {v!r}")  # fmt: skip
        require(
            numbers["qat_fraction"] <= 1, f"store.qat_fraction must be between 0 and 1, got {numbers['qat_fraction']!r}"
        )
        out = cls(dtype_of(given, node.get("bits")), str(node.get("int8_scale", "row")), coder,
                  float(numbers["qat_fraction"]), float(numbers["rate_weight"]))  # fmt: skip
        check(out.dtype, out.int8_scale)
        return out


class StoredTraining:
    """What training does for integer storage (:class:`Store`):
    quantisation-aware training in the last ``qat_fraction`` of ``max_steps`` (from a call's first
    step under ``steps_per_call``; before, K > 1 could miss it entirely; the forward on
    :func:`fake_quantize`'d parameters) and the rate term (``rate_weight`` x :func:`rate_proxy`
    bits per signal value, ``values`` of them), and the error bound the stored field keeps."""

    def __init__(self, store: Store, max_steps: int, values: int, bound: Any = None, steps_per_call: int = 1) -> None:
        self.dtype, self.scale = store.dtype, store.int8_scale
        bits = bits_of(self.dtype)
        fraction = store.qat_fraction
        # on a call's first step: K steps a call switch the forward between calls only
        start = round((1.0 - fraction) * max_steps) // steps_per_call * steps_per_call
        self.start = start if bits and fraction > 0 else None
        self.qat_on = False
        self.rate_weight = store.rate_weight
        require(self.rate_weight == 0 or bits, "store.rate_weight needs integer storage: set store.bits (2..8)")
        self.values = values
        self.bound = bound  # nir.codec.bound.Bound: a coded residual makes the stored field meet it on the grid

    def begins(self, step: int) -> bool:
        """Whether QAT begins at ``step`` (True once: the caller re-decides how steps run)."""
        if self.start is None or self.qat_on or step < self.start:
            return False
        self.qat_on = True
        return True

    def forward(self, network: torch.nn.Module, coords: Tensor) -> Tensor:
        """The network on its parameters as the file will store them, with the gradient of the
        unrounded ones (straight-through)."""
        params = {n: fake_quantize(n, p, self.dtype, self.scale) for n, p in network.named_parameters()}
        return torch.func.functional_call(network, params, (coords,))

    def rate(self, network: torch.nn.Module) -> Tensor:
        """``rate_weight`` x the estimated coded bits of the stored integers per signal value."""
        terms = [rate_proxy(n, p, self.dtype, self.scale) for n, p in network.named_parameters()]
        return self.rate_weight * torch.stack([t for t in terms if t is not None]).sum() / self.values
