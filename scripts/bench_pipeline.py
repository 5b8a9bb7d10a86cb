#!/usr/bin/env python
"""nir in the storage stack (issue 36): a chunked Zarr store compressed by ``nir-compress`` on a
Dask ``LocalCluster`` of 1 and 2 workers, against the same chunks coded by SZ3's, ZFP's, SPERR's
and EBCC's numcodecs codecs (numcodecs-wasm-*) under the same guarantee (TTHRESH has no
point-wise mode), and random access: one
8^3 window read from the nir store (Zarr's partial decode: the field evaluated at 512 samples)
against decoding its whole chunk with SZ3. Writes the table into docs/ecosystem.md.

    pip install -e ".[bench]"
    .venv/bin/python scripts/bench_pipeline.py                       # 256^3 in 64^3 chunks (the issue's size)
    .venv/bin/python scripts/bench_pipeline.py --n 128 --steps 300   # what docs/ecosystem.md shows (2-core machine)

The field is ``sources3d`` (a background of 1e-4 .. 0.1 with a few sources up to several hundred)
at ``--n``^3 in ``--chunk``^3 chunks. The guarantee is ``|y' - y| <= rel * max(|y|, floor)`` at
every sample; the anchors get it as an absolute bound ``ln(1 + rel)`` on nir's own map (linear
below the floor, logarithmic above: ``nir.codec.bound.Bound.g``), chunk by chunk, and every
method's error is measured here on the decoded values, not taken from the codec.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nir.codec.bound import Bound
from nir.data.synthetic import sources3d
from nir.interop.benchmark import write_section
from nir.interop.chunks import Nir
from nir.interop.stores import compress_store


def max_rel(back: np.ndarray, y: np.ndarray, eps: float, floor: float) -> float:
    """The worst error in units of the bound (<= 1 keeps the guarantee)."""
    err = np.abs(back.astype(np.float64) - y.astype(np.float64))
    return float((err / (eps * np.maximum(np.abs(y.astype(np.float64)), floor))).max())


def blocks(n: int, c: int):
    for i in range(0, n, c):
        for j in range(0, n, c):
            for k in range(0, n, c):
                yield (slice(i, i + c), slice(j, j + c), slice(k, k + c))


def anchor_codec(name: str, tolerance: float):
    """The anchor's numcodecs codec under an absolute tolerance (its point-wise mode)."""
    if name == "SZ3":
        from numcodecs_wasm_sz3 import Sz3

        return Sz3(eb_mode="abs", eb_abs=tolerance)
    if name == "ZFP":
        from numcodecs_wasm_zfp import Zfp

        return Zfp(mode="fixed-accuracy", tolerance=tolerance)
    if name == "SPERR":
        from numcodecs_wasm_sperr import Sperr

        return Sperr(mode="pwe", pwe=tolerance)
    from numcodecs_wasm_ebcc import Ebcc

    return Ebcc(residual="absolute", error=tolerance)


#: the anchors with a point-wise mode (TTHRESH bounds the relative Frobenius norm only: no row)
ANCHORS = ("SZ3", "ZFP", "SPERR", "EBCC")


def anchor(name: str, y: np.ndarray, chunk: int, bound: Bound) -> dict:
    """An anchor on every chunk of nir's map of ``y``, under the map's absolute tolerance."""
    codec = anchor_codec(name, bound.step)
    g = bound.g(y.astype(np.float64)).astype(np.float32)
    back = np.empty_like(y)
    nbytes, t_enc, t_dec = 0, 0.0, 0.0
    for sl in blocks(y.shape[0], chunk):
        block = np.ascontiguousarray(g[sl])
        t = time.perf_counter()
        data = codec.encode(block)
        t_enc += time.perf_counter() - t
        t = time.perf_counter()
        back[sl] = bound.g_inv(np.asarray(codec.decode(data)).reshape(block.shape).astype(np.float64))
        t_dec += time.perf_counter() - t
        nbytes += len(data)
    return {"bytes": nbytes, "worst": max_rel(back, y, bound.value, bound.floor), "encode_s": t_enc,
            "decode_s": t_dec, "codec": codec}  # fmt: skip


def nir_row(
    src: Path, out: Path, eps: float, floor: float, steps: int, workers: int, network: str | None = None
) -> dict:
    import xarray as xr

    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    line = compress_store(
        src, out, Nir(rel=eps, floor=floor, steps=steps, network=network), var="v", workers=workers, progress=False
    )
    seconds = time.perf_counter() - t
    nbytes = sum(p.stat().st_size for p in (out / "v" / "c").rglob("*") if p.is_file())
    t = time.perf_counter()
    back = xr.open_zarr(out).v.values
    decode = time.perf_counter() - t
    y = xr.open_zarr(src).v.values
    print(line, flush=True)
    return {"bytes": nbytes, "worst": max_rel(back, y, eps, floor), "encode_s": seconds, "decode_s": decode}


def random_access(nir_store: Path, sz3: dict, y: np.ndarray, chunk: int, bound: Bound, reps: int = 5) -> dict:
    """Median seconds to read one 8^3 window: nir's partial decode against SZ3's whole chunk."""
    import zarr

    arr = zarr.open_array(nir_store / "v", mode="r")
    rng = np.random.default_rng(0)
    g = bound.g(y.astype(np.float64)).astype(np.float32)
    t_nir, t_nir_chunk, t_sz3 = [], [], []
    for _ in range(reps):
        a, b, c = (int(v) for v in rng.integers(0, y.shape[0] // chunk, 3) * chunk + rng.integers(0, chunk - 8, 3))
        window = (slice(a, a + 8), slice(b, b + 8), slice(c, c + 8))
        t = time.perf_counter()
        part = arr[window]
        t_nir.append(time.perf_counter() - t)
        whole = tuple(slice(s.start // chunk * chunk, s.start // chunk * chunk + chunk) for s in window)
        t = time.perf_counter()
        arr[whole]
        t_nir_chunk.append(time.perf_counter() - t)
        data = sz3["codec"].encode(np.ascontiguousarray(g[whole]))
        t = time.perf_counter()
        back = bound.g_inv(np.asarray(sz3["codec"].decode(data)).reshape((chunk,) * 3).astype(np.float64))
        back[tuple(slice(s.start % chunk, s.start % chunk + 8) for s in window)]
        t_sz3.append(time.perf_counter() - t)
        assert max_rel(part, y[window], bound.value, bound.floor) <= 1
    return {
        "nir": statistics.median(t_nir),
        "nir_chunk": statistics.median(t_nir_chunk),
        "sz3": statistics.median(t_sz3),
    }


def report(args, rows: dict, access: dict, raw: int) -> str:
    lines = [
        f"`scripts/bench_pipeline.py --n {args.n} --chunk {args.chunk} --steps {args.steps} --rel {args.rel} "
        f"--floor {args.floor}` on {platform.machine()} ({os.cpu_count()} cores), {time.strftime('%Y-%m-%d')}: "
        f"sources3d {args.n}^3 float32 ({raw / 1e6:.1f} MB) in {args.chunk}^3 chunks "
        f"({(args.n // args.chunk) ** 3} chunks of {args.chunk**3 * 4 / 1e6:.2f} MB); every sample within "
        f"{args.rel:g} x max(|y|, {args.floor:g}); 'worst' is the largest error in units of that bound, measured here.",
        "",
        "| method | bytes | ratio | worst (> 1: the guarantee missed) | encode s | chunks/s | MB/s | decode s (whole store) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    chunks = (args.n // args.chunk) ** 3
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['bytes']:,} | {raw / r['bytes']:.1f} | {r['worst']:.4f} | {r['encode_s']:.1f} | "
            f"{chunks / r['encode_s']:.3g} | {raw / 1e6 / r['encode_s']:.3g} | {r['decode_s']:.2f} |"
        )
    lines += [
        "",
        f"Random access, one 8^3 window (median of 5): nir store (Zarr partial decode, 512 samples evaluated) "
        f"{access['nir'] * 1e3:.1f} ms; its whole {args.chunk}^3 chunk from the nir store {access['nir_chunk'] * 1e3:.1f} ms; "
        f"SZ3 decoding the window's whole chunk {access['sz3'] * 1e3:.1f} ms "
        f"(nir {access['sz3'] / access['nir']:.2g}x faster for the window).",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--steps", type=int, default=None, help="training steps per chunk (default: the preset's)")
    ap.add_argument("--rel", type=float, default=0.01)
    ap.add_argument("--floor", type=float, default=1e-3)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument(
        "--network", choices=["auto", "always", "never"], help="the chunk codec's network= (default: its own, auto)"
    )
    ap.add_argument("--no-write", action="store_true", help="print the table, leave docs/ecosystem.md alone")
    args = ap.parse_args()
    try:
        import numcodecs_wasm_ebcc  # noqa: F401
        import numcodecs_wasm_sperr  # noqa: F401
        import numcodecs_wasm_sz3  # noqa: F401
        import numcodecs_wasm_zfp  # noqa: F401
    except ImportError:
        sys.exit('bench_pipeline: needs numcodecs-wasm-sz3, -zfp, -sperr and -ebcc: pip install -e ".[bench]"')
    import xarray as xr

    y = sources3d(n=args.n).values.numpy().reshape((args.n,) * 3).astype(np.float32)
    raw = y.nbytes
    bound = Bound("rel", args.rel, args.floor)
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        src = Path(tmp) / "in.zarr"
        xr.Dataset({"v": (("z", "y", "x"), y)}).to_zarr(
            src, encoding={"v": {"chunks": (args.chunk,) * 3}}, zarr_format=3
        )
        for w in (int(v) for v in args.workers.split(",")):
            rows[f"nir, {w} worker{'s' if w > 1 else ''}"] = nir_row(
                src, Path(tmp) / f"nir{w}.zarr", args.rel, args.floor, args.steps, w, args.network
            )
        for name in ANCHORS:
            rows[name] = anchor(name, y, args.chunk, bound)
        last = Path(tmp) / f"nir{args.workers.split(',')[-1]}.zarr"
        access = random_access(last, rows["SZ3"], y, args.chunk, bound)
    text = report(args, rows, access, raw)
    print(text)
    if not args.no_write:
        write_section(ROOT / "docs" / "ecosystem.md", "bench_pipeline", text)


if __name__ == "__main__":
    main()
