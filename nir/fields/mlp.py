"""An input encoding followed by a ReLU MLP (tiny-cuda-nn's ``NetworkWithInputEncoding``).

    f(x) = W_L relu(... relu(W_0 enc(x) + b_0) ...) + b_L

Configured as tiny-cuda-nn's two objects: the model node is the network (the MLP head:
``hidden_dim``, ``num_layers``) and ``model.encoding`` is the encoding's own node, its class in
``otype`` (an import path: any module of :mod:`nir.fields.encodings`, or a trusted class of
your own) and its keyword arguments beside it, with tiny-cuda-nn's names
(``model.encoding.n_levels``, ``model.encoding.log2_hashmap_size``, ``model.encoding.sigma``).
The encoding is built here, not by Hydra, so the field's spec stays plain values. Sizes use
nir's names: ``hidden_dim`` is tiny-cuda-nn's ``n_neurons``, and ``num_layers`` hidden
width-to-width layers make ``num_layers + 1`` hidden layers (tiny-cuda-nn's
``n_hidden_layers``) and ``num_layers + 2`` linear layers in all.

Field files written before the encoding had its own node (its class path in ``encoding``, its
arguments beside the MLP's) load through :meth:`EncodedMLP.upgrade_kwargs`.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from nir.errors import NirError, check_network_sizes, require


class EncodedMLP(nn.Module):
    """Encoding + ReLU MLP: ``(..., in_dim)`` -> ``(..., out_dim)``.

    Args:
        in_dim, out_dim: coordinate dimension and channels (filled in from the signal).
        encoding: the encoding's node: ``{"otype": "nir.fields.encodings.GridEncoding", **its
            arguments}`` (tiny-cuda-nn's ``encoding`` object).
        hidden_dim: MLP width (tiny-cuda-nn ``n_neurons``).
        num_layers: hidden width-to-width layers (tiny-cuda-nn ``n_hidden_layers`` - 1).
        bounds: the signal's box, passed to encodings that take one (grids, Fourier features); nir fills it in.

    Parameter groups (``optim.groups.<name>``): ``encoding`` (a grid's tables) and ``mlp``.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        encoding: Mapping[str, Any],
        hidden_dim: int = 64,
        num_layers: int = 1,
        bounds: Sequence[Sequence[float]] | None = None,
    ) -> None:
        super().__init__()
        check_network_sizes(in_dim, out_dim, hidden_dim, num_layers)
        require(
            isinstance(encoding, Mapping) and isinstance(encoding.get("otype"), str),
            f"model.encoding must be a node with the encoding's class in otype (model.encoding.otype=...), got {encoding!r}",
        )
        from nir.components import import_class  # the same trusted-module rule as loading a field

        kwargs = {k: v for k, v in encoding.items() if k != "otype"}
        cls = import_class(encoding["otype"])
        if "bounds" in inspect.signature(cls).parameters:
            kwargs["bounds"] = bounds
        try:
            self.encoding = cls(in_dim=in_dim, **kwargs)
        except TypeError as e:
            raise NirError(f"model.encoding: {encoding['otype']} does not take these arguments ({e})") from None
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

    @staticmethod
    def upgrade_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
        """The kwargs of a spec written before the encoding had its own node (``encoding`` its
        class path, its arguments beside the MLP's) in today's form; today's form unchanged.
        :func:`nir.components.build_component` calls it when a field file is loaded."""
        if not isinstance(kwargs.get("encoding"), str):
            return kwargs
        node = {"otype": kwargs["encoding"], **{k: v for k, v in kwargs.items() if k not in MLP_KEYS}}
        return {**{k: v for k, v in kwargs.items() if k in MLP_KEYS}, "encoding": node}


MLP_KEYS = ("in_dim", "out_dim", "encoding", "hidden_dim", "num_layers", "bounds")
