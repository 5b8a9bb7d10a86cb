#!/usr/bin/env python
"""Peak resident memory of training on a memory-mapped 3-D float32 volume (issue target 4).

Writes an n^3 float32 .npy (log-normal values, slab by slab, never whole in memory), then, in
this process, resets the kernel's peak-RSS counter (/proc/self/clear_refs) once the imports
are done, trains a small SIREN for a few steps (final full-grid evaluation included) and
reports the peak resident set above that baseline, against the array's size. Prints one JSON line.

    .venv/bin/python scripts/bench_memory.py --n 512 --cache-mb 4096   # the array fits the cache: held (page cache mapped)
    .venv/bin/python scripts/bench_memory.py --n 512 --cache-mb 256    # larger than the cache: streamed
    .venv/bin/python scripts/bench_memory.py --n 512 --cache-mb 256 --format zarr   # a chunked Zarr, read lazily
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


class AnonPeak:
    """Peak anonymous resident memory (RssAnon: the process's own allocations, not the page cache
    of the mapped array, which the kernel reclaims at will), sampled every millisecond in a thread."""

    def __init__(self) -> None:
        import threading

        self.peak_kb, self._stop = status_kb("RssAnon"), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.001):
            self.peak_kb = max(self.peak_kb, status_kb("RssAnon"))

    def __enter__(self) -> AnonPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kb = max(self.peak_kb, status_kb("RssAnon"))


def write_volume(path: Path, n: int, seed: int = 0) -> None:
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, n, n))
    rng = np.random.default_rng(seed)
    for i in range(n):
        out[i] = rng.lognormal(-4.0, 2.0, size=(n, n)).astype(np.float32)
    out.flush()
    del out


def write_zarr(path: Path, n: int, seed: int = 0) -> None:
    """The same volume as a Zarr store chunked in slabs of 16 planes (written plane by plane)."""
    import zarr

    rng = np.random.default_rng(seed)
    group = zarr.open_group(path, mode="w")
    arr = group.create_array("rho", shape=(n, n, n), chunks=(16, n, n), dtype="f4", dimension_names=["z", "y", "x"])
    for i in range(n):
        arr[i] = rng.lognormal(-4.0, 2.0, size=(n, n)).astype(np.float32)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--cache-mb", type=float, default=4096)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--hidden", type=int, default=16)
    ap.add_argument("--loss", default="log_mse")
    ap.add_argument("--dir", type=Path, default=None, help="where the volume is written (default: a temp dir)")
    ap.add_argument(
        "--format", choices=["npy", "zarr"], default="npy", help="zarr: read lazily through xarray (docs/data.md)"
    )
    args = ap.parse_args(argv)
    import pytorch_lightning  # noqa: F401  (imported before the baseline)

    from nir.run.config import compose_config
    from nir.run.run import train_field

    work = args.dir or Path(tempfile.mkdtemp(prefix="nir_mem_"))
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"volume{args.n}.{args.format}"
    if args.format == "zarr":
        import xarray  # noqa: F401  (imported before the baseline, as Lightning)

        write_zarr(path, args.n)
        size_mb = 4 * args.n**3 / 2**20  # float32 values (the store itself is compressed)
    else:
        write_volume(path, args.n)
        size_mb = path.stat().st_size / 2**20
    ov = [
        "data=array",
        "model=siren",
        f"data.path={path}",
        f"loss={args.loss}",
        "sampling=uniform",  # as measured before sampling=auto (docs/performance.md)
        f"cache_mb={args.cache_mb}",
        f"model.hidden_dim={args.hidden}",
        "model.num_layers=1",
        f"trainer.max_steps={args.steps}",
        f"trainer.val_check_interval={10 * args.steps}",
        "trainer.enable_progress_bar=false",
        "log.images=false",
        "trainer.precision=32",
        "check_finite_every=0",
    ]
    cfg = compose_config(ov)[0]
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # the volume's writing leaves freed heap: not the baseline's
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    base, anon_base = status_kb("VmRSS") / 1024, status_kb("RssAnon") / 1024
    t = time.perf_counter()
    with AnonPeak() as anon:
        _, m = train_field(cfg, work / "run")
    peak = status_kb("VmHWM") / 1024
    res = {
        "n": args.n,
        "format": args.format,
        "array_mb": round(size_mb, 1),
        "cache_mb": args.cache_mb,
        "loss": args.loss,
        "baseline_rss_mb": round(base, 1),
        "peak_rss_mb": round(peak, 1),
        "peak_above_baseline_mb": round(peak - base, 1),
        "anon_baseline_mb": round(anon_base, 1),
        "anon_peak_above_baseline_mb": round(anon.peak_kb / 1024 - anon_base, 1),
        "steps": m["steps"],
        "psnr": round(m["psnr"], 2),
        "seconds": round(time.perf_counter() - t, 1),
    }
    print(json.dumps(res), flush=True)
    if path.is_dir():
        import shutil

        shutil.rmtree(path)
    else:
        path.unlink()
    return res


if __name__ == "__main__":
    main()
