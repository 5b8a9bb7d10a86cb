"""Where nir meets the tools scientists already use: the numcodecs codec ``nir.interop.Nir``
(:mod:`~nir.interop.chunks`), the same as a Zarr 3 serializer ``nir.interop.NirZarr``
(:mod:`~nir.interop.zarr3`), xarray's ``engine="nir"`` (:mod:`~nir.interop.backend`), a Zarr store
compressed chunk by chunk on Dask (:mod:`~nir.interop.stores`), nir as a compressor
(:mod:`~nir.interop.compress`) and nir measured beside SZ3, SPERR and ZFP
(:mod:`~nir.interop.benchmark`, what scripts/ share).

This layer trains fields through :mod:`nir.run`, so it sits above it. ``Nir`` and ``NirZarr``
load on first use (PEP 562): ``import nir.interop`` costs neither numcodecs, zarr nor Lightning.
"""

from __future__ import annotations

from typing import Any

#: public name -> the module of this folder that defines it
_LAZY = {"Nir": "nir.interop.chunks", "NirZarr": "nir.interop.zarr3"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'nir.interop' has no attribute {name!r}")
