"""Arrays: ``.npy`` (memory-mapped) and ``.npz`` files as 1-D to 4-D signals; NetCDF, HDF5 and
Zarr variables are handed to :mod:`nir.data.readers.datasets`. Every value is checked (numeric,
non-empty, no Inf, not all missing)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from nir.data.readers.suffixes import ARRAY_EXTENSIONS, DATASET_EXTENSIONS, check_file, reads
from nir.data.signal import MappedFile, Signal, default_bounds
from nir.errors import NirError, require


def _load_array(p: Path, key: str | None, mmap: bool) -> tuple[np.ndarray, MappedFile | None]:
    """The array in ``p`` (``.npy``, memory-mapped if ``mmap``, or one array of an ``.npz``),
    never unpickled, and its :class:`MappedFile` when mapped."""
    name = str(p)
    try:
        if p.suffix.lower() == ".npy":
            if mmap:
                mapped = MappedFile(p)
                return mapped.array, mapped
            return np.load(p, allow_pickle=False), None
        with np.load(p, allow_pickle=False) as z:
            names = list(z.files)
            require(names, f"data.path {name!r} holds no arrays")
            k = key if key is not None else (names[0] if len(names) == 1 else "values")
            require(k in names, f"data.var {k!r} not in {name!r}; it holds {', '.join(names)}")
            return z[k], None
    except NirError:
        raise
    except ValueError as e:
        raise NirError(
            f"data.path {name!r} could not be read without unpickling ({e}); save a plain numeric array"
        ) from None
    except Exception as e:
        raise NirError(f"data.path {name!r} could not be read as an array ({type(e).__name__}: {e})") from None


def _check_numeric(arr: np.ndarray, name: str) -> None:
    require(
        np.issubdtype(arr.dtype, np.number) or arr.dtype == bool,
        f"data.path {name!r} has non-numeric dtype {arr.dtype}; save numbers",
    )
    require(
        not np.issubdtype(arr.dtype, np.complexfloating),
        f"data.path {name!r} is complex; save the real part or the magnitude",
    )
    require(arr.size > 0, f"data.path {name!r} is empty (shape {arr.shape})")


@reads(*ARRAY_EXTENSIONS, *DATASET_EXTENSIONS)
def read_array(
    path: str,
    var: str | None = None,
    sel: dict | None = None,
    isel: dict | None = None,
    bounds: Sequence | None = None,
    channel_axis: int | None = None,
    mmap: bool = True,
    nan: str = "mask",
) -> Signal:
    """Read a 1-D to 4-D field (4-D: a time-varying volume, axes t, z, y, x) from ``.npy``
    (memory-mapped), ``.npz``, or a NetCDF (``.nc``), HDF5 (``.h5``, ``.hdf5``) or Zarr
    (``.zarr``) variable through xarray (:mod:`nir.data.readers.datasets`: chunks read lazily, dimensions,
    coordinates, units and missing values).

    Args:
        path: the file (a ``.zarr`` store is a directory).
        var: the array inside an ``.npz`` or the variable of a dataset (default: the only one;
            an ``.npz`` with several: ``"values"``; a dataset with several: one line listing them).
        sel, isel: datasets only: xarray's ``sel`` / ``isel`` before fitting, e.g.
            ``{time: 0, level: 500}`` (a scalar drops its dimension).
        bounds: coordinate box; default: a dataset's uniform coordinates (cell centres on its
            values, so the field answers in the file's units), else [-1, 1] per axis.
        channel_axis: ``.npy`` / ``.npz``: the axis holding channels (e.g. -1); ``None`` = a
            scalar field (datasets are scalar fields).
        mmap: memory-map ``.npy`` files instead of reading them whole.
        nan: ``mask`` (missing values, NaN or a dataset's ``_FillValue``, are masked: never
            trained on, never scored, counted in ``masked_samples``) or ``error`` (refused).

    The values are checked (numeric, non-empty, 1..4 grid axes, no Inf, not all missing) and
    kept as float32.
    """
    require(nan in ("mask", "error"), f"data.nan must be mask or error, got {nan!r}")
    p = Path(path).expanduser()
    require(
        p.suffix.lower() in ARRAY_EXTENSIONS + DATASET_EXTENSIONS,
        f"data.path {str(p)!r} has unsupported extension {p.suffix!r}; use one of {', '.join(ARRAY_EXTENSIONS + DATASET_EXTENSIONS)}",
    )
    if p.suffix.lower() in DATASET_EXTENSIONS:
        from nir.data.readers.datasets import read_variable

        require(
            channel_axis is None,
            f"data.channel_axis applies to .npy/.npz; a dataset variable {str(p)!r} is a scalar field: pick one with data.var",
        )
        return _checked(read_variable(p, var, sel, isel, bounds), nan)
    p = check_file(path, "array", ARRAY_EXTENSIONS)
    require(
        not sel and not isel, f"data.sel / data.isel apply to NetCDF, HDF5 and Zarr variables, not {p.suffix} files"
    )
    return _checked(_read_numpy(p, var, bounds, channel_axis, mmap), nan)


def _read_numpy(p: Path, var: str | None, bounds: Sequence | None, channel_axis: int | None, mmap: bool) -> Signal:
    """A ``.npy`` (memory-mapped where it can stay the file's memory) or ``.npz`` array as a signal."""
    name = str(p)
    arr, mapped = _load_array(p, var, mmap)
    _check_numeric(arr, name)
    if channel_axis is not None:
        arr = np.moveaxis(arr, channel_axis, -1)
        grid_ndim = arr.ndim - 1
    else:
        grid_ndim = arr.ndim
    require(
        1 <= grid_ndim <= 4,
        f"data.path {name!r} has {grid_ndim} grid axes (shape {arr.shape}); nir fits 1-D to 4-D grids (4-D: t, z, y, x)"
        + ("" if channel_axis is not None else " (set data.channel_axis if one axis holds channels)"),
    )
    values = np.asarray(arr, dtype=np.float32)
    if channel_axis is None:
        values = values[..., None]
    # still the file's memory (float32, C order, channels last): stream it, never copy it whole
    source = (
        mapped
        if mapped is not None and values.flags.c_contiguous and np.may_share_memory(values, mapped.array)
        else None
    )
    with warnings.catch_warnings():  # a read-only memory map: nir never writes into signal values
        warnings.simplefilter("ignore", UserWarning)
        tensor = torch.from_numpy(values if source is not None else np.ascontiguousarray(values))
    return Signal(
        values=tensor,
        bounds=default_bounds(grid_ndim, bounds),
        name=p.stem,
        # the file's dtype where it is not float32 (nir-decompress writes it back in it)
        meta={"kind": "array", "path": name, **({"dtype": str(arr.dtype)} if arr.dtype != np.float32 else {})},
        long_tailed=True,
        source=source,
    )


def _checked(sig: Signal, nan: str) -> Signal:
    """Refuse Inf, an all-missing signal, and any missing value under ``data.nan=error``."""
    name = sig.meta.get("path", sig.name)
    missing = sig.missing
    require(missing < sig.numel, f"data.path {name!r}: every value is missing (NaN or _FillValue); nothing to fit")
    require(
        missing == 0 or nan == "mask",
        f"data.path {name!r} contains {missing} missing (NaN) samples; data.nan=mask (the default) masks them, or fill them",
    )
    bad = sig.count_infinite()
    require(bad == 0, f"data.path {name!r} contains {bad} Inf values; replace them (or set them to NaN to mask them)")
    return sig
