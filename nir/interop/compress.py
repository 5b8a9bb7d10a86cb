"""``nir-compress`` / ``nir-decompress``: nir as a compressor, for people who want one and not a
training framework (docs/bounded.md).

    nir-compress IN.npy OUT.nir --rel 0.01        # every non-zero value within 1 % (zeros within 1 % of the floor)
    nir-compress IN.nc OUT.nir --abs 0.5 --var t2m
    nir-compress IN.npy OUT.nir --ratio 100       # a byte budget, no bound
    nir-compress IN.zarr OUT.zarr --rel 0.01      # a chunked store, chunk by chunk on Dask (docs/ecosystem.md)
    nir-compress --info OUT.nir
    nir-decompress OUT.nir BACK.npy               # the grid in the input's shape and dtype

Compression is a ``nir-train`` run of the input (``data=array``: ``.npy``, ``.npz``, NetCDF,
HDF5, Zarr) with ``bound.*`` and ``size.share`` (or ``size.ratio``) set, in a temporary run
directory; its ``field.nir`` is the output. The network's size for a bound is
:data:`~nir.run.settings.NETWORK_SHARE` of what the bound costs without a network unless ``--ratio``
says otherwise (the rule and its measurement: docs/bounded.md).
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any

from nir.errors import require
from nir.run.settings import fit_overrides


def compress(
    input: str | Path, output: str | Path, var: str | None = None, quiet: bool = False, **settings: Any
) -> str:
    """Compress ``input`` into ``output`` (a ``.nir``) with ``settings`` (``rel=``, ``abs=``,
    ``ratio=``, ...: :data:`nir.run.settings.COMPRESSION_KEYS`); returns the summary line."""
    from nir.checkpoint import atomic_write_bytes
    from nir.run import fit

    output = Path(output)
    require(output.suffix == ".nir", f"nir-compress writes a .nir file, got {str(output)!r}")
    rel, abs_ = settings.get("rel"), settings.get("abs")
    bounded = rel is not None or abs_ is not None
    overrides = fit_overrides(quiet, **settings)
    overrides += [f"data.var={var}"] if var else []
    t = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nir-compress-") as tmp:
        _, m = fit(str(input), overrides, run_dir=Path(tmp) / "run")
        data = (Path(tmp) / "run" / "field.nir").read_bytes()
    atomic_write_bytes(output, lambda f: f.write(data))
    worst = m.get("max_rel_error", m.get("max_abs_error"))
    return (
        f"{output}: {len(data):,} bytes"
        + f" (ratio {m['compression_ratio']:.3g})"
        + (f", max {'relative' if rel is not None else 'absolute'} error {worst:.4g} (bound {rel if rel is not None else abs_:g})" if bounded else "")
        + f", worst-decade median {m['worst_decade_median']:.3g}" * (m.get("worst_decade_median") is not None and not bounded)
        + f", {time.perf_counter() - t:.1f} s"
    )  # fmt: skip


def info(path: str | Path) -> str:
    """``nir-compress --info``: shape, bound, floor, bytes by part, network."""
    from nir.codec import bound as bounds
    from nir.codec import container
    from nir.reuse.compact import compact_header_bytes
    from nir.reuse.field import load_field

    path = Path(path)
    field = load_field(path)
    data = path.read_bytes()
    spec = field.spec
    net = spec["network"]
    lines = [
        f"{path}: {len(data):,} bytes, nir field format {data[4]}",
        f"grid: shape {tuple(spec['shape'])} x {spec['channels']} channel(s), box {spec['bounds']}, "
        f"dtype {spec.get('meta', {}).get('dtype', 'float32')}",
        f"network: {net['target'].rsplit('.', 1)[-1]} ({field.num_parameters():,} parameters), "
        f"{ {k: v for k, v in net['kwargs'].items() if k not in ('bounds', 'in_dim', 'out_dim')} }",
    ]
    header = compact_header_bytes(data, field) if data[:4] == container.MAGIC else None
    residual = len(field.residual) if field.residual is not None else 0
    if field.residual is not None:
        r = bounds.decode(field.residual, math.prod(spec["shape"]) * spec["channels"])
        b = r.bound
        what = {"rel": f"relative {b.value:g}, floor {b.floor:.4g}", "abs": f"absolute {b.value:g}", "none": "none"}[
            b.kind
        ]
        below = int(spec.get("meta", {}).get("below_floor_values", 0))
        if b.kind == "rel":
            what += (f"; {below:,} non-zero values below the floor (given) are held to {b.value:g} x floor" if below
                     else "; every non-zero value within the relative bound")  # fmt: skip
        missing = f", {r.missing.size:,} missing samples" if r.missing.size else ""
        lines.append(
            f"bound: {what} (on the grid; {'empty residual' if r.empty else f'{r.exceptions.size} exceptions'}{missing})"
        )
    else:
        lines.append("bound: none (the network alone)")
    if header is not None:
        lines.append(f"bytes: {header:,} header, {len(data) - header - residual:,} network, {residual:,} residual")
    return "\n".join(lines)


def decompress(input: str | Path, output: str | Path) -> Any:
    """The field's grid in the input's shape and dtype (bounded where the file has a residual),
    written to ``output`` (``.npy``); returns the array."""
    import numpy as np

    from nir.checkpoint import atomic_write_bytes
    from nir.codec import container
    from nir.reuse.stored import plain_grid

    output = Path(output)
    require(output.suffix == ".npy", f"nir-decompress writes .npy, got {str(output)!r}")
    path = Path(input)
    arr = (
        plain_grid(path.read_bytes(), f"field file {str(path)!r}")
        if path.is_file() and container.is_compact(path)
        else None
    )
    if arr is None:  # a field with a network: evaluated by torch
        from nir.reuse.field import load_field

        arr = load_field(input).grid_array()

    def write(f) -> None:
        np.save(f, arr)

    atomic_write_bytes(output, write)
    return arr
