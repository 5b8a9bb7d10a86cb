"""Scientists' files: a NetCDF, HDF5 or Zarr variable as a :class:`~nir.data.signal.Signal`, and back.

Read through xarray (its netCDF4 / h5netcdf engines and zarr; ``pip install 'nir[sci]'``), so CF
conventions are decoded as xarray decodes them: ``_FillValue`` / ``missing_value`` become NaN
(nir's mask, :func:`nir.data.signal.valid_rows`), ``scale_factor`` / ``add_offset`` are applied.

- **Variable**: ``data.var`` (a file with several and none given: one line listing them), then
  ``data.isel`` / ``data.sel`` with xarray's semantics (a scalar drops its dimension).
- **Axes**: nir's axis k is the variable's k-th dimension (up to 4: t, z, y, x), printed at the
  start of a run. A dimension with a uniform numeric coordinate gets the box whose cell centres
  are its values (``lo = c0 - step/2``, ``hi = c_last + step/2``), so the field is queried in
  the file's units; a uniform datetime coordinate is counted in days since its first value; a
  descending coordinate (latitude 90 .. -90) is read reversed so that the axis ascends, and
  written back in the file's order. A dimension without a coordinate spans nir's default
  [-1, 1]. A non-uniform coordinate is refused in one line (``data.bounds`` places the samples
  uniformly instead; ``data.bounds`` always wins over coordinates).
- **Lazy**: the variable is never loaded whole by the reader. :class:`VariableRows` reads flat
  row ranges as the hyperslabs they cover, so a chunked variable larger than ``cache_mb``
  streams through the block cache as a memory-mapped ``.npy`` does; one that fits is read into
  memory once by the training data.
- **Back**: :func:`to_xarray` (``Field.to_xarray``) returns a DataArray with the source's
  dimension names, coordinates (the training grid, or any uniform grid asked for) and attributes.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nir.data.signal import Signal, default_bounds
from nir.errors import NirError, require

ENGINES = {".nc": None, ".nc4": None, ".h5": "h5netcdf", ".hdf5": "h5netcdf", ".zarr": "zarr"}
FORMATS = {".nc": "NetCDF", ".nc4": "NetCDF", ".h5": "HDF5", ".hdf5": "HDF5", ".zarr": "Zarr"}
UNIFORM_RTOL = 1e-3  # a coordinate is uniform when every step is within this fraction of the mean step
KEEP_ATTRS = (str, int, float, bool)


def xarray() -> Any:
    try:
        import xarray as xr
    except ImportError:
        raise NirError(
            "reading and writing NetCDF, HDF5 and Zarr needs xarray and its engines: pip install 'nir[sci]'"
        ) from None
    return xr


def open_dataset(path: Path) -> Any:
    """The file as a lazily indexed xarray Dataset (no dask: chunks are read when indexed)."""
    xr = xarray()
    suffix = path.suffix.lower()
    require(path.exists(), f"data.path {str(path)!r} does not exist; pass an existing {FORMATS[suffix]} file")
    kw: dict[str, Any] = {"phony_dims": "sort"} if ENGINES[suffix] == "h5netcdf" else {}
    try:
        with warnings.catch_warnings():  # a Zarr store without consolidated metadata is read all the same
            warnings.filterwarnings("ignore", ".*consolidated metadata.*", RuntimeWarning)
            try:
                return xr.open_dataset(path, engine=ENGINES[suffix], chunks=None, **kw)
            except ValueError as e:  # times whose units or calendar xarray cannot decode
                if "decode_times" not in str(e) and "decode time" not in str(e):
                    raise
                ds = xr.open_dataset(path, engine=ENGINES[suffix], chunks=None, decode_times=False, **kw)
                _say_undecoded(path, e)
                return ds
    except Exception as e:  # each engine raises its own types for a damaged or foreign file
        why = str(e).splitlines()[0][:160] if str(e) else ""
        raise NirError(
            f"data.path {str(path)!r} cannot be read as {FORMATS[suffix]} ({type(e).__name__}: {why}); "
            f"the file is damaged or not {FORMATS[suffix]}"
        ) from None


_UNDECODED: set[str] = set()


def _say_undecoded(path: Path, err: Exception) -> None:
    """One line, once per file and process, that its times are read as numbers."""
    if str(path) in _UNDECODED:
        return
    _UNDECODED.add(str(path))
    why = str(err).splitlines()[0][:120]
    print(
        f"data: {path.name}: xarray cannot decode its times ({why}); reading them as numbers in their own units",
        flush=True,
    )


def select(ds: Any, name: str, var: str | None, sel: dict | None, isel: dict | None) -> Any:
    """The variable ``var`` of ``ds``, indexed by ``isel`` then ``sel``; one line for each refusal."""
    names = [str(k) for k in ds.data_vars]
    require(names, f"data.path {name!r} holds no data variables")
    if var is None:
        require(len(names) == 1, f"data.path {name!r} holds {len(names)} variables ({', '.join(names)}); choose one with data.var=NAME")  # fmt: skip
        var = names[0]
    require(var in names, f"data.var {var!r} is not in {name!r}; it holds {', '.join(names)}")
    da = ds[var]
    require(
        np.issubdtype(da.dtype, np.number) and not np.issubdtype(da.dtype, np.complexfloating),
        f"data.var {var!r} in {name!r} has dtype {da.dtype}; nir fits real numbers: choose a numeric variable",
    )
    for what, index in (("isel", isel), ("sel", sel)):
        if not index:
            continue
        index = {str(k): v for k, v in dict(index).items()}
        unknown = [k for k in index if k not in da.dims]
        require(not unknown, f"data.{what} names {', '.join(unknown)}, not a dimension of {var!r} ({', '.join(map(str, da.dims))})")  # fmt: skip
        try:
            da = da.isel(index) if what == "isel" else da.sel(index)
        except Exception as e:
            raise NirError(f"data.{what}={index} cannot index {var!r} in {name!r} ({type(e).__name__}: {e})") from None
    require(da.size > 0, f"data.var {var!r} in {name!r} is empty after selection (shape {tuple(da.shape)})")
    extent = sum(int(da.sizes[d]) > 1 for d in da.dims)  # size-1 dimensions are dropped (squeeze)
    require(
        1 <= max(extent, 1) <= 4 and da.ndim >= 1,
        f"data.var {var!r} in {name!r} has {extent} dimensions ({', '.join(map(str, da.dims))}); nir fits 1 to 4: "
        f"select a slice with data.sel / data.isel, e.g. data.sel={{{da.dims[0]}: ...}}",
    )
    return da


def squeeze(da: Any) -> tuple[Any, list[dict]]:
    """``da`` without its size-1 dimensions (a time or depth of length 1: no extent to fit),
    and what writes them back (:func:`as_dataarray`): name, position, coordinate value."""
    dropped: list[dict] = []
    ones = [d for d in da.dims if da.sizes[d] == 1]
    if len(ones) == da.ndim:
        ones = ones[:-1]  # a single sample keeps one axis (and is refused as constant)
    for k, dim in enumerate(da.dims):
        if dim not in ones:
            continue
        rec: dict[str, Any] = {"name": str(dim), "axis": k, "coord": "none", "attrs": {}}
        if dim in da.coords:
            c = da.coords[dim]
            v = np.asarray(c.values).reshape(-1)
            rec["attrs"] = _plain(c.attrs)
            if np.issubdtype(v.dtype, np.datetime64):
                rec.update(
                    coord="time", origin=str(np.datetime_as_string(v[0], unit="s")), dtype=str(v.dtype), value=0.0
                )
            elif np.issubdtype(v.dtype, np.number):
                rec.update(coord="values", dtype=str(v.dtype), value=float(v[0]))
        dropped.append(rec)
    return (da.squeeze(ones, drop=True) if ones else da), dropped


def _plain(attrs: dict) -> dict:
    """Attributes as JSON values (numpy scalars unwrapped, arrays and others as strings)."""
    out = {}
    for k, v in attrs.items():
        if isinstance(v, np.generic):
            v = v.item()
        out[str(k)] = v if isinstance(v, KEEP_ATTRS) else str(v)
    return out


def axes_of(da: Any, name: str, bounds: Any) -> tuple[tuple[tuple[float, float], ...], list[dict]]:
    """The box of each dimension and what a saved field needs to write its coordinates back."""
    axes: list[dict] = []
    box: list[tuple[float, float]] = []
    given = default_bounds(da.ndim, bounds) if bounds is not None else None
    for k, dim in enumerate(da.dims):
        # (not coords.get: for a dimension without a coordinate it makes up the positions 0 .. n-1)
        coord = da.coords[dim] if dim in da.coords else None  # noqa: SIM401
        ax: dict[str, Any] = {
            "name": str(dim),
            "coord": "none",
            "attrs": _plain(coord.attrs) if coord is not None else {},
        }
        x = None
        if coord is not None and given is None:
            vals = np.asarray(coord.values)
            if np.issubdtype(vals.dtype, np.datetime64):
                origin = vals[0]
                x = (vals - origin) / np.timedelta64(1, "D")
                ax.update(coord="time", origin=str(np.datetime_as_string(origin, unit="s")), dtype=str(vals.dtype))
                ax["attrs"]["units"] = f"days since {ax['origin']}"
            elif np.issubdtype(vals.dtype, np.number):
                x = vals.astype(np.float64)
                ax.update(coord="values", dtype=str(vals.dtype))
        if x is not None:
            box.append(_axis_box(x, ax, str(dim), name))
        else:
            box.append(tuple(given[k]) if given is not None else (-1.0, 1.0))
            ax["descending"] = False
        axes.append(ax)
    return tuple(box), axes


def _axis_box(x: np.ndarray, ax: dict, dim: str, name: str) -> tuple[float, float]:
    """The box of a coordinate axis (its cell edges), and in ``ax`` whether it is read reversed
    and, for a non-uniform one, the samples' ``positions`` in ascending order."""
    n = len(x)
    step = (x[-1] - x[0]) / (n - 1) if n > 1 else 1.0
    d = np.diff(x)
    ax["descending"] = bool(step < 0)
    if step != 0 and bool(np.all(np.abs(d - step) <= UNIFORM_RTOL * abs(step))):
        a, b = sorted((float(x[0]), float(x[-1])))
        return float(a - abs(step) / 2), float(b + abs(step) / 2)
    require(
        bool(np.all(d > 0) or np.all(d < 0)),
        f"coordinate {dim!r} of {name!r} is not monotonic (steps {d.min():g} .. {d.max():g}); nir places each sample "
        f"at its coordinate, which must rise or fall: sort the dimension (xarray's sortby) or pass data.bounds",
    )
    pos = np.sort(x)
    ax["positions"] = [float(v) for v in pos]  # the samples sit where the file says (monthly time, Gaussian latitudes)
    return float(pos[0] - (pos[1] - pos[0]) / 2), float(pos[-1] + (pos[-1] - pos[-2]) / 2)


class VariableRows:
    """Flat row ranges of a variable, read from the file as the hyperslabs they cover (a lazy
    :class:`~nir.data.signal.Signal` source). Axes whose coordinate descends are read reversed.
    Pickles as the arguments that open it (a worker process opens the file again)."""

    def __init__(
        self, path: Path, var: str | None, sel: dict | None, isel: dict | None, flip: tuple[bool, ...], da: Any = None
    ) -> None:
        self.args = (Path(path), var, sel, isel, tuple(flip))
        self._open(da)

    def _open(self, da: Any = None) -> None:
        """Keep ``da`` (the variable the reader already selected) or open the file and select it."""
        path, var, sel, isel, flip = self.args
        self.da = da if da is not None else squeeze(select(open_dataset(path), str(path), var, sel, isel))[0]
        self.grid = tuple(int(n) for n in self.da.shape)
        self.shape = (*self.grid, 1)
        self.flip = flip

    def __getstate__(self) -> dict:
        return {"args": self.args}

    def __setstate__(self, state: dict) -> None:
        self.args = state["args"]
        self._open()

    def _get(self, key: tuple) -> np.ndarray:
        """``values[key]`` in nir's axis order (reversed axes counted from their end), flattened."""
        key = (*key, *(slice(0, n) for n in self.grid[len(key) :]))
        real, rev = [], []
        for axis, k in enumerate(key):
            n = self.grid[axis]
            if not self.flip[axis]:
                real.append(k)
            elif isinstance(k, slice):
                real.append(slice(n - k.stop, n - k.start))
                rev.append(sum(isinstance(q, slice) for q in key[:axis]))
            else:
                real.append(n - 1 - k)
        a = np.asarray(self.da.variable[tuple(real)].values, dtype=np.float32)
        for r in rev:
            a = np.flip(a, r)
        return a.reshape(-1)

    def _read(self, prefix: tuple, start: int, stop: int) -> list[np.ndarray]:
        k = len(prefix)
        if k == len(self.grid) - 1:
            return [self._get((*prefix, slice(start, stop)))]
        inner = math.prod(self.grid[k + 1 :])
        (i0, r0), (i1, r1) = divmod(start, inner), divmod(stop, inner)
        if i0 == i1:
            return self._read((*prefix, i0), r0, r1)
        parts = []
        if r0:
            parts += self._read((*prefix, i0), r0, inner)
            i0 += 1
        if i1 > i0:
            parts.append(self._get((*prefix, slice(i0, i1))))
        if r1:
            parts += self._read((*prefix, i1), 0, r1)
        return parts

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Flat rows ``[start, stop)`` as float32 ``(stop - start, 1)``."""
        if stop <= start:
            return np.empty((0, 1), np.float32)
        return np.concatenate(self._read((), start, stop))[:, None]


def read_variable(path: Path, var: str | None, sel: dict | None, isel: dict | None, bounds: Any) -> Any:
    """A NetCDF / HDF5 / Zarr variable as a lazy long-tailed :class:`~nir.data.signal.Signal`."""
    name = str(path)
    da, dropped = squeeze(select(open_dataset(path), name, var, sel, isel))
    box, axes = axes_of(da, name, bounds)
    rows = VariableRows(path, str(da.name), sel, isel, tuple(a["descending"] for a in axes), da)
    attrs = _plain(da.attrs)
    meta = {
        "kind": "array",
        "path": name,
        "var": str(da.name),
        "dims": axes,
        **({"squeezed": dropped} if dropped else {}),
        "attrs": attrs,
        "units": str(attrs.get("units", "")),
        "long_name": str(attrs.get("long_name", attrs.get("standard_name", da.name))),
        **({"dtype": str(da.dtype)} if str(da.dtype) != "float32" else {}),
    }
    return Signal(values=None, bounds=box, name=str(da.name), meta=meta, long_tailed=True, lazy=rows)


def describe(signal: Any) -> str | None:
    """The start line of a dataset signal: its variable, dimensions in nir's axis order and boxes."""
    dims = signal.meta.get("dims")
    if not dims:
        return None
    parts = []
    for k, (ax, (lo, hi), n) in enumerate(zip(dims, signal.bounds, signal.shape)):
        units = ax["attrs"].get("units", "")
        how = {"none": "no coordinate", "values": "coordinate", "time": "time coordinate"}[ax["coord"]]
        rev = ", read reversed" if ax.get("descending") else ""
        parts.append(f"axis {k} = {ax['name']} ({n}, {how} [{lo:g}, {hi:g}]{' ' + units if units else ''}{rev})")
    return f"data: {signal.meta['var']} from {Path(signal.meta['path']).name}: " + "; ".join(parts)


def dims_of(spec: dict) -> list[dict]:
    meta = spec.get("meta", {})
    d = len(spec["bounds"])
    return meta.get("dims") or [
        {"name": f"dim_{k}", "coord": "none", "attrs": {}, "descending": False} for k in range(d)
    ]


def grid_of(spec: dict, coords: dict) -> tuple[list[int], list[tuple[float, float]], list[Any] | None]:
    """The grid ``to_xarray(**coords)`` samples, as ``(shape, box, positions)``: per dimension
    the training grid (the file's own positions where its coordinate is not uniform), a number
    of samples over the training box, or given coordinate values (uniform ones as their cell
    box; any other ascending or descending values as positions)."""
    dims = dims_of(spec)
    names = [ax["name"] for ax in dims]
    unknown = [k for k in coords if k not in names]
    require(not unknown, f"to_xarray: {', '.join(unknown)} is not a dimension of this field ({', '.join(names)})")
    shape, box, positions = [], [], []
    for ax, n, (lo, hi) in zip(dims, spec["shape"], spec["bounds"]):
        want = coords.get(ax["name"])
        if want is None or (np.isscalar(want) and isinstance(want, (int, np.integer))):
            shape.append(int(n if want is None else want))
            box.append((float(lo), float(hi)))
            positions.append(ax.get("positions") if want is None else None)
            continue
        v = np.asarray(want).reshape(-1)
        if np.issubdtype(v.dtype, np.datetime64):
            require(ax["coord"] == "time", f"to_xarray: {ax['name']} is not a time axis")
            v = (v - np.datetime64(ax["origin"])) / np.timedelta64(1, "D")
        v = np.sort(v.astype(np.float64))
        require(len(v) == 1 or bool(np.all(np.diff(v) > 0)), f"to_xarray: the values for {ax['name']} must be distinct")
        step = (v[-1] - v[0]) / (len(v) - 1) if len(v) > 1 else (hi - lo) / n
        uniform = bool(np.all(np.abs(np.diff(v) - step) <= UNIFORM_RTOL * step))
        shape.append(len(v))
        box.append((float(v[0] - step / 2), float(v[-1] + step / 2)))
        positions.append(None if uniform else [float(x) for x in v])
    return shape, box, (positions if any(p is not None for p in positions) else None)


def coordinates(
    spec: dict, box: Sequence, positions: Sequence[Any] | None = None, shape: Sequence[int] | None = None
) -> tuple[dict, list[str]]:
    """The coordinates of a grid on ``box`` (``shape``: the training grid's when None) in the
    source's terms: per dimension name its coordinate (on the cell centres or at ``positions``,
    in the file's order, type and units; the size-1 dimensions' too), and the dimension names
    in the file's order."""
    xr = xarray()
    dims = dims_of(spec)
    shape = spec["shape"] if shape is None else shape
    coords, names = {}, [ax["name"] for ax in dims]
    for k, (ax, (lo, hi), n) in enumerate(zip(dims, box, shape)):
        placed = positions[k] if positions else None
        centres = np.asarray(placed, np.float64) if placed is not None else lo + (np.arange(n) + 0.5) * (hi - lo) / n
        c, attrs = _coordinate(ax, centres[::-1] if ax.get("descending") else centres)
        if c is not None:
            coords[ax["name"]] = xr.Variable(ax["name"], c, attrs)
    for sq in spec.get("meta", {}).get("squeezed", []):  # size-1 dimensions: dropped from the box, put back
        names.insert(int(sq["axis"]), sq["name"])
        c, attrs = _coordinate(sq, np.asarray([sq.get("value", 0.0)], np.float64))
        if c is not None:
            coords[sq["name"]] = xr.Variable(sq["name"], c, attrs)
    return coords, names


def as_dataarray(spec: dict, values: Any, box: Sequence, positions: Sequence[Any] | None = None) -> Any:
    """Sampled values ``(*shape, 1)`` on ``box`` as a DataArray: the source's dimension names,
    coordinates (:func:`coordinates`) and attributes, and the source's size-1 dimensions put back."""
    xr = xarray()
    meta = spec.get("meta", {})
    v = np.asarray(values)[..., 0]
    for k, ax in enumerate(dims_of(spec)):
        if ax.get("descending"):
            v = np.flip(v, k)
    coords, names = coordinates(spec, box, positions, v.shape)
    for axis in sorted(int(sq["axis"]) for sq in meta.get("squeezed", [])):
        v = np.expand_dims(v, axis)
    name = meta.get("var", meta.get("signal", "field"))
    return xr.DataArray(np.ascontiguousarray(v), dims=names, coords=coords, name=name, attrs=meta.get("attrs", {}))


def _coordinate(ax: dict, centres: np.ndarray) -> tuple[Any, dict]:
    """An axis's coordinate values in the file's type and units (``None`` without one)."""
    if ax["coord"] == "time":
        c = np.datetime64(ax["origin"], "ns") + np.round(centres * 86400e9).astype("timedelta64[ns]")
        attrs = {a: b for a, b in ax["attrs"].items() if a != "units"}  # the dtype carries the unit
        return c.astype(ax.get("dtype", "datetime64[ns]")), attrs  # the file's resolution
    if ax["coord"] == "values":
        return centres.astype(ax.get("dtype", "float64")), ax["attrs"]  # the file's coordinate type
    return None, {}


def write(array: Any, out: Path) -> None:
    """Write a DataArray to ``.nc`` (NetCDF4), ``.h5`` / ``.hdf5`` (h5netcdf) or ``.zarr``."""
    suffix = out.suffix.lower()
    require(suffix in ENGINES, f"--out {str(out)!r}: write .nc, .h5, .hdf5 or .zarr (or .npy, .png, .tif)")
    ds = array.to_dataset()
    try:
        if suffix == ".zarr":
            ds.to_zarr(out, mode="w")
        else:
            ds.to_netcdf(out, engine="h5netcdf" if suffix in (".h5", ".hdf5") else None)
    except OSError as e:
        from nir.checkpoint import WriteError

        raise WriteError(f"cannot write {str(out)!r} ({e.strerror or e}); check the disk and the directory") from None
