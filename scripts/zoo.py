#!/usr/bin/env python
"""The network zoo (issue 17): every network nir has, at a matched parameter count, with the
Fourier-features paper's protocol (train on every other pixel, report PSNR on the held-out
rest), on the bundled photos and on a long-tailed field. Writes docs/zoo.md.

Protocol, and where it departs from the paper (Tancik et al., NeurIPS 2020, Sec. 6/Table 1:
512x512 DIV2K photos, every other pixel, 4x256 ReLU MLP, 2,000 full-batch Adam steps):
the bundled photos (``camera``, ``chelsea``) centre-cropped and resized to ``--size`` (256:
so that a 2-core CPU runs the zoo in well under an hour), ``data.holdout=every_other`` (a quarter
of the pixels train), full batches of the training pixels, ``--steps`` steps (default 500) at
each network's own learning rate, and every network sized to the same stored bytes
(``size.bytes``: the width of MLPs, the table size of the hash grid; float32, so bytes ~ 4 x
parameters). First each network's main scale (SIREN/FINER ``w0_first``, Gauss ``scale``, WIRE
``w0``, Fourier ``sigma``) is swept on ``camera`` and the best held-out PSNR kept; then the
table runs every network at its best scale on every photo.

    .venv/bin/python scripts/zoo.py                      # ~30 min on 2 cores
    .venv/bin/python scripts/zoo.py --steps 200 --quick  # a smoke test of the script
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import nir

#: name: (overrides, the swept key, its values); lr: the paper's (ReLU/Fourier 1e-3, SIREN-style 1e-4)
NETWORKS = {
    "ReLU MLP (no mapping)": (["model=relu", "optim.lr=1e-3"], None, []),
    "positional Fourier features": (
        ["model=fourier", "model.encoding.mapping=positional", "optim.lr=1e-3"],
        "model.encoding.sigma",
        [8, 16, 32],
    ),
    "Gaussian Fourier features": (["model=fourier", "optim.lr=1e-3"], "model.encoding.sigma", [3, 6, 12]),
    "SIREN": (["model=siren", "optim.lr=1e-4"], "model.w0_first", [10, 30, 90]),
    "FINER": (["model=finer", "optim.lr=1e-4"], "model.w0_first", [10, 30, 90]),
    "Gauss": (["model=gauss", "optim.lr=1e-4"], "model.scale", [5, 10, 20]),
    "WIRE": (["model=wire", "optim.lr=1e-4"], "model.w0", [10, 20, 40]),
    "hash grid": (["model=hashgrid"], None, []),
}
#: the Fourier-features paper's held-out PSNR on DIV2K photos (Table 1, 2-D images: "Natural")
PAPER = {"ReLU MLP (no mapping)": 19.32, "positional Fourier features": 24.95, "Gaussian Fourier features": 25.57}


def photo(name: str, size: int, tmp: Path) -> Path:
    """A bundled photo, centre-cropped to a square and resized to ``size`` (torch antialiased
    bilinear), saved as an 8-bit PNG."""
    import imageio.v3 as iio
    import torch
    import torch.nn.functional as F

    s = nir.read_image(sample=name, value_range=(0, 1))
    x = s.values if s.values.ndim == 3 else s.values[..., None]
    h, w = x.shape[:2]
    k = min(h, w)
    x = x[(h - k) // 2 : (h - k) // 2 + k, (w - k) // 2 : (w - k) // 2 + k]
    x = torch.as_tensor(np.asarray(x, dtype=np.float32)).permute(2, 0, 1)[None]
    y = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0].permute(1, 2, 0)
    img = (y.clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    path = tmp / f"{name}{size}.png"
    iio.imwrite(path, img[..., 0] if img.shape[-1] == 1 else img, extension=".png")
    return path


def run(data: list[str], net: str, extra: list[str], args, tmp: Path) -> dict:
    ov, _, _ = NETWORKS[net]
    common = [
        "data.holdout=every_other",
        f"size.bytes={4 * args.params}",
        f"trainer.max_steps={args.steps}",
        f"trainer.val_check_interval={args.steps}",
        "batch_size=10000000",  # full batches of the training samples
        "log.images=false",
        "trainer.enable_progress_bar=false",
    ]
    t = time.perf_counter()
    target, *rest = data
    _, m = nir.fit(target, [*rest, *ov, *extra, *common], run_dir=tmp / f"r{time.time_ns()}")
    out = {k: m.get(k) for k in ("psnr_train", "psnr_heldout", "ssim", "num_params", "fit_time_s", "status",
                                 "heldout_worst_decade_median", "worst_decade_median")}  # fmt: skip
    out["wall_s"] = time.perf_counter() - t
    print(json.dumps({"net": net, "data": target, "extra": extra, **out}), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--params", type=int, default=30_000, help="parameters each network is sized to (via bytes)")
    ap.add_argument("--quick", action="store_true", help="camera only, no sweeps (a smoke test)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "zoo.md")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="nir_zoo_"))
    photos = {n: photo(n, args.size, tmp) for n in (["camera"] if args.quick else ["camera", "chelsea"])}
    best: dict[str, tuple[str | None, float | None]] = {}
    sweep: dict[str, list[tuple[float, dict]]] = {}
    for net, (_, key, values) in NETWORKS.items():
        if key is None or args.quick:
            best[net] = (key, None)
            continue
        sweep[net] = [(v, run([str(photos["camera"])], net, [f"{key}={v}"], args, tmp)) for v in values]
        v, _ = max(sweep[net], key=lambda p: p[1]["psnr_heldout"])
        best[net] = (key, v)
    table: dict[str, dict[str, dict]] = {}
    for net, (key, v) in best.items():
        extra = [f"{key}={v}"] if key is not None and v is not None else []
        for name, path in photos.items():
            done = next((r for val, r in sweep.get(net, []) if val == v and name == "camera"), None)
            table.setdefault(net, {})[name] = done or run([str(path)], net, extra, args, tmp)
        if not args.quick:  # a long-tailed field: peaks1d with its long-tail loss, the same holdout
            table[net]["peaks1d"] = run(["peaks1d"], net, extra, args, tmp)
    write(args, photos, best, sweep, table)


def write(args, photos, best, sweep, table) -> None:
    cmd = f"scripts/zoo.py --size {args.size} --steps {args.steps} --params {args.params}" + (
        " --quick" if args.quick else ""
    )
    lines = [
        "# The network zoo: held-out PSNR at a matched size",
        "",
        f"Generated by `.venv/bin/python {cmd}` (do not edit by hand); {time.strftime('%Y-%m-%d')}, 2-core CPU.",
        "Protocol (the Fourier-features paper's, scaled to a CPU; see the script's docstring): train on every "
        "other pixel along each axis (`data.holdout=every_other`), report PSNR on the held-out three quarters; "
        f"photos centre-cropped and resized to {args.size}x{args.size}; full batches; {args.steps} Adam steps; every "
        f"network sized to {4 * args.params:,} stored bytes (~{args.params:,} float32 parameters) by `size.bytes`.",
        "",
        "| network | scale (best on camera) | parameters | "
        + " | ".join(f"{p} held-out / train PSNR, SSIM" for p in photos)
        + (" | peaks1d held-out worst decade |" if "peaks1d" in next(iter(table.values())) else " |")
        + " time |",
        "|---|---|---|" + "---|" * len(photos) + ("---|" if "peaks1d" in next(iter(table.values())) else "") + "---|",
    ]
    for net, res in table.items():
        key, v = best[net]
        scale = "-" if key is None or v is None else f"`{key}={v}`"
        cells = [
            f"{r['psnr_heldout']:.2f} / {r['psnr_train']:.2f} dB, {r['ssim']:.3f}"
            for n, r in res.items()
            if n != "peaks1d"
        ]
        lt = res.get("peaks1d")
        ltc = [f"{100 * lt['heldout_worst_decade_median']:.1f} %"] if lt else []
        t = sum(r["fit_time_s"] or 0 for r in res.values())
        lines.append(
            f"| {net} | {scale} | {next(iter(res.values()))['num_params']:,} | "
            + " | ".join(cells + ltc)
            + f" | {t:.0f} s |"
        )
    lines += ["", "The Fourier-features ordering (held-out PSNR, camera; the paper's DIV2K numbers beside):", ""]
    lines += ["| mapping | nir (camera) | paper (DIV2K, 512x512, 2,000 steps) |", "|---|---|---|"]
    for net, paper in PAPER.items():
        lines.append(f"| {net} | {table[net]['camera']['psnr_heldout']:.2f} dB | {paper:.2f} dB |")
    order = [table[n]["camera"]["psnr_heldout"] for n in PAPER]
    lines += [
        "",
        f"Ordering none < positional < Gaussian reproduced on camera: **{'yes' if order[0] < order[1] < order[2] else 'no'}**.",
    ]
    if "chelsea" in photos:
        o2 = [table[n]["chelsea"]["psnr_heldout"] for n in PAPER]
        lines.append(
            f"On chelsea: **{'yes' if o2[0] < o2[1] < o2[2] else 'no'}** ({', '.join(f'{x:.2f}' for x in o2)} dB)."
        )
    if sweep:
        lines += ["", "Scale sweeps on camera (held-out PSNR):", "", "| network | key | " + " | ".join(["value: PSNR"] * 3) + " |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for net, pts in sweep.items():
            lines.append(
                f"| {net} | `{NETWORKS[net][1]}` | "
                + " | ".join(f"{v}: {r['psnr_heldout']:.2f} dB" for v, r in pts)
                + " |"
            )
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
