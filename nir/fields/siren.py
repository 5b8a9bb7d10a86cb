"""SIREN: sinusoidal representation networks (Sitzmann et al., NeurIPS 2020, arXiv:2006.09661).

    phi_i(x) = sin(w0_i * (W_i x + b_i)),   f(x) = W_out phi_L(... phi_0(x)) + b_out

Initialisation (paper, Sec. 3.2 and supplement Sec. 1):
    first layer   W ~ U(-1/n, 1/n)                      (n = fan-in; w0 scales the argument)
    hidden layers W ~ U(-sqrt(6/n)/w0, sqrt(6/n)/w0)    so that w0 * W x ~ N(0, 1) and every
                                                         sine output is arcsine-distributed on
                                                         [-1, 1] (variance 1/2), layer after layer.
The paper uses w0 = 30 for the first layer ("first_omega_0") and for hidden layers.

Precision: a sine of a large argument needs an accurate argument. sin(w0 * a) with w0 = 30 and
|a| ~ 1 loses ~0.1 rad of phase when a is rounded to bf16 (8 mantissa bits). So the sine is
always evaluated in fp32, and the first layer (fan-in 1..3, negligible cost, largest argument)
runs entirely in fp32 under autocast; hidden matmuls follow autocast.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from nir.errors import check_network_sizes, positive_float


class SineLayer(nn.Module):
    """``sin(w0 * (W x + b))`` with SIREN initialisation, sine evaluated in fp32.

    Args:
        in_dim, out_dim: fan-in and fan-out.
        w0: frequency factor multiplying the pre-activation.
        is_first: first-layer initialisation U(-1/n, 1/n) instead of U(-sqrt(6/n)/w0, +...).
        fp32: run the matmul in fp32 even under autocast.
    """

    def __init__(self, in_dim: int, out_dim: int, w0: float, is_first: bool, fp32: bool) -> None:
        super().__init__()
        self.w0 = float(w0)
        self.fp32 = fp32
        self.linear = nn.Linear(in_dim, out_dim)
        bound = 1.0 / in_dim if is_first else math.sqrt(6.0 / in_dim) / self.w0
        with torch.no_grad():
            self.linear.weight.uniform_(-bound, bound)
            # The paper leaves biases at PyTorch's default U(-1/sqrt(n), 1/sqrt(n)).

    def forward(self, x: Tensor) -> Tensor:
        if self.fp32 and torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                a = self.linear(x.float())
        else:
            a = self.linear(x)
        return torch.sin(self.w0 * a.float())


class Siren(nn.Module):
    """SIREN field network: coordinates ``(..., in_dim)`` -> values ``(..., out_dim)``.

    Args:
        in_dim: coordinate dimension (filled in from the signal).
        out_dim: number of output channels (filled in from the signal).
        hidden_dim: width of every sine layer.
        num_layers: hidden width-to-width sine layers (total linear layers: num_layers + 2).
        w0: hidden-layer frequency factor (paper: 30).
        w0_first: first-layer frequency factor (paper: 30).
        first_layer_fp32: keep the first layer's matmul in fp32 under autocast (see module doc).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int = 256,
        num_layers: int = 3,
        w0: float = 30.0,
        w0_first: float = 30.0,
        first_layer_fp32: bool = True,
    ) -> None:
        super().__init__()
        check_network_sizes(in_dim, out_dim, hidden_dim, num_layers)
        positive_float("model.w0", w0)
        positive_float("model.w0_first", w0_first)
        layers = [SineLayer(in_dim, hidden_dim, w0_first, is_first=True, fp32=first_layer_fp32)]
        layers += [SineLayer(hidden_dim, hidden_dim, w0, is_first=False, fp32=False) for _ in range(num_layers)]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(hidden_dim, out_dim)
        bound = math.sqrt(6.0 / hidden_dim) / w0
        with torch.no_grad():
            self.head.weight.uniform_(-bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        """x: ``(..., in_dim)`` coordinates -> ``(..., out_dim)``."""
        return self.head(self.body(x))
