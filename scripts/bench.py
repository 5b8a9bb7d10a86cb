#!/usr/bin/env python
"""Training-loop benchmark on the SIREN paper's image demo; writes docs/performance.md.

Workload: cameraman at 256x256 (nir's bundled photo, resized), SIREN 3x256, Adam 1e-4,
full batch of 65,536 pixels. Timings are compared as ratios measured in the same process,
alternately, because these machines are shared and noisy; each figure is min/median/max over
repeats.

    .venv/bin/python scripts/bench.py                 # ~10 min on 2 cores
    .venv/bin/python scripts/bench.py --quick         # smaller repeats, for a smoke test
    python scripts/bench.py --device cuda              # on a GPU: writes docs/performance-gpu.md
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

from nir.allocator import tune_allocator
from nir.fields import Siren
from nir.signal import Grid, Signal, read_image

logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)


def cameraman256() -> Signal:
    """The SIREN notebook's target: cameraman resized to 256x256, gray, values in [-1, 1],
    saved as an 8-bit PNG so that the plain loop and nir read exactly the same pixels.
    Resized by torch's antialiased bilinear interpolation (scikit-image's ``resize`` until
    nir stopped depending on scikit-image; the two differ by a fraction of a grey level)."""
    import imageio.v3 as iio
    import torch.nn.functional as F

    s = read_image(sample="camera", value_range=(0, 1))
    x = s.values[..., 0][None, None]
    img = F.interpolate(x, size=(256, 256), mode="bilinear", antialias=True, align_corners=False)[0, 0].numpy()
    path = Path(tempfile.gettempdir()) / "nir_cameraman256.png"
    iio.imwrite(path, (np.clip(img, 0, 1) * 255).round().astype(np.uint8), extension=".png")
    return read_image(str(path), value_range=(-1, 1))


def siren_flops_per_point(d_in=2, width=256, hidden=3, d_out=1) -> float:
    """Multiply-adds x 2 of the linear layers, forward; a training step is ~3x (forward, grad
    w.r.t. weights, grad w.r.t. inputs; the first layer needs no input gradient: ~3x - 1 layer)."""
    fwd = 2 * (d_in * width + hidden * width * width + width * d_out)
    return 3 * fwd - 2 * d_in * width


def block(device: str) -> int:
    """Steps between timing points: 1 on the CPU (each step is synchronous), 10 on a GPU."""
    return 10 if device == "cuda" else 1


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def matmul_ceiling(dtype: torch.dtype, device: str = "cpu", reps: int = 10) -> float:
    """GFLOP/s of a large square matmul in ``dtype`` (2048^3 on CPU, 8192^3 on GPU): best of ``reps``."""
    n = 8192 if device == "cuda" else 2048
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(3):
        a @ b
    ts = []
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        ts.append(time.perf_counter() - t)
    return 2 * n**3 / min(ts) / 1e9


def psnr(pred: torch.Tensor, target: torch.Tensor, rng: float) -> float:
    mse = float(((pred.float() - target.float()) ** 2).mean())
    return 10 * math.log10(rng**2 / mse)


AUTOCAST = {"32": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


class PlainLoop:
    """The reference: a minimal PyTorch loop (coordinates precomputed, full batch). ``16-mixed``
    uses a gradient scaler, as Lightning does; ``compile`` wraps the network in torch.compile."""

    def __init__(
        self,
        signal: Signal,
        lr: float,
        precision: str = "32",
        seed: int = 0,
        device: str = "cpu",
        compile: bool = False,
        batch: int | None = None,
    ) -> None:
        torch.manual_seed(seed)
        self.device = device
        self.net = Siren(2, 1, 256, 3).to(device)
        self.fwd = torch.compile(self.net, dynamic=False) if compile else self.net
        self.opt = torch.optim.Adam(self.net.parameters(), lr=lr)
        n = signal.numel
        self.x = Grid(signal.shape, signal.bounds).coords(torch.arange(n)).to(device)
        self.y = signal.flat().to(device)
        self.batch = None
        if batch is not None and batch < n:  # minibatches: random pixels each step, as a training loop draws them
            self.batch = batch
        elif batch is not None and batch > n:  # random coordinates and targets of a larger batch (throughput only)
            self.x = torch.rand(batch, 2, device=device) * 2 - 1
            self.y = torch.rand(batch, 1, device=device)
        self.dtype = AUTOCAST[precision]
        self.scaler = torch.amp.GradScaler(device) if precision == "16-mixed" else None

    def step(self) -> None:
        x, y = self.x, self.y
        if self.batch is not None:
            idx = torch.randint(0, x.shape[0], (self.batch,), device=x.device)
            x, y = x[idx], y[idx]
        with torch.autocast(self.device, dtype=self.dtype or torch.bfloat16, enabled=self.dtype is not None):
            p = self.fwd(x)
        loss = ((p.float() - y) ** 2).mean()
        self.opt.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            self.opt.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()

    def timed(self, steps: int, warmup: int = 3) -> list[float]:
        """Per-step times. On a GPU, the mean of each block of BLOCK steps between two
        synchronisations: a training loop never waits for the GPU at every step, so the host's
        work overlaps the kernels as it would in real use."""
        for _ in range(warmup):
            self.step()
        k = block(self.device)
        ts = []
        for _ in range(max(1, steps // k)):
            sync(self.device)
            t = time.perf_counter()
            for _ in range(k):
                self.step()
            sync(self.device)
            ts.append((time.perf_counter() - t) / k)
        return ts

    def psnr(self) -> float:
        with torch.no_grad():
            return psnr(self.net(self.x), self.y, 2.0)  # values in [-1, 1]


def graphed_step_time(signal: Signal, precision: str, steps: int = 200, batch: int | None = None) -> float:
    """GPU only: the plain loop's whole step (forward, backward, Adam) captured once in a CUDA
    graph and replayed, i.e. the step without the host. Seconds per step. ``batch``: random
    coordinates of that many samples instead of the full grid (throughput only)."""
    torch.manual_seed(0)
    dev = "cuda"
    net = Siren(2, 1, 256, 3).to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, capturable=True)
    x = Grid(signal.shape, signal.bounds).coords(torch.arange(signal.numel)).to(dev)
    y = signal.flat().to(dev)
    if batch is not None and batch < signal.numel:
        x, y = torch.rand(batch, 2, device=dev) * 2 - 1, torch.rand(batch, 1, device=dev)
    dtype = AUTOCAST[precision]

    def step() -> None:
        with torch.autocast(dev, dtype=dtype or torch.bfloat16, enabled=dtype is not None, cache_enabled=False):
            p = net(x)
        ((p.float() - y) ** 2).mean().backward()
        opt.step()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up on a side stream, as graph capture requires
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)  # backward in the capture then writes fresh gradients on each replay
    with torch.cuda.graph(graph):
        step()
    for _ in range(5):
        graph.replay()
    sync(dev)
    t = time.perf_counter()
    for _ in range(steps):
        graph.replay()
    sync(dev)
    return (time.perf_counter() - t) / steps


DEVICE_OVERRIDES: list[str] = []  # ["trainer=gpu"] with --device cuda


def nir_run(signal_path: str, overrides: list[str], steps: int, run_dir: Path, cb=()) -> dict:
    from nir.run import train_field
    from tests.conftest import make_cfg

    ov = [
        *DEVICE_OVERRIDES,
        f"data.path={signal_path}",
        f"trainer.max_steps={steps}",
        "trainer.enable_progress_bar=false",
        "log.images=false",
        "check_finite_every=0",
        *overrides,
    ]
    _, m = train_field(make_cfg(ov), run_dir, callbacks=list(cb))
    return m


def step_timer(device: str = "cpu"):
    import pytorch_lightning as pl

    class StepTimer(pl.Callback):
        """Wall time per optimizer step, as the plain loop's timer: on the CPU per training call,
        on a GPU between synchronisations every ``block`` calls (a loop never waits for the GPU
        at every step). A call runs ``steps_per_call`` optimizer steps, so each interval is
        divided by the optimizer steps it holds."""

        def __init__(self) -> None:
            self.points: list[tuple[float, int]] = []
            self.k = block(device)
            self.n = 0

        def on_train_batch_start(self, trainer, *a, **k) -> None:
            if self.n % self.k == 0:
                sync(device)
                self.points.append((time.perf_counter(), trainer.global_step))
            self.n += 1

        def on_train_end(self, trainer, *a) -> None:
            sync(device)
            self.points.append((time.perf_counter(), trainer.global_step))

        def step_times(self, skip: int = 3) -> list[float]:
            """Seconds per optimizer step of each interval after the first ``skip`` steps."""
            p = [(t, s) for t, s in self.points if s >= skip]
            return [(t1 - t0) / (s1 - s0) for (t0, s0), (t1, s1) in zip(p, p[1:]) if s1 > s0]

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
            # a call may run several optimizer steps: evaluate when the count crosses a multiple
            if trainer.global_step // every <= getattr(self, "done", 0):
                return
            self.done = trainer.global_step // every
            p0 = time.perf_counter()
            m = module.evaluate()
            self.points.append((p0 - self.t0 - self.paused, trainer.global_step, m["psnr"]))
            self.paused += time.perf_counter() - p0

    return Curve()


def write_section(path: Path, name: str, text: str) -> None:
    """Replace the section that script ``name`` generates in ``path`` (between its
    ``<!-- name: begin -->`` / ``end`` markers), or append it; the rest of the file is kept."""
    begin, end = f"<!-- {name}: begin -->", f"<!-- {name}: end -->"
    block = f"{begin}\n{text.rstrip()}\n{end}\n"
    old = path.read_text() if path.is_file() else ""
    if begin in old and end in old:
        new = old[: old.index(begin)] + block + old[old.index(end) + len(end) + 1 :]
    else:
        new = (old.rstrip() + "\n\n" if old else "") + block
    path.write_text(new)


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
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="report path (default docs/performance.md, or docs/performance-gpu.md with --device cuda)",
    )
    args = ap.parse_args()
    dev = args.device
    gpu = dev == "cuda"
    out_path = args.out or ROOT / "docs" / ("performance-gpu.md" if gpu else "performance.md")
    if gpu:
        DEVICE_OVERRIDES.append("trainer=gpu")
    tune_allocator()
    q = args.quick
    sig = cameraman256()
    path = sig.meta["path"]
    tmp = Path(tempfile.mkdtemp(prefix="nir_bench_"))
    lines: list[str] = []
    out = lines.append
    flops = siren_flops_per_point() * sig.numel
    ceil = {"32": matmul_ceiling(torch.float32, dev), "bf16-mixed": matmul_ceiling(torch.bfloat16, dev)}
    precisions = ["32", "bf16-mixed"]
    if gpu:
        ceil["16-mixed"] = matmul_ceiling(torch.float16, dev)
        precisions.append("16-mixed")

    print("bench: 1. framework", time.strftime("%T"), flush=True)
    # 1. framework overhead: alternate plain and nir, same model / data / batch / optimizer
    reps, steps = (2, 8) if q else ((3, 100) if gpu else (3, 25))
    plain_t, nir_t = [], []
    ref_overrides = [
        "model.hidden_dim=256",
        "model.num_layers=3",
        "optim.lr=1e-4",
        "optim.schedule=constant",
        "batch_size=65536",
        "trainer.precision=32",
        "trainer.val_check_interval=100000",
    ]
    for r in range(reps):
        plain_t += PlainLoop(sig, 1e-4, device=dev).timed(steps)
        timer = step_timer(dev)
        nir_run(path, ref_overrides, steps + 4, tmp / f"ovh{r}", [timer])
        nir_t += timer.step_times()
    ratio = statistics.median(nir_t) / statistics.median(plain_t)

    print("bench: 2. efficiency", time.strftime("%T"), flush=True)
    # 2. efficiency, 3. precision and 6. compile: throughput, and PSNR after the same steps (eager)
    prec_steps = 30 if q else (1000 if gpu else 300)
    comp_steps = 10 if q else (200 if gpu else 25)
    res, comp = {}, {}
    for prec in precisions:
        loop = PlainLoop(sig, 1e-4, prec, device=dev)
        ts = loop.timed(prec_steps, warmup=0)
        res[prec] = (ts[3:], loop.psnr())
        t0 = time.perf_counter()
        c = PlainLoop(sig, 1e-4, prec, device=dev, compile=True)
        c.step()
        compile_s = time.perf_counter() - t0
        comp[prec] = (c.timed(comp_steps), compile_s)
    med = {p: statistics.median(res[p][0]) for p in precisions}
    cmed = {p: statistics.median(comp[p][0]) for p in precisions}

    print("bench: 6. torch.compile ins", time.strftime("%T"), flush=True)
    # 6. torch.compile inside nir: compile=true against the same run eager, default precision
    nir_comp = {}
    n6 = 12 if q else (200 if gpu else 30)
    for flag in ["false", "true"]:
        timer = step_timer(dev)
        t0 = time.perf_counter()
        nir_run(path, ["trainer.val_check_interval=100000", f"compile={flag}"], n6 + 4, tmp / f"c{flag}", [timer])
        nir_comp[flag] = (timer.step_times(), time.perf_counter() - t0)

    print("bench: GPU only", time.strftime("%T"), flush=True)
    # GPU only: throughput against batch size (random coordinates), bf16-mixed eager
    scaling = []
    if gpu:
        for b in [16384, 65536, 262144, 1048576, 4194304]:
            ts = PlainLoop(sig, 1e-4, "bf16-mixed", device=dev, batch=b).timed(10 if q else 50)
            scaling.append((b, statistics.median(ts)))

    print("bench: 5. time to quality", time.strftime("%T"), flush=True)
    graphed = {}
    if gpu:
        for prec in ["32", "bf16-mixed"]:
            try:
                graphed[prec] = f"{graphed_step_time(sig, prec) * 1e3:.2f} ms"
            except Exception as e:
                graphed[prec] = f"failed ({type(e).__name__}: {str(e)[:80]})"

    # 5. time to quality: the SIREN notebook setup vs nir's default image setup
    budget_ref = 20 if q else (30 if gpu else 150)
    ref = PlainLoop(sig, 1e-4, device=dev)
    ref_points, t_train, step = [], 0.0, 0
    while t_train < budget_ref:
        sync(dev)
        t = time.perf_counter()
        ref.step()
        sync(dev)
        t_train += time.perf_counter() - t
        step += 1
        if step % 10 == 0:
            ref_points.append((t_train, step, ref.psnr()))
            if ref_points[-1][2] >= 40:
                break
    curve = psnr_curve(10)
    nir_steps = 150 if q else (2000 if gpu else 1000)
    nir_run(
        path, ["trainer.val_check_interval=100000", f"trainer.max_steps={nir_steps}"], nir_steps, tmp / "ttq", [curve]
    )
    r30, r40 = first_reach(ref_points, 30), first_reach(ref_points, 40)
    n30, n40 = first_reach(curve.points, 30), first_reach(curve.points, 40)

    print("bench: report", time.strftime("%T"), flush=True)
    # report
    if gpu:
        p = torch.cuda.get_device_properties(0)
        machine = (
            f"{p.name} ({p.multi_processor_count} SMs, {p.total_memory / 2**30:.0f} GiB), torch {torch.__version__}"
        )
    else:
        machine = (
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} (CPU), "
            f"threads {torch.get_num_threads()}; glibc malloc tuned by nir (see troubleshooting.md)"
        )
    sps = lambda t, n=sig.numel: f"{n / t / 1e6:.2f} M samples/s"  # noqa: E731
    out("# Performance" + (" on a GPU" if gpu else ""))
    out("")
    out("Generated by `scripts/bench.py` (do not edit by hand):")
    out("")
    out("    .venv/bin/python scripts/bench.py" + (" --device cuda" if gpu else "") + (" --quick" if q else ""))
    out("")
    out(f"Machine: {machine}; {time.strftime('%Y-%m-%d')}.")
    out(
        "Workload: cameraman 256x256, SIREN 3x256 (198,657 parameters), Adam 1e-4, full batch of 65,536 pixels "
        f"({flops / 1e9:.1f} GFLOP per training step)."
    )
    out(
        "Figures are min / median / max over the repeats of one run; ceilings are the best large square matmul "
        f"({'8192' if gpu else '2048'}^3) in the same precision."
    )
    out("")
    out("| target | measured | verdict |")
    out("|---|---|---|")
    out(
        f"| 1. framework overhead: nir step / plain PyTorch step <= 1.05 | {ratio:.3f} (nir {fmt3(nir_t)} s, plain {fmt3(plain_t)} s; {reps} alternations of {steps} steps) | {'met' if ratio <= 1.05 else 'missed'} |"
    )
    eff = flops / med["32"] / 1e9 / ceil["32"]
    out(
        f"| 2. fp32 step GFLOP/s over fp32 matmul ceiling >= 60 % | {flops / med['32'] / 1e9:.0f} GFLOP/s of {ceil['32']:.0f}: {100 * eff:.0f} % eager; "
        f"{100 * flops / cmed['32'] / 1e9 / ceil['32']:.0f} % compiled | {'met' if eff >= 0.6 else 'met with compile' if flops / cmed['32'] / 1e9 / ceil['32'] >= 0.6 else 'missed'} |"
    )
    speed, cspeed = med["32"] / med["bf16-mixed"], cmed["32"] / cmed["bf16-mixed"]
    dpsnr = res["bf16-mixed"][1] - res["32"][1]
    v3 = (
        "accuracy missed"
        if abs(dpsnr) > 0.5
        else "met"
        if speed >= 2
        else "met with compile"
        if cspeed >= 2
        else "missed"
    )
    out(
        f"| 3. bf16-mixed >= 2x fp32 throughput, PSNR within 0.5 dB after {prec_steps} steps | eager {speed:.2f}x, compiled {cspeed:.2f}x; "
        f"PSNR {res['32'][1]:.2f} vs {res['bf16-mixed'][1]:.2f} dB ({dpsnr:+.2f}) | {v3} |"
    )

    def tt(r):
        return "not reached" if r[0] is None else f"{r[0]:.1f} s (step {r[1]})"

    verdict5 = "met" if (r30[0] and n30[0] and n30[0] <= r30[0] / 4) else "missed"
    out(
        f"| 5. time to 30 dB <= 1/4 of the SIREN notebook setup | nir default: 30 dB {tt(n30)}, 40 dB {tt(n40)}; notebook setup (full batch, Adam 1e-4, fp32): 30 dB {tt(r30)}, 40 dB {tt(r40)} (budget {budget_ref} s) | {verdict5} |"
    )
    ce, cc = statistics.median(nir_comp["false"][0]), statistics.median(nir_comp["true"][0])
    out(
        f"| 6. `compile=true` helps measurably | nir default setup: {ce * 1e3:.1f} ms/step eager, {cc * 1e3:.1f} ms/step compiled ({ce / cc:.2f}x); "
        f"whole run of {n6 + 4} steps {nir_comp['false'][1]:.1f} s vs {nir_comp['true'][1]:.1f} s (compilation included) | {'helps' if ce / cc >= 1.1 else 'no gain'} |"
    )
    out("")
    out("Per precision, plain loop on the full-batch workload (eager PSNR after the same steps):")
    out("")
    out(
        "| precision | eager step | eager throughput | of its matmul ceiling | compiled step | compiled throughput | of ceiling | compile time | PSNR |"
    )
    out("|---|---|---|---|---|---|---|---|---|")
    for p in precisions:
        out(
            f"| {p} | {fmt3(res[p][0], 1e3, 2)} ms | {sps(med[p])} | {100 * flops / med[p] / 1e9 / ceil[p]:.0f} % of {ceil[p]:.0f} GFLOP/s | "
            f"{fmt3(comp[p][0], 1e3, 2)} ms | {sps(cmed[p])} | {100 * flops / cmed[p] / 1e9 / ceil[p]:.0f} % | {comp[p][1]:.1f} s | {res[p][1]:.2f} dB |"
        )
    if scaling:
        out("")
        out("Throughput against batch size (bf16-mixed, eager, random coordinates):")
        out("")
        out("| batch | step | throughput | of the bf16 ceiling |")
        out("|---|---|---|---|")
        for b, t in scaling:
            f = siren_flops_per_point() * b
            out(
                f"| {b:,} | {t * 1e3:.2f} ms | {sps(t, b)} | {100 * f / t / 1e9 / ceil['bf16-mixed']:.0f} % of {ceil['bf16-mixed']:.0f} GFLOP/s |"
            )
    if graphed:
        out("")
        out(
            "The plain loop's whole full-batch step (forward, backward, Adam) captured in a CUDA graph and replayed, "
            "i.e. without host work per step: " + ", ".join(f"{p} {v}" for p, v in graphed.items()) + "."
        )
    out("")
    from tests.conftest import make_cfg

    default = make_cfg(DEVICE_OVERRIDES)
    out(
        f"nir's image setup for targets 5 and 6 is the {'GPU' if gpu else 'CPU'} preset (random batches of {int(default.batch_size):,} pixels, Adam {default.optim.lr:g}, "
        f"precision auto: bf16-mixed here, SIREN's first layer and sines in fp32) with its cosine schedule stretched over this bench's {nir_steps} steps "
        f"(the preset's own length is {int(default.trainer.max_steps)}). "
        "Times count training only (the PSNR evaluations are paused out)."
    )
    # keep the section that scripts/bench_host.py generates in the same file
    old = out_path.read_text() if out_path.is_file() else ""
    kept = old[old.index("<!-- bench_host: begin -->") :] if "<!-- bench_host: begin -->" in old else ""
    out_path.write_text("\n".join(lines) + "\n" + ("\n" + kept if kept else ""))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
