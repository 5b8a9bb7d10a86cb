"""Fourier-feature MLP (Tancik et al., NeurIPS 2020, arXiv:2006.10739): the Fourier encoding
(:class:`~nir.fields.encodings.FourierEncoding`) followed by a ReLU MLP.

    gamma(v) = [cos(2 pi B v), sin(2 pi B v)],   f(v) = MLP_ReLU(gamma(v))

The paper's image experiments use sigma = 10 on coordinates in [0, 1]; nir's default box is
[-1, 1] (twice as wide), so sigma = 10 here corresponds to sigma = 20 there.
"""

from __future__ import annotations

from torch import Tensor

from nir.fields.mlp import EncodedMLP


class FourierMLP(EncodedMLP):
    """Fourier features followed by a ReLU MLP: ``(..., in_dim)`` -> ``(..., out_dim)``; the
    composition :class:`EncodedMLP` with a :class:`~nir.fields.encodings.FourierEncoding`, with
    the paper's argument names, for Python callers and for field files written before the
    configs built it as that composition (``model=fourier`` is ``EncodedMLP`` with
    ``model.encoding.otype=nir.fields.encodings.FourierEncoding``).

    Args:
        in_dim, out_dim: coordinate dimension and channels (filled in from the signal).
        hidden_dim: MLP width.
        num_layers: hidden width-to-width layers (total linear layers: num_layers + 2).
        num_features: rows of B (the encoding has 2 * num_features values).
        sigma: scale of the frequencies (std for gaussian, largest frequency for positional).
        encoding: "gaussian" or "positional".
        seed: seed for B, so the same config gives the same B whatever the global seed.

    Fields saved before the encoding was split off (``B`` at the top of the state dict) load
    unchanged: the key is mapped to ``encoding.B``.
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
        node = {"otype": "nir.fields.encodings.FourierEncoding", "num_features": num_features, "sigma": sigma,
                "mapping": encoding, "seed": seed}  # fmt: skip
        super().__init__(in_dim, out_dim, node, hidden_dim=hidden_dim, num_layers=num_layers)
        self._register_load_state_dict_pre_hook(_legacy_keys)

    @staticmethod
    def upgrade_kwargs(kwargs: dict) -> dict:
        return kwargs  # its own arguments: ``encoding`` is the mapping's name here

    @property
    def B(self) -> Tensor:
        return self.encoding.B

    def encode(self, x: Tensor) -> Tensor:
        """gamma(x) = [cos 2 pi B x, sin 2 pi B x], in fp32: ``(..., 2 * num_features)``."""
        return self.encoding(x)


def _legacy_keys(state_dict, prefix, *args) -> None:
    if prefix + "B" in state_dict:
        state_dict[prefix + "encoding.B"] = state_dict.pop(prefix + "B")
