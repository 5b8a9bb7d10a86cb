#!/usr/bin/env python
"""Training-loop benchmark on the SIREN paper's image demo; writes its section of docs/performance.md.

Workload: cameraman at 256x256 (nir's bundled photo, resized), SIREN 3x256, Adam 1e-4,
full batch of 65,536 pixels. Timings are compared as ratios measured in the same process,
alternately, because these machines are shared and noisy; each figure is min/median/max over
repeats.

    .venv/bin/python scripts/bench.py                 # ~10 min on 2 cores
    .venv/bin/python scripts/bench.py --quick         # smaller repeats, for a smoke test
    python scripts/bench.py --device cuda              # on a GPU: its section of docs/performance.md
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nir.allocator import tune_allocator
from nir.fields import Siren
from nir.interop.benchmark import (
    DEVICE_OVERRIDES,
    PlainLoop,
    cameraman256,
    first_reach,
    fmt3,
    graphed_step_time,
    matmul_ceiling,
    nir_run,
    psnr_curve,
    siren_flops_per_point,
    step_timer,
    sync,
    write_section,
)

logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="report page (default docs/performance.md: its bench.py or bench.py --device cuda section)",
    )
    args = ap.parse_args()
    dev = args.device
    gpu = dev == "cuda"
    out_path = args.out or ROOT / "docs" / "performance.md"
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
    out("Generated by `scripts/bench.py` (do not edit by hand):")
    out("")
    out("    .venv/bin/python scripts/bench.py" + (" --device cuda" if gpu else "") + (" --quick" if q else ""))
    out("")
    out(f"Machine: {machine}; {time.strftime('%Y-%m-%d')}.")
    params = sum(p.numel() for p in Siren(2, 1, hidden_dim=256, num_layers=3).parameters())  # the workload's network
    out(
        f"Workload: cameraman 256x256, SIREN 3x256 ({params:,} parameters), Adam 1e-4, full batch of 65,536 pixels "
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
    from nir.run.config import compose_config

    default = compose_config(DEVICE_OVERRIDES)[0]
    out(
        f"nir's image setup for targets 5 and 6 is the {'GPU' if gpu else 'CPU'} preset (random batches of {int(default.batch_size):,} pixels, Adam {default.optim.lr:g}, "
        f"precision auto: bf16-mixed here, SIREN's first layer and sines in fp32) with its cosine schedule stretched over this bench's {nir_steps} steps "
        f"(the preset's own length is {int(default.trainer.max_steps)}). "
        "Times count training only (the PSNR evaluations are paused out)."
    )
    write_section(out_path, "bench.py" + (" --device cuda" if gpu else ""), "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
