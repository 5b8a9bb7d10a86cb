"""Fourier-feature MLP (Tancik et al., NeurIPS 2020, arXiv:2006.10739).

    gamma(v) = [cos(2 pi B v), sin(2 pi B v)],   f(v) = MLP_ReLU(gamma(v))

Two mappings from the paper, both a fixed matrix ``B`` (a buffer, so it is saved in the state
dict and the field is reproducible from its weights alone):
    gaussian:   B ~ N(0, sigma^2), shape (num_features, in_dim)                   (paper Sec. 6)
    positional: frequencies sigma^(j/m), j = 0..m-1, on each axis separately ("log-linear";
                m = num_features // in_dim rows per axis)                          (paper Sec. 5)
The paper's image experiments use sigma = 10 on coordinates in [0, 1]; nir's default box is
[-1, 1] (twice as wide), so sigma = 10 here corresponds to sigma = 20 there.

The encoding is computed in fp32 even under autocast: 2 pi B v reaches hundreds of radians and
bf16 would destroy its phase.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from nir.errors import NirError, check_network_sizes, positive_float, positive_int


class FourierMLP(nn.Module):
    """Fourier features followed by a ReLU MLP: ``(..., in_dim)`` -> ``(..., out_dim)``.

    Args:
        in_dim, out_dim: coordinate dimension and channels (filled in from the signal).
        hidden_dim: MLP width.
        num_layers: hidden width-to-width layers (total linear layers: num_layers + 2).
        num_features: rows of B (the encoding has 2 * num_features values).
        sigma: scale of the frequencies (std for gaussian, largest frequency for positional).
        encoding: "gaussian" or "positional".
        seed: seed for B, so the same config gives the same B whatever the global seed.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int = 256,
        num_layers: int = 3,
        num_features: int = 256,
        sigma: float = 10.0,
        encoding: str = "gaussian",
        seed: int = 0,
    ) -> None:
        super().__init__()
        check_network_sizes(in_dim, out_dim, hidden_dim, num_layers)
        positive_int("model.num_features", num_features)
        positive_float("model.sigma", sigma)
        gen = torch.Generator().manual_seed(int(seed))
        if encoding == "gaussian":
            B = torch.randn(num_features, in_dim, generator=gen) * sigma
        elif encoding == "positional":
            m = max(1, num_features // in_dim)
            freqs = sigma ** (torch.arange(m, dtype=torch.float64) / m)
            B = torch.zeros(m * in_dim, in_dim, dtype=torch.float64)
            for k in range(in_dim):
                B[k * m : (k + 1) * m, k] = freqs
            B = B.float()
        else:
            raise NirError(f"model.encoding must be 'gaussian' or 'positional', got {encoding!r}")
        self.register_buffer("B", B)
        dims = [2 * B.shape[0]] + [hidden_dim] * (num_layers + 1)
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU(inplace=True)]
        self.mlp = nn.Sequential(*layers, nn.Linear(hidden_dim, out_dim))

    def encode(self, x: Tensor) -> Tensor:
        """gamma(x) = [cos 2 pi B x, sin 2 pi B x], in fp32: ``(..., 2 * num_features)``."""
        with torch.autocast(x.device.type, enabled=False):
            proj = (2.0 * math.pi) * (x.float() @ self.B.T)
            return torch.cat([torch.cos(proj), torch.sin(proj)], dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        """x: ``(..., in_dim)`` coordinates -> ``(..., out_dim)``."""
        return self.mlp(self.encode(x))
