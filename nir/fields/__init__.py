"""Coordinate networks. Each is a plain ``nn.Module`` whose constructor arguments are its config.

Every network takes ``in_dim`` (coordinate dimension) and ``out_dim`` (channels), which nir fills
in from the signal, and uses the same size names: ``hidden_dim`` (width) and ``num_layers``
(number of hidden width-to-width layers; the network has ``num_layers + 2`` linear layers, as
``hidden_layers`` in the SIREN authors' code).

Encodings (:mod:`nir.fields.encodings`: Fourier features, hash and dense grids) feed a ReLU MLP
through :class:`EncodedMLP`; SIREN is its own network.
"""

from nir.fields.auto import Auto
from nir.fields.encodings import FourierEncoding, GridEncoding
from nir.fields.fourier import FourierMLP
from nir.fields.mlp import EncodedMLP
from nir.fields.siren import Siren
from nir.fields.zero import Zero

__all__ = ["Auto", "EncodedMLP", "FourierEncoding", "FourierMLP", "GridEncoding", "Siren", "Zero"]
