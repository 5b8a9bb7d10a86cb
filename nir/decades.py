"""The one decade rule of the per-magnitude metric (:class:`nir.training.metrics.MagnitudeBins`) and the
decade sampler (:mod:`nir.data.samplers.decades`): a sample is drawn in the decade it is scored in.
Plain torch, so a sampler needs no metrics library."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def decade_edges(floor: float, top: float) -> list[float]:
    """``[floor, 10^a, 10^(a+1), ..., 10^b]`` with 10^a the first power of ten above ``floor``
    and 10^b >= ``top``. Bin 0 is ``[0, floor)``; bin i >= 1 is ``[edges[i-1], edges[i])``,
    the last one closed at the top."""
    a = math.floor(math.log10(floor) + 1e-9) + 1
    b = max(a, math.ceil(math.log10(max(top, floor)) - 1e-9))
    if 10.0**b <= top:
        b += 1
    return [float(floor)] + [10.0**k for k in range(a, b + 1)]


def decade_bin(mag: Tensor, edges: Tensor) -> Tensor:
    """Bin of each magnitude for :func:`decade_edges` ``edges`` (a float32 tensor): 0 below the
    floor, ``i`` for ``[edges[i-1], edges[i])``, the last bin closed at the top. An exact power of
    ten opens its decade (1e-2 is in ``[1e-2, 1e-1)``). The per-decade metric and the decade
    sampler both bin with this function, so a sample is drawn in the decade it is scored in."""
    return torch.bucketize(mag.float(), edges.to(mag.device), right=True).clamp_max(edges.numel() - 1)
