#!/usr/bin/env python
"""Grid encodings against SIREN and the Fourier presets; writes docs/grid-encodings.md.

Three measurements, all in this one process on this machine (issue 12):

1. Image, time to quality: the default SIREN run (800 steps on the bundled photo) and hash
   grids (the tiny-cuda-nn-like default, and one with no more parameters than that SIREN);
   the training time (evaluation pauses excluded) at which each first reaches the SIREN run's
   final PSNR.
2. Step time at batch 16,384 through nir (median over steps), with and without torch.compile.
3. 3-D long tail at equal steps: fourier_lt3d against hashgrid_lt3d (no more parameters), with
   uniform and decade-balanced batches, per-decade median relative error.

    .venv/bin/python scripts/bench_grid.py            # ~15 min on 2 cores
    .venv/bin/python scripts/bench_grid.py --quick    # a smoke test (few steps)
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nir.allocator import tune_allocator
from nir.data.readers import sample_image_path
from nir.interop import benchmark as bench
from nir.run.config import compose_config
from nir.run.run import train_field

logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
QUIET = ["trainer.enable_progress_bar=false", "log.images=false", "check_finite_every=0"]
IMAGE = {
    "SIREN 3x256 (default)": ["model=siren"],
    "hash grid, tcnn-like (16 x 2, 16..512, 2^16)": ["model=hashgrid"],
    "hash grid <= SIREN's parameters (2^13)": ["model=hashgrid", "model.encoding.log2_hashmap_size=13"],
    "dense grid (8 x 2, 16..256)": ["model=densegrid"],
}


def run(overrides: list[str], tmp: Path, callbacks=()) -> tuple[dict, object]:
    d = Path(tempfile.mkdtemp(dir=tmp))
    field, m = train_field(compose_config([*QUIET, *overrides])[0], d, callbacks=list(callbacks))
    return m, field


def image_rows(tmp: Path, quick: bool) -> tuple[list[str], dict[str, float]]:
    photo = f"data.path={sample_image_path('chelsea')}"
    siren_steps = 40 if quick else 800
    curve = bench.psnr_curve(every=siren_steps // 8)
    m, _ = run(
        [photo, "model=siren", f"trainer.max_steps={siren_steps}", f"trainer.val_check_interval={siren_steps}"],
        tmp,
        [curve],
    )
    target, t_siren = m["psnr"], curve.points[-1][0]
    rows = [
        f"| SIREN 3x256 (default) | {m['num_params']:,} | {siren_steps} | {m['psnr']:.2f} | {t_siren:.1f} | {t_siren:.1f} | 1 |"
    ]
    times = {}
    for name, ov in list(IMAGE.items())[1:]:
        steps = 40 if quick else 400
        curve = bench.psnr_curve(every=10)
        m, _ = run([photo, *ov, f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}"], tmp, [curve])
        t, s = bench.first_reach(curve.points, target)
        reach = f"{t:.1f} (step {s})" if t is not None else "not reached"
        ratio = f"{t / t_siren:.3f}" if t is not None else "-"
        rows.append(
            f"| {name} | {m['num_params']:,} | {steps} | {m['psnr']:.2f} | {curve.points[-1][0]:.1f} | {reach} | {ratio} |"
        )
        times[name] = t if t is not None else float("nan")
    head = [
        f"Target: the SIREN run's final PSNR, **{target:.2f} dB** (fp32, all pixels, R = 2). Training time excludes",
        "the PSNR evaluations (bench.psnr_curve). Grids: Adam 1e-2, tables with eps 1e-15 and betas (0.9, 0.99)",
        "(the presets' settings), batches of 16,384, precision auto (bf16-mixed here).",
        "",
        "| network | parameters | steps | final PSNR (dB) | training time (s) | time to target (s) | / SIREN |",
        "|---|---|---|---|---|---|---|",
    ]
    return head + rows, times


def step_rows(tmp: Path, quick: bool) -> list[str]:
    photo = f"data.path={sample_image_path('chelsea')}"
    steps = 12 if quick else 40
    rows = ["| network | compile | ms per step (min / median / max) |", "|---|---|---|"]
    for name, ov in IMAGE.items():
        for compile_ in (False, True):
            if compile_ and name.startswith("SIREN"):
                continue  # SIREN's compile figures are in docs/performance.md
            timer = bench.step_timer("cpu")
            run(
                [
                    photo,
                    *ov,
                    f"trainer.max_steps={steps}",
                    f"trainer.val_check_interval={steps}",
                    f"compile={str(compile_).lower()}",
                ],
                tmp,
                [timer],
            )
            ts = timer.step_times(skip=5)
            rows.append(f"| {name} | {compile_} | {bench.fmt3(ts, 1000, 1)} |")
    return rows


def longtail_rows(tmp: Path, quick: bool) -> list[str]:
    steps = 60 if quick else 2000
    setups = {
        "fourier_lt3d, uniform": ["model=fourier_lt3d", "sampling=uniform"],
        "hashgrid_lt3d, uniform": ["model=hashgrid_lt3d", "optim.lr=1e-2", "sampling=uniform"],
        "hashgrid_lt3d, decades": ["model=hashgrid_lt3d", "optim.lr=1e-2", "sampling=decades"],
    }
    out = []
    for data in ("lognormal3d", "sources3d"):
        table = []
        for name, ov in setups.items():
            m, _ = run([f"data={data}", *ov, f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}"], tmp)
            bins = [r for r in m["magnitude_bins"] if r["count"] > 0]
            table.append((name, m, bins))
        labels = [r["bin"] for r in table[0][2]]
        out += [f"### {data} ({steps} steps, batches of 16,384, log_mse, median relative error per decade)", ""]
        out += ["| setup | parameters | bytes (fp32) | " + " | ".join(labels) + " | worst | time (s) |"]
        out += ["|---|---|---|" + "---|" * len(labels) + "---|---|"]
        for name, m, bins in table:
            cells = " | ".join(f"{100 * r['median']:.2f} %" for r in bins)
            out.append(
                f"| {name} | {m['num_params']:,} | {4 * m['num_params']:,} | {cells} | {100 * m['worst_decade_median']:.2f} % | {m['fit_time_s']:.0f} |"
            )
        out.append("")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "grid-encodings.md")
    args = ap.parse_args()
    tune_allocator()
    tmp = Path(tempfile.mkdtemp(prefix="nir_bench_grid_"))
    t0 = time.time()
    image, _ = image_rows(tmp, args.quick)
    steps = step_rows(tmp, args.quick)
    lt = longtail_rows(tmp, args.quick)
    lines = [
        "# Grid encodings: measured",
        "",
        "Generated by `scripts/bench_grid.py` (do not edit by hand):",
        "",
        "    .venv/bin/python scripts/bench_grid.py",
        "",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
        f"{time.strftime('%Y-%m-%d')}; {(time.time() - t0) / 60:.0f} min for the whole script.",
        "",
        "## Image: time to the SIREN default's quality (bundled photo, 451x300 RGB)",
        "",
        *image,
        "",
        "## Step time at batch 16,384 (nir's training loop, bundled photo)",
        "",
        *steps,
        "",
        "## 3-D long tail at equal steps",
        "",
        *lt,
    ]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
