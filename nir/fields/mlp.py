"""An input encoding followed by a ReLU MLP (tiny-cuda-nn's ``NetworkWithInputEncoding``).

    f(x) = W_L relu(... relu(W_0 enc(x) + b_0) ...) + b_L

The encoding is any module of :mod:`nir.fields.encodings` (or a trusted class of your own),
named by ``encoding`` (its import path); its keyword arguments sit beside the MLP's, with
tiny-cuda-nn's names (``model.n_levels``, ``model.log2_hashmap_size``, ...). It is built here,
not by Hydra, so the field's spec stays plain values. Sizes use nir's names:
``hidden_dim`` is tiny-cuda-nn's ``n_neurons``, and ``num_layers`` hidden width-to-width layers
make ``num_layers + 1`` hidden layers (tiny-cuda-nn's ``n_hidden_layers``) and ``num_layers + 2``
linear layers in all.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from nir.errors import NirError, check_network_sizes, require


class EncodedMLP(nn.Module):
    """Encoding + ReLU MLP: ``(..., in_dim)`` -> ``(..., out_dim)``.

    Args:
        in_dim, out_dim: coordinate dimension and channels (filled in from the signal).
        encoding: the encoding class, e.g. ``"nir.fields.encodings.GridEncoding"``.
        hidden_dim: MLP width (tiny-cuda-nn ``n_neurons``).
        num_layers: hidden width-to-width layers (tiny-cuda-nn ``n_hidden_layers`` - 1).
        bounds: the signal's box, passed to encodings that take one (grids); nir fills it in.
        **encoding_kwargs: the encoding's own arguments.

    Parameter groups (``optim.groups.<name>``): ``encoding`` (a grid's tables) and ``mlp``.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        encoding: str,
        hidden_dim: int = 64,
        num_layers: int = 1,
        bounds: Sequence[Sequence[float]] | None = None,
        **encoding_kwargs: Any,
    ) -> None:
        super().__init__()
        check_network_sizes(in_dim, out_dim, hidden_dim, num_layers)
        require(isinstance(encoding, str), f"model.encoding must name an encoding class, got {encoding!r}")
        from nir.components import import_class  # the same trusted-module rule as loading a field

        cls = import_class(encoding)
        if "bounds" in inspect.signature(cls).parameters:
            encoding_kwargs["bounds"] = bounds
        try:
            self.encoding = cls(in_dim=in_dim, **encoding_kwargs)
        except TypeError as e:
            raise NirError(f"model: {encoding} does not take these arguments ({e})") from None
        dims = [self.encoding.n_output_dims] + [hidden_dim] * (num_layers + 1)
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU(inplace=True)]
        self.mlp = nn.Sequential(*layers, nn.Linear(hidden_dim, out_dim))

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        groups = {"encoding": list(self.encoding.parameters()), "mlp": list(self.mlp.parameters())}
        return {k: v for k, v in groups.items() if v}

    def forward(self, x: Tensor) -> Tensor:
        """``Float[Tensor, "N in_dim"]`` -> ``Float[Tensor, "N out_dim"]``.

        The output layer runs in fp32 under autocast: in log space a bf16 output's spacing
        (2^-8 relative) is ~1 % of the value, a floor no training removes; the layer is
        ``hidden_dim x out_dim``, so this costs nothing measurable."""
        h = self.encoding(x)
        last = len(self.mlp) - 1
        for i, layer in enumerate(self.mlp):
            if i < last:
                h = layer(h)
            elif torch.is_autocast_enabled(h.device.type):
                with torch.autocast(h.device.type, enabled=False):
                    h = layer(h.float())
            else:
                h = layer(h)
        return h
