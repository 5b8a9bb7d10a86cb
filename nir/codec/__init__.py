"""The stored form of a field: the compact file's byte layout, CRC and spec coding
(:mod:`~nir.codec.container`), the stored precision and its scales (:mod:`~nir.codec.storage`),
the integer coders behind one front end (:mod:`~nir.codec.ints`: raw, ANS, zstd; the bounded
residual's coders too), the error bound and its residual (:mod:`~nir.codec.bound`) and the byte
budget that sizes a network (:mod:`~nir.codec.budget`).

The codec works on plain values: a spec (JSON-able dict), a state dict, a
:class:`~nir.codec.container.Template` of the spec's fresh field. Building a
:class:`~nir.field.Field` from them stays in :mod:`nir.field`; no coding module imports it, nor
Lightning or Hydra.

nir as a chunk codec where scientists keep their data (docs/ecosystem.md): ``nir.codec.Nir``
(a numcodecs codec, :mod:`nir.codec.chunks`) and ``nir.codec.NirZarr`` (the same as a Zarr 3
codec, :mod:`nir.codec.zarr3`) load on first use: they train fields, so they sit on the entry
layer and importing ``nir.codec`` stays free of numcodecs, zarr and Lightning.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "Nir":
        from nir.codec.chunks import Nir

        return Nir
    if name == "NirZarr":
        from nir.codec.zarr3 import NirZarr

        return NirZarr
    raise AttributeError(f"module 'nir.codec' has no attribute {name!r}")
