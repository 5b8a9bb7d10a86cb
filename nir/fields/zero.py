"""No network: a field that answers zero everywhere (in the transformed space), with no
parameters. Under a bound, ``bound.network=never`` (``nir-compress --network never``) stores this
and lets the bounded residual carry the whole signal: its context coder then codes every block on
the signal's own map, SZ3's way (docs/bounded.md, "A network only where it earns its bytes")."""

from __future__ import annotations

from torch import Tensor, nn


class Zero(nn.Module):
    """``(N, in_dim)`` coordinates to ``(N, out_dim)`` zeros; no parameters, no buffers."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.in_dim, self.out_dim = int(in_dim), int(out_dim)

    def forward(self, coords: Tensor) -> Tensor:
        return coords.new_zeros(coords.shape[0], self.out_dim)
