"""Held-out samples (issue 17): which grid samples training never sees, so a field's error on
them measures how it generalises (the Fourier-features protocol trains on every other pixel
and reports PSNR on the rest).

Membership is a pure function of a sample's flat index, the grid's shape and the seed, so it
needs no stored mask, is the same on every device, rank and resume, and works in chunks for
any signal size and for the streamed block cache:

- ``every_other``: a sample trains when every one of its grid coordinates is even (a quarter of
  an image, an eighth of a volume); the rest is held out.
- a fraction ``f`` in (0, 1): a sample is held out when a 32-bit integer hash of its index
  (mixed with the seed) falls below ``f``: a seeded, uniformly spread ``f`` of the grid.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from nir.errors import NirError

_M32 = 0xFFFFFFFF


def _mix32(x: Tensor) -> Tensor:
    """A 32-bit integer hash (Wang/Murmur-style finaliser) of int64 values in [0, 2^32):
    every product stays below 2^63, so int64 arithmetic is exact on every device."""
    x = ((x >> 16) ^ x) * 0x45D9F3B & _M32
    x = ((x >> 16) ^ x) * 0x45D9F3B & _M32
    return (x >> 16) ^ x


class Holdout:
    """The held-out part of a grid of ``shape`` (``spec``: ``"every_other"`` or a fraction)."""

    def __init__(self, spec: Any, shape: tuple[int, ...], seed: int = 0) -> None:
        self.shape, self.seed = tuple(int(s) for s in shape), int(seed)
        if str(spec) == "every_other":
            self.kind, self.fraction = "every_other", None
        else:
            try:
                f = float(spec)
            except (TypeError, ValueError):
                f = -1.0
            if not 0.0 < f < 1.0:
                raise NirError(f"data.holdout must be every_other or a fraction in (0, 1) such as 0.2, got {spec!r}")
            self.kind, self.fraction = "fraction", f
        if self.kind == "every_other" and all(s == 1 for s in self.shape):
            raise NirError("data.holdout=every_other needs a grid with more than one sample")

    @staticmethod
    def of(spec: Any, shape: tuple[int, ...], seed: int = 0) -> Holdout | None:
        """The holdout for a config value (``None``/``null``/``false`` for none)."""
        if spec is None or str(spec).lower() in ("null", "none", "false", "0", "0.0"):
            return None
        return Holdout(spec, shape, seed)

    def __str__(self) -> str:
        return "every other sample along each axis" if self.kind == "every_other" else f"a seeded {self.fraction:g}"

    def held(self, idx: Tensor) -> Tensor:
        """Whether each flat index ``(B,)`` (int64) is held out: a bool tensor ``(B,)``."""
        idx = idx.long()
        if self.kind == "every_other":
            odd = torch.zeros(idx.shape, dtype=torch.bool, device=idx.device)
            rem = idx
            for n in reversed(self.shape):
                odd |= rem.remainder(n).remainder(2) == 1
                rem = rem.div(n, rounding_mode="floor")
            return odd
        x = (idx ^ (idx >> 32)) & _M32  # fold indices beyond 2^32
        x = _mix32(x ^ _mix32(torch.full_like(x, self.seed & _M32) + 0x9E3779B9 & _M32))
        return x.double() / 2.0**32 < self.fraction

    def held_range(self, start: int, stop: int, device: Any = None) -> Tensor:
        """:meth:`held` of flat rows ``[start, stop)``."""
        return self.held(torch.arange(start, stop, device=device))

    def train_indices(self, numel: int, device: Any = None, chunk: int = 1 << 22) -> Tensor:
        """The flat indices of the training samples, ascending (built in chunks)."""
        parts = []
        for a in range(0, numel, chunk):
            idx = torch.arange(a, min(numel, a + chunk), device=device)
            parts.append(idx[~self.held(idx)])
        out = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long, device=device)
        if out.numel() == 0:
            raise NirError(
                f"data.holdout={self.fraction or self.kind} leaves no training samples; use a smaller fraction"
            )
        return out
