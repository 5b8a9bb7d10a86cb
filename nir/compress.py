"""``nir-compress`` / ``nir-decompress``: nir as a compressor, for people who want one and not a
training framework (docs/bounded.md).

    nir-compress IN.npy OUT.nir --rel 0.01        # every value within 1 % (below the floor: 1 % of it)
    nir-compress IN.nc OUT.nir --abs 0.5 --var t2m
    nir-compress IN.npy OUT.nir --ratio 100       # a byte budget, no bound
    nir-compress IN.zarr OUT.zarr --rel 0.01      # a chunked store, chunk by chunk on Dask (docs/ecosystem.md)
    nir-compress --info OUT.nir
    nir-decompress OUT.nir BACK.npy               # the grid in the input's shape and dtype

Compression is a ``nir-train`` run of the input (``data=array``: ``.npy``, ``.npz``, NetCDF,
HDF5, Zarr) with ``bound.*`` and ``size.share`` (or ``size.ratio``) set, in a temporary run
directory; its ``field.nir`` is the output. The network's size for a bound is
:data:`~nir.settings.NETWORK_SHARE` of what the bound costs without a network unless ``--ratio``
says otherwise (the rule and its measurement: docs/bounded.md).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from nir.errors import cli_errors, require
from nir.settings import MIN_NETWORK_BYTES, NETWORK_SHARE, fit_overrides


def compress_main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="nir-compress",
        description="Compress an array into a nir field file (.nir), or a Zarr store chunk by chunk into a Zarr store (.zarr).",
    )
    ap.add_argument("input", help=".npy / .npz / .nc / .h5 / .zarr (what data=array reads), or the .nir for --info")
    ap.add_argument("output", nargs="?", help="the .nir file to write, or a .zarr store (IN is then a .zarr store)")
    bound = ap.add_mutually_exclusive_group()
    bound.add_argument("--rel", type=float, help="point-wise relative bound: |y' - y| <= rel * max(|y|, floor)")
    bound.add_argument("--abs", type=float, help="point-wise absolute bound: |y' - y| <= abs")
    ap.add_argument("--floor", type=float, help="--rel's floor (default: the data's metric floor)")
    ap.add_argument(
        "--ratio",
        type=float,
        help=f"the network's budget as a compression ratio (under a bound, default: {NETWORK_SHARE:.0%} of the bytes the bound needs without a network, at least {MIN_NETWORK_BYTES} bytes)",
    )
    ap.add_argument("--preset", help="the network: a model preset (default: model=auto's choice for the data)")
    ap.add_argument("--var", help="the variable of a NetCDF / HDF5 / Zarr file")
    ap.add_argument("--steps", type=int, help="training steps (default: the preset's)")
    ap.add_argument("--chunks", help="a store's chunks: 64,64,64 or time=1,lat=90 (default: the input's)")
    ap.add_argument("--workers", type=int, help="a store: the LocalCluster's worker processes (default: one per core)")
    ap.add_argument("--scheduler", help="a store: an existing Dask cluster's scheduler address (tcp://host:8786)")
    ap.add_argument(
        "--info", action="store_true", help="describe a .nir file: shape, bound, floor, bytes by part, network"
    )
    args = ap.parse_args(argv)
    with cli_errors():
        if args.info:
            print(info(args.input))
            return
        require(args.output is not None, "nir-compress needs an output file: nir-compress IN OUT.nir --rel 0.01")
        require(args.rel is not None or args.abs is not None or args.ratio is not None,
                "nir-compress needs --rel, --abs or --ratio (a bound, or a byte budget)")  # fmt: skip
        if Path(args.output).suffix == ".zarr":
            print(_compress_store(args))
            return
        store_only = [f"--{k}" for k in ("chunks", "workers", "scheduler") if getattr(args, k) is not None]
        require(
            not store_only,
            f"{', '.join(store_only)}: for a .zarr output (a store chunk by chunk); {args.output!r} is one field",
        )
        line = compress(args.input, args.output, rel=args.rel, abs_=args.abs, floor=args.floor, ratio=args.ratio,
                        preset=args.preset, var=args.var, steps=args.steps)  # fmt: skip
        print(line)


def _compress_store(args: argparse.Namespace) -> str:
    from nir.codec.chunks import Nir
    from nir.stores import compress_store

    require(args.workers is None or args.workers >= 1, f"--workers must be >= 1, got {args.workers}")
    require(args.workers is None or args.scheduler is None, "give --workers (a local cluster) or --scheduler, not both")
    codec = Nir(rel=args.rel, abs=args.abs, ratio=args.ratio, floor=args.floor, preset=args.preset, steps=args.steps)
    return compress_store(args.input, args.output, codec, var=args.var, chunks=args.chunks,
                          scheduler=args.scheduler, workers=args.workers)  # fmt: skip


def compress(
    input: str | Path,
    output: str | Path,
    rel: float | None = None,
    abs_: float | None = None,
    floor: float | None = None,
    ratio: float | None = None,
    preset: str | None = None,
    var: str | None = None,
    steps: int | None = None,
    quiet: bool = False,
) -> str:
    """Compress ``input`` into ``output`` (a ``.nir``); returns the summary line."""
    import nir
    from nir.checkpoint import atomic_write_bytes

    output = Path(output)
    require(output.suffix == ".nir", f"nir-compress writes a .nir file, got {str(output)!r}")
    bounded = rel is not None or abs_ is not None
    overrides = fit_overrides(rel, abs_, floor, ratio, preset, steps, quiet)
    overrides += [f"data.var={var}"] if var else []
    t = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nir-compress-") as tmp:
        _, m = nir.fit(str(input), overrides, run_dir=Path(tmp) / "run")
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
    from nir.field import compact_header_bytes, load_field

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
    header = compact_header_bytes(data, field) if data[:4] == b"NIRf" else None
    residual = len(field.residual) if field.residual is not None else 0
    if field.residual is not None:
        r = bounds.decode(field.residual, math.prod(spec["shape"]) * spec["channels"])
        b = r.bound
        what = {"rel": f"relative {b.value:g}, floor {b.floor:.4g}", "abs": f"absolute {b.value:g}", "none": "none"}[
            b.kind
        ]
        missing = f", {r.missing.size:,} missing samples" if r.missing.size else ""
        lines.append(
            f"bound: {what} (on the grid; {'empty residual' if r.empty else f'{r.exceptions.size} exceptions'}{missing})"
        )
    else:
        lines.append("bound: none (the network alone)")
    if header is not None:
        lines.append(f"bytes: {header:,} header, {len(data) - header - residual:,} network, {residual:,} residual")
    return "\n".join(lines)


def decompress_main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="nir-decompress", description="Decompress a nir field file into an array.")
    ap.add_argument("input", help="the .nir file (or any nir field file or run directory)")
    ap.add_argument("output", help="the .npy to write: the grid in the input's shape and dtype")
    args = ap.parse_args(argv)
    with cli_errors():
        t = time.perf_counter()
        arr = decompress(args.input, args.output)
        print(f"wrote {args.output}: shape {arr.shape}, {arr.dtype}, {time.perf_counter() - t:.2f} s")


def decompress(input: str | Path, output: str | Path) -> Any:
    """The field's grid in the input's shape and dtype (bounded where the file has a residual),
    written to ``output`` (``.npy``); returns the array."""
    import numpy as np

    from nir.checkpoint import atomic_write_bytes
    from nir.field import load_field

    output = Path(output)
    require(output.suffix == ".npy", f"nir-decompress writes .npy, got {str(output)!r}")
    arr = load_field(input).grid_array()

    def write(f) -> None:
        np.save(f, arr)

    atomic_write_bytes(output, write)
    return arr


if __name__ == "__main__":  # pragma: no cover
    sys.exit(compress_main())
