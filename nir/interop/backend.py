"""``xr.open_dataset("f.nir")``: a nir field file as an xarray Dataset, evaluated lazily
(docs/ecosystem.md). The engine ``nir`` is registered through the ``xarray.backends`` entry point
and recognises the ``.nir`` suffix, so ``engine=`` is not needed.

The Dataset holds one variable, with the source's name, dimensions (in the file's order, its
size-1 dimensions put back), coordinates and attributes, the same as :meth:`Field.to_xarray
<nir.reuse.field.Field.to_xarray>` gives on the training grid. Its values are a lazy backend array
with outer indexing: a selection (``ds.t2m.sel(lat=slice(10, 20)).isel(time=0)``) evaluates the
field at the selected training-grid points only (:meth:`~nir.reuse.field.Field.grid_values`), so a
slice costs what the slice costs, and a bounded field answers within its bound there too.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from nir.data.readers.datasets import dims_of
from nir.errors import NirError, require

try:
    from xarray.backends import BackendArray, BackendEntrypoint
    from xarray.core import indexing
except ImportError as e:  # pragma: no cover - the sci extra brings xarray
    raise NirError(f"the xarray backend for .nir files needs xarray ({e}); pip install 'nir[sci]'") from None


class NirFieldArray(BackendArray):
    """A field's training grid as a lazy array in the file's dimension order: ``dims`` and
    ``shape`` are the Dataset's (size-1 dimensions included, descending axes in the file's
    order, a trailing ``channel`` for a field of several channels)."""

    def __init__(self, field: Any) -> None:
        self.field = field
        spec = field.spec
        meta = spec.get("meta", {})
        self.axes = dims_of(spec)
        self.squeezed = {int(sq["axis"]) for sq in meta.get("squeezed", [])}
        shape = [int(n) for n in spec["shape"]]
        self.nir_shape = tuple(shape)
        for axis in sorted(self.squeezed):
            shape.insert(axis, 1)
        self.shape = (*shape, field.channels) if field.channels > 1 else tuple(shape)
        # a bounded answer comes in the source's dtype; the network alone answers in float32
        self.dtype = np.dtype(field.source_dtype if field.residual is not None else "float32")
        self.lock = threading.Lock()  # one evaluation of the network at a time

    def __getitem__(self, key: Any) -> np.ndarray:
        return indexing.explicit_indexing_adapter(key, self.shape, indexing.IndexingSupport.OUTER, self._raw)

    def _raw(self, key: tuple) -> np.ndarray:
        """``key``: per dimension an integer, a slice or an integer array (outer indexing)."""
        picks, drop = [], []
        for k, (n, part) in enumerate(zip(self.shape, key)):
            idx = np.arange(n)[part]
            drop += [k] if np.ndim(idx) == 0 else []
            picks.append(np.atleast_1d(idx).astype(np.int64))
        channels = self.field.channels
        grid = [p for k, p in enumerate(picks[: len(self.shape) - (channels > 1)]) if k not in self.squeezed]
        grid = [self.nir_shape[a] - 1 - p if ax["descending"] else p for a, (ax, p) in enumerate(zip(self.axes, grid))]
        flat = np.ravel_multi_index(np.meshgrid(*grid, indexing="ij"), self.nir_shape).reshape(-1)
        with self.lock:
            values = self.field.grid_values(flat) if flat.size else np.zeros((0, channels), np.float32)
        out = values.reshape(*[len(p) for p in grid], channels)
        out = out[..., picks[-1]] if channels > 1 else out[..., 0]
        for axis in sorted(self.squeezed):
            out = np.expand_dims(out, axis)
        out = out.astype(self.dtype, copy=False)
        return out.squeeze(axis=tuple(drop)) if drop else out


def open_field_dataset(path: str | os.PathLike, drop_variables: Any = None) -> Any:
    """The Dataset of a ``.nir`` file (see the module docstring)."""
    import xarray as xr

    from nir.data.readers.datasets import coordinates
    from nir.reuse.field import load_field

    field = load_field(path)
    spec = field.spec
    meta = spec.get("meta", {})
    array = NirFieldArray(field)
    coords, names = coordinates(spec, spec["bounds"], field.training_positions())
    dims = [*names, *(["channel"] if field.channels > 1 else [])]
    name = str(meta.get("var", meta.get("signal", "field")))
    data = indexing.LazilyIndexedArray(array)
    variable = xr.Variable(dims, data, attrs=dict(meta.get("attrs", {})))
    drop = {drop_variables} if isinstance(drop_variables, str) else set(drop_variables or ())
    ds = xr.Dataset(
        {name: variable} if name not in drop else {}, coords={k: v for k, v in coords.items() if k not in drop}
    )
    ds.attrs["nir_file"] = str(Path(path).name)
    ds.set_close(None)
    return ds


class NirBackendEntrypoint(BackendEntrypoint):
    """xarray's ``engine="nir"``: a ``.nir`` field file as a lazy Dataset."""

    description = "nir field files (.nir): a trained neural field, evaluated lazily at the selected points"
    open_dataset_parameters = ("filename_or_obj", "drop_variables")

    def open_dataset(self, filename_or_obj: Any, *, drop_variables: Any = None) -> Any:
        require(
            isinstance(filename_or_obj, (str, os.PathLike)),
            f"engine 'nir' opens a .nir file by its path, got {type(filename_or_obj).__name__}",
        )
        return open_field_dataset(filename_or_obj, drop_variables)

    def guess_can_open(self, filename_or_obj: Any) -> bool:
        return isinstance(filename_or_obj, (str, os.PathLike)) and Path(filename_or_obj).suffix.lower() == ".nir"
