"""``nir-compress`` / ``nir-decompress``: the command lines of nir as a compressor (the work is
:mod:`nir.interop.compress`'s, and :mod:`nir.interop.stores`' for a Zarr store)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from nir.errors import cli_errors, require
from nir.interop.compress import compress, decompress, info
from nir.run.settings import COMPRESSION_KEYS, MIN_NETWORK_BYTES, NETWORK_CHOICES, NETWORK_SHARE


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
    ap.add_argument(
        "--floor",
        type=float,
        help="--rel's floor (default: the data's smallest non-zero magnitude, so every non-zero value is within --rel)",
    )
    ap.add_argument(
        "--ratio",
        type=float,
        help=f"the network's budget as a compression ratio (under a bound, default: {NETWORK_SHARE * 100:g}%% of the bytes the bound needs without a network, at least {MIN_NETWORK_BYTES} bytes)",
    )
    ap.add_argument("--preset", help="the network: a model preset (default: model=auto's choice for the data)")
    ap.add_argument("--var", help="the variable of a NetCDF / HDF5 / Zarr file")
    ap.add_argument("--steps", type=int, help="training steps (default: the preset's)")
    ap.add_argument(
        "--network",
        choices=NETWORK_CHOICES,
        help="under a bound: train a network (always), store none and code the signal alone (never), or auto "
        "(the default: a network only where --ratio or --preset asks for one; docs/bounded.md)",
    )
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
        line = compress(args.input, args.output, var=args.var, **{k: getattr(args, k) for k in COMPRESSION_KEYS})
        print(line)


def _compress_store(args: argparse.Namespace) -> str:
    from nir.interop.chunks import Nir
    from nir.interop.stores import compress_store

    require(args.workers is None or args.workers >= 1, f"--workers must be >= 1, got {args.workers}")
    require(args.workers is None or args.scheduler is None, "give --workers (a local cluster) or --scheduler, not both")
    codec = Nir(**{k: getattr(args, k) for k in COMPRESSION_KEYS})
    return compress_store(args.input, args.output, codec, var=args.var, chunks=args.chunks,
                          scheduler=args.scheduler, workers=args.workers)  # fmt: skip


def decompress_main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="nir-decompress", description="Decompress a nir field file into an array.")
    ap.add_argument("input", help="the .nir file (or any nir field file or run directory)")
    ap.add_argument("output", help="the .npy to write: the grid in the input's shape and dtype")
    args = ap.parse_args(argv)
    with cli_errors():
        t = time.perf_counter()
        arr = decompress(args.input, args.output)
        print(f"wrote {args.output}: shape {arr.shape}, {arr.dtype}, {time.perf_counter() - t:.2f} s")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(compress_main())
