"""Sine-style networks: SIREN (Sitzmann et al., NeurIPS 2020, arXiv:2006.09661) and the
activations papers compare with it, as options of one layer class (``activation``):

    phi_i(x) = act(W_i x + b_i),   f(x) = W_out phi_L(... phi_0(x)) + b_out

| activation | act(z) | initialisation | source |
|---|---|---|---|
| ``sine`` | sin(w0 z) | first U(-1/n, 1/n); hidden U(-sqrt(6/n)/w0, +) | SIREN, Sec. 3.2 |
| ``finer`` | sin(w0 (abs(z) + 1) z) | SIREN's; first-layer bias U(-k, k), k = ``first_bias_scale`` | FINER, Liu et al., CVPR 2024 (arXiv:2312.02434) |
| ``gauss`` | exp(-(s z)^2), s = ``scale`` | PyTorch's default (U(-1/sqrt(n), +)) | Ramasinghe & Lucey, ECCV 2022 (arXiv:2111.15135) |
| ``wire`` | exp(i w0 z - abs(s z)^2), complex z | PyTorch's default, real and imaginary parts | WIRE, Saragadam et al., CVPR 2023 (arXiv:2301.05187) |

(n is the fan-in.) FINER's reference code can stop the gradient through its factor abs(z) + 1;
nir differentiates the activation as written, so ``Field.gradient`` is the field's true derivative.
With the SIREN initialisation w0 * W x ~ N(0, 1) at every hidden layer and
every sine output is arcsine-distributed on [-1, 1] (variance 1/2), layer after layer.

WIRE is complex: its first layer has real weights and a complex output, the hidden layers and
the output layer complex weights, and the field is the real part of the output. nir carries a
complex activation as its real and imaginary halves side by side (``(..., 2 * hidden_dim)``)
and a complex weight as two real ``Linear`` layers (``linear`` the real part with the bias'
real part, ``linear_im`` the imaginary part), so the network is real arithmetic throughout:
it trains under autocast, compiles and exports to ONNX like the others. Its parameter count is
that of the complex network (the WIRE authors divide the width by sqrt(2) to compare at equal
parameters; ``model=wire`` does).

Precision: a sine of a large argument needs an accurate argument. sin(w0 * a) with w0 = 30 and
|a| ~ 1 loses ~0.1 rad of phase when a is rounded to bf16 (8 mantissa bits). So every activation
is evaluated in fp32, and the first layer (fan-in 1..3, negligible cost, largest argument) runs
entirely in fp32 under autocast; hidden matmuls follow autocast.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nir.errors import NirError, check_network_sizes, positive_float

ACTIVATIONS = ("sine", "finer", "gauss", "wire")
SIREN_INIT = ("sine", "finer")  # the others keep PyTorch's default initialisation


def activate(kind: str, a: Tensor, w0: float, scale: float, a_im: Tensor | None = None) -> Tensor:
    """``act(z)`` of the table above, in fp32; for ``wire`` (complex z = ``a + i a_im``) the real
    and imaginary parts of the result side by side."""
    if kind == "sine":
        return torch.sin(w0 * a)
    if kind == "finer":
        return torch.sin(w0 * (a.abs() + 1.0) * a)
    if kind == "gauss":
        return torch.exp(-((scale * a) ** 2))
    im = torch.zeros_like(a) if a_im is None else a_im
    # exp(i w0 z - |s z|^2) = exp(-w0 im - s^2 (re^2 + im^2)) (cos(w0 re) + i sin(w0 re))
    envelope = torch.exp(-w0 * im - scale**2 * (a * a + im * im))
    return torch.cat([envelope * torch.cos(w0 * a), envelope * torch.sin(w0 * a)], dim=-1)


class SineLayer(nn.Module):
    """``act(W x + b)`` (the module table), activation evaluated in fp32.

    Args:
        in_dim, out_dim: fan-in and fan-out (of the complex layer, for ``wire``).
        w0: frequency factor multiplying the pre-activation.
        is_first: first-layer initialisation (and, for ``wire``, a real input).
        fp32: run the matmul in fp32 even under autocast.
        activation: ``sine`` | ``finer`` | ``gauss`` | ``wire``.
        scale: the Gaussian's ``s`` (``gauss``, ``wire``).
        first_bias_scale: ``finer``: the first layer's bias is U(-k, k) with this k (None: PyTorch's).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        w0: float,
        is_first: bool,
        fp32: bool,
        activation: str = "sine",
        scale: float = 10.0,
        first_bias_scale: float | None = None,
        bounds: Sequence[Sequence[float]] | None = None,
    ) -> None:
        super().__init__()
        from nir.fields.encodings import UnitBox

        self.box = UnitBox(in_dim, bounds)  # the signal's box onto [-1, 1], where w0 = 30 is tuned
        self.w0, self.fp32, self.kind, self.scale = float(w0), fp32, activation, float(scale)
        self.is_first = is_first
        self.linear = nn.Linear(in_dim, out_dim)
        self.linear_im = nn.Linear(in_dim, out_dim) if activation == "wire" and not is_first else None
        if activation in SIREN_INIT:
            bound = 1.0 / in_dim if is_first else math.sqrt(6.0 / in_dim) / self.w0
            with torch.no_grad():
                self.linear.weight.uniform_(-bound, bound)
                # The SIREN paper leaves biases at PyTorch's default U(-1/sqrt(n), 1/sqrt(n)).
                if is_first and first_bias_scale is not None:
                    self.linear.bias.uniform_(-first_bias_scale, first_bias_scale)

    def _pre(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        if self.linear_im is None:
            return self.linear(x), None
        re, im = x.chunk(2, dim=-1)  # a complex input, carried as its two halves
        w_re, w_im = self.linear.weight, self.linear_im.weight
        a_re = F.linear(re, w_re, self.linear.bias) - F.linear(im, w_im)
        a_im = F.linear(im, w_re) + F.linear(re, w_im, self.linear_im.bias)
        return a_re, a_im

    def forward(self, x: Tensor) -> Tensor:
        if self.fp32 and torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                a, a_im = self._pre(x.float())
        else:
            a, a_im = self._pre(x)
        with torch.autocast(x.device.type, enabled=False):  # at least fp32 (a float64 network stays float64)
            wide = torch.promote_types(a.dtype, torch.float32)
            return activate(self.kind, a.to(wide), self.w0, self.scale, None if a_im is None else a_im.to(wide))


class Siren(nn.Module):
    """Sine-style field network: coordinates ``(..., in_dim)`` -> values ``(..., out_dim)``.

    Args:
        in_dim: coordinate dimension (filled in from the signal).
        out_dim: number of output channels (filled in from the signal).
        hidden_dim: width of every layer (complex width for ``wire``).
        num_layers: hidden width-to-width layers (total linear layers: num_layers + 2).
        w0: hidden-layer frequency factor (SIREN: 30; WIRE's omega).
        w0_first: first-layer frequency factor (SIREN: 30).
        first_layer_fp32: keep the first layer's matmul in fp32 under autocast (see module doc).
        activation: ``sine`` (SIREN) | ``finer`` | ``gauss`` | ``wire`` (module table).
        scale: the Gaussian width ``s`` of ``gauss`` and ``wire``.
        first_bias_scale: ``finer``'s first-layer bias range k.
        bounds: the signal's box (nir fills it in), mapped onto [-1, 1] before the first layer;
            ``None`` (fields saved before) or [-1, 1]: coordinates as they come.
    """

    #: what the divergence message lists for this network (a capability, not a class-name check)
    divergence_causes = ("w0 too large for the signal (model.w0, model.w0_first)",)

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int = 256,
        num_layers: int = 3,
        w0: float = 30.0,
        w0_first: float = 30.0,
        first_layer_fp32: bool = True,
        activation: str = "sine",
        scale: float = 10.0,
        first_bias_scale: float | None = None,
        bounds: Sequence[Sequence[float]] | None = None,
    ) -> None:
        super().__init__()
        from nir.fields.encodings import UnitBox

        self.box = UnitBox(in_dim, bounds)  # the signal's box onto [-1, 1], where w0 = 30 is tuned
        check_network_sizes(in_dim, out_dim, hidden_dim, num_layers)
        positive_float("model.w0", w0)
        positive_float("model.w0_first", w0_first)
        positive_float("model.scale", scale)
        if first_bias_scale is not None:
            positive_float("model.first_bias_scale", first_bias_scale)
        if activation not in ACTIVATIONS:
            raise NirError(f"model.activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        self.activation = activation
        kw = {"activation": activation, "scale": scale}
        layers = [
            SineLayer(in_dim, hidden_dim, w0_first, True, first_layer_fp32, first_bias_scale=first_bias_scale, **kw)
        ]
        layers += [SineLayer(hidden_dim, hidden_dim, w0, False, False, **kw) for _ in range(num_layers)]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(hidden_dim, out_dim)
        self.head_im = nn.Linear(hidden_dim, out_dim, bias=False) if activation == "wire" else None
        if activation in SIREN_INIT:
            bound = math.sqrt(6.0 / hidden_dim) / w0
            with torch.no_grad():
                self.head.weight.uniform_(-bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        """x: ``(..., in_dim)`` coordinates -> ``(..., out_dim)``."""
        h = self.body(self.box(x))
        if self.head_im is None:
            return self.head(h)
        re, im = h.chunk(2, dim=-1)  # the real part of the complex output layer
        return self.head(re) - F.linear(im, self.head_im.weight)
