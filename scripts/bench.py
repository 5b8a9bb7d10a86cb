#!/usr/bin/env python
"""Training-loop benchmark on the SIREN paper's image demo; writes docs/performance.md.

Workload: cameraman at 256x256 (scikit-image's bundled photo, resized), SIREN 3x256, Adam 1e-4,
full batch of 65,536 pixels. Timings are compared as ratios measured in the same process,
alternately, because these machines are shared and noisy; each figure is min/median/max over
repeats.

    .venv/bin/python scripts/bench.py                 # ~10 min on 2 cores
    .venv/bin/python scripts/bench.py --quick         # smaller repeats, for a smoke test
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nir.fields import Siren  # noqa: E402
from nir.signal import Grid, Signal, read_image  # noqa: E402
from nir.train import tune_allocator  # noqa: E402

logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)


def cameraman256() -> Signal:
    """The SIREN notebook's target: cameraman resized to 256x256, gray, values in [-1, 1],
    saved as an 8-bit PNG so that the plain loop and nir read exactly the same pixels."""
    import imageio.v3 as iio
    from skimage.transform import resize

    s = read_image(sample="camera", value_range=(0, 1))
    img = resize(s.values[..., 0].numpy(), (256, 256), anti_aliasing=True)
    path = Path(tempfile.gettempdir()) / "nir_cameraman256.png"
    iio.imwrite(path, (np.clip(img, 0, 1) * 255).round().astype(np.uint8), extension=".png")
    return read_image(str(path), value_range=(-1, 1))


def siren_flops_per_point(d_in=2, width=256, hidden=3, d_out=1) -> float:
    """Multiply-adds x 2 of the linear layers, forward; a training step is ~3x (forward, grad
    w.r.t. weights, grad w.r.t. inputs; the first layer needs no input gradient: ~3x - 1 layer)."""
    fwd = 2 * (d_in * width + hidden * width * width + width * d_out)
    return 3 * fwd - 2 * d_in * width


def matmul_ceiling(dtype: torch.dtype, n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        ts.append(time.perf_counter() - t)
    return 2 * n**3 / min(ts) / 1e9


def psnr(pred: torch.Tensor, target: torch.Tensor, rng: float) -> float:
    mse = float(((pred.float() - target.float()) ** 2).mean())
    return 10 * math.log10(rng**2 / mse)


class PlainLoop:
    """The reference: a minimal PyTorch loop (coordinates precomputed, full batch)."""

    def __init__(self, signal: Signal, lr: float, precision: str = "32", seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.net = Siren(2, 1, 256, 3)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=lr)
        n = signal.numel
        self.x = Grid(signal.shape, signal.bounds).coords(torch.arange(n))
        self.y = signal.flat()
        self.bf16 = precision == "bf16-mixed"

    def step(self) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            p = self.net(self.x)
        loss = ((p.float() - self.y) ** 2).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def psnr(self) -> float:
        with torch.no_grad():
            return psnr(self.net(self.x), self.y, 2.0)  # values in [-1, 1]


def nir_run(signal_path: str, overrides: list[str], steps: int, run_dir: Path, cb=()) -> dict:
    from tests.conftest import make_cfg
    from nir.train import train_field

    ov = [f"data.path={signal_path}", f"trainer.max_steps={steps}",
          "trainer.enable_progress_bar=false", "log.images=false", "check_finite_every=0", *overrides]
    _, m = train_field(make_cfg(ov), run_dir, callbacks=list(cb))
    return m


def step_timer():
    import pytorch_lightning as pl

    class StepTimer(pl.Callback):
        """Wall time between consecutive training-batch starts: the whole loop per step."""

        def __init__(self) -> None:
            self.starts: list[float] = []

        def on_train_batch_start(self, *a, **k) -> None:
            self.starts.append(time.perf_counter())

        def step_times(self, skip: int = 3) -> list[float]:
            return list(np.diff(self.starts))[skip:]

    return StepTimer()


def psnr_curve(every: int):
    import pytorch_lightning as pl

    class Curve(pl.Callback):
        """Time (training only) at which PSNR (fp32, whole image, R = 2 on [-1, 1]) first reaches 30 / 40 dB."""

        def __init__(self) -> None:
            self.t, self.points, self.paused = 0.0, [], 0.0

        def on_train_start(self, trainer, module) -> None:
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, module, *a) -> None:
            if trainer.global_step % every:
                return
            p0 = time.perf_counter()
            m = module.evaluate()
            self.points.append((p0 - self.t0 - self.paused, trainer.global_step, m["psnr"]))
            self.paused += time.perf_counter() - p0

    return Curve()


def fmt3(xs: list[float], scale: float = 1.0, nd: int = 3) -> str:
    xs = sorted(x * scale for x in xs)
    return f"{xs[0]:.{nd}f} / {statistics.median(xs):.{nd}f} / {xs[-1]:.{nd}f}"


def first_reach(points, level):
    for t, s, p in points:
        if p >= level:
            return t, s
    return None, None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "performance.md")
    args = ap.parse_args()
    tune_allocator()
    q = args.quick
    sig = cameraman256()
    path = sig.meta["path"]
    tmp = Path(tempfile.mkdtemp(prefix="nir_bench_"))
    lines: list[str] = []
    out = lines.append
    flops = siren_flops_per_point() * sig.numel
    ceil32, ceil16 = matmul_ceiling(torch.float32), matmul_ceiling(torch.bfloat16)

    # 1. framework overhead: alternate plain and nir, same model / data / batch / optimizer
    reps, steps = (2, 8) if q else (3, 25)
    plain_t, nir_t = [], []
    ref_overrides = ["model.hidden_dim=256", "model.num_layers=3", "optim.lr=1e-4", "optim.schedule=constant",
                     "batch_size=65536", "trainer.precision=32", "trainer.val_check_interval=100000"]
    for r in range(reps):
        loop = PlainLoop(sig, 1e-4)
        for _ in range(3):
            loop.step()
        for _ in range(steps):
            t = time.perf_counter()
            loop.step()
            plain_t.append(time.perf_counter() - t)
        timer = step_timer()
        nir_run(path, ref_overrides, steps + 4, tmp / f"ovh{r}", [timer])
        nir_t += timer.step_times()
    ratio = statistics.median(nir_t) / statistics.median(plain_t)

    # 2. efficiency and 3. precision: throughput and PSNR after the same steps
    prec_steps = 30 if q else 300
    res = {}
    for prec in ["32", "bf16-mixed"]:
        loop = PlainLoop(sig, 1e-4, prec)
        ts = []
        for _ in range(prec_steps):
            t = time.perf_counter()
            loop.step()
            ts.append(time.perf_counter() - t)
        res[prec] = (ts[3:], loop.psnr())
    t32, tbf = statistics.median(res["32"][0]), statistics.median(res["bf16-mixed"][0])

    # 5. time to quality: the SIREN notebook setup vs nir's default image setup
    budget_ref, budget_nir = (20, 20) if q else (150, 150)
    ref = PlainLoop(sig, 1e-4)
    ref_points, t_train, step = [], 0.0, 0
    while t_train < budget_ref:
        t = time.perf_counter()
        ref.step()
        t_train += time.perf_counter() - t
        step += 1
        if step % 10 == 0:
            ref_points.append((t_train, step, ref.psnr()))
            if ref_points[-1][2] >= 40:
                break
    curve = psnr_curve(10)
    nir_steps = 150 if q else 1000
    nir_run(path, ["trainer.val_check_interval=100000", f"trainer.max_steps={nir_steps}"], nir_steps, tmp / "ttq", [curve])
    r30, r40 = first_reach(ref_points, 30), first_reach(ref_points, 40)
    n30, n40 = first_reach(curve.points, 30), first_reach(curve.points, 40)

    # report
    out("# Performance")
    out("")
    out("Generated by `scripts/bench.py` (do not edit by hand):")
    out("")
    out("    .venv/bin/python scripts/bench.py" + (" --quick" if q else ""))
    out("")
    out(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} (CPU), "
        f"threads {torch.get_num_threads()}; glibc malloc tuned by nir (see troubleshooting.md); {time.strftime('%Y-%m-%d')}.")
    out("Workload: cameraman 256x256, SIREN 3x256 (198,657 parameters), Adam 1e-4, full batch of 65,536 pixels.")
    out("Figures are min / median / max over the repeats of one run.")
    out("")
    out("| target | measured | verdict |")
    out("|---|---|---|")
    out(f"| 1. framework overhead: nir step / plain PyTorch step <= 1.05 | {ratio:.3f} (nir {fmt3(nir_t)} s, plain {fmt3(plain_t)} s; {reps} alternations of {steps} steps) | {'met' if ratio <= 1.05 else 'missed'} |")
    eff = flops / t32 / 1e9 / ceil32
    out(f"| 2. fp32 step GFLOP/s over fp32 matmul ceiling >= 60 % | {flops / t32 / 1e9:.0f} GFLOP/s of {ceil32:.0f} (2048^3 matmul): {100 * eff:.0f} % ({flops / 1e9:.1f} GFLOP per step) | {'met' if eff >= 0.6 else 'missed'} |")
    speed = t32 / tbf
    dpsnr = res["bf16-mixed"][1] - res["32"][1]
    out(f"| 3. bf16-mixed >= 2x fp32 throughput, PSNR within 0.5 dB after {prec_steps} steps | {speed:.2f}x (fp32 {fmt3(res['32'][0])} s, bf16 {fmt3(res['bf16-mixed'][0])} s); PSNR {res['32'][1]:.2f} vs {res['bf16-mixed'][1]:.2f} dB ({dpsnr:+.2f}); bf16 matmul ceiling {ceil16:.0f} GFLOP/s | {'met' if speed >= 2 and abs(dpsnr) <= 0.5 else 'missed' if speed < 2 else 'accuracy missed'} |")
    def tt(r):
        return "not reached" if r[0] is None else f"{r[0]:.1f} s (step {r[1]})"
    verdict5 = "met" if (r30[0] and n30[0] and n30[0] <= r30[0] / 4) else "missed"
    out(f"| 5. time to 30 dB <= 1/4 of the SIREN notebook setup | nir default: 30 dB {tt(n30)}, 40 dB {tt(n40)}; notebook setup (full batch, Adam 1e-4, fp32): 30 dB {tt(r30)}, 40 dB {tt(r40)} (budget {budget_ref} s) | {verdict5} |")
    out("")
    out("nir's default image setup for target 5 is the CPU preset: random batches of 16,384 pixels, Adam 1e-3, "
        f"cosine schedule over {nir_steps} steps, precision auto (bf16-mixed here), SIREN's first layer and sines in fp32. "
        "Times count training only (the PSNR evaluations are paused out).")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
