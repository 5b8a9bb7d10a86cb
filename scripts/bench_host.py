#!/usr/bin/env python
"""Time per optimizer step: nir with one step per Lightning call, with several (``steps_per_call``)
and, on a GPU, with the step captured in a CUDA graph, against a plain PyTorch loop (issue 16).

At batch 64 the arithmetic is negligible and a step is the host's work (Python, hooks, kernel
launches); at real batches the host hides behind the GPU or does not. Every figure is the wall
time of a run's optimizer steps after its first few (graph capture and warm-up excluded),
divided by their number; runs alternate (plain, nir, plain, nir, ...) and each figure is the
median over the repeats. A generated section of the output file (other sections are kept).

    .venv/bin/python scripts/bench_host.py                       # CPU: its section of docs/performance.md
    python scripts/bench_host.py --device cuda                    # GPU: its section of docs/performance.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nir.interop import benchmark as bench

ROOT = Path(__file__).resolve().parent.parent
SIREN = ["model.hidden_dim=256", "model.num_layers=3", "optim.lr=1e-4", "optim.schedule=constant"]
QUIET = ["trainer.val_check_interval=100000", "trainer.log_every_n_steps=100000"]


def nir_step_time(overrides: list[str], steps: int, run_dir: Path, device: str) -> tuple[float, dict]:
    """Seconds per optimizer step of a nir run (the steps after the first 10 %, at least 30:
    warm-up and graph capture excluded), and the run's metrics."""
    import pytorch_lightning as pl

    from nir.run.config import compose_config
    from nir.run.run import train_field

    skip, points = max(30, steps // 10), []

    class Timer(pl.Callback):
        def on_train_batch_start(self, trainer, *a, **k) -> None:
            if not points and trainer.global_step >= skip:
                bench.sync(device)
                points.append((time.perf_counter(), trainer.global_step))

        def on_train_batch_end(self, trainer, *a, **k) -> None:
            if trainer.global_step >= trainer.max_steps:  # before the final evaluation
                bench.sync(device)
                points.append((time.perf_counter(), trainer.global_step))

    ov = [*bench.DEVICE_OVERRIDES, f"trainer.max_steps={steps}", "trainer.enable_progress_bar=false",
          "log.images=false", "check_finite_every=0", *overrides]  # fmt: skip
    _, m = train_field(compose_config(ov)[0], run_dir, callbacks=[Timer()])
    (t0, s0), (t1, s1) = points[0], points[-1]
    return (t1 - t0) / (s1 - s0), m


def plain_step_time(sig, batch: int, steps: int, device: str, graphed: bool = False, precision: str = "32") -> float:
    if graphed:
        return bench.graphed_step_time(sig, precision, steps, batch=batch)
    loop = bench.PlainLoop(sig, 1e-4, precision, device=device, batch=None if batch >= sig.numel else batch)
    for _ in range(5):
        loop.step()
    bench.sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        loop.step()
    bench.sync(device)
    return (time.perf_counter() - t) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--batches", type=int, nargs="+", default=None, help="default: 64 (CPU); 64 16384 65536 (GPU)")
    ap.add_argument("--k", type=int, default=None, help="steps per call of the K rows (default: the device's auto)")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 400 CPU, 600 GPU)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--large", action="store_true", help="GPU: also fp32 vs bf16-mixed and the hash grid at 2^18")
    ap.add_argument("--large-only", action="store_true", help="GPU: only the batch-2^18 table")
    args = ap.parse_args()
    gpu = args.device == "cuda"
    from nir.training.steps import AUTO_STEPS_PER_CALL

    k = args.k or max(AUTO_STEPS_PER_CALL[args.device], 16)  # the CPU's auto is 1: measure 16 against it
    batches = args.batches or ([64, 16384, 65536] if gpu else [64])
    steps = args.steps or (600 if gpu else 400)
    steps -= steps % k  # whole calls
    out = args.out or ROOT / "docs" / "performance.md"
    if gpu:
        bench.DEVICE_OVERRIDES.append("trainer=gpu")
    bench.tune_allocator()
    sig = bench.cameraman256()
    tmp = Path(tempfile.mkdtemp(prefix="nir_host_"))
    variants = [("nir, 1 step per call", ["steps_per_call=1", "cuda_graph=false"])]
    variants.append((f"nir, {k} steps per call", [f"steps_per_call={k}", "cuda_graph=false"]))
    if gpu:
        variants.append((f"nir, {k} steps per call, CUDA graph", [f"steps_per_call={k}", "cuda_graph=true"]))
    rows = []
    for b in [] if args.large_only else batches:
        times: dict[str, list[float]] = {"plain loop": []}
        if gpu:
            times["plain loop, CUDA graph"] = []
        for r in range(args.reps):
            times["plain loop"].append(plain_step_time(sig, b, steps, args.device))
            if gpu:
                times["plain loop, CUDA graph"].append(plain_step_time(sig, b, steps, args.device, graphed=True))
            for name, ov in variants:
                ov = [*SIREN, *QUIET, f"batch_size={b}", "trainer.precision=32", *ov]
                ov.append(f"data.path={sig.meta['path']}")
                t, _ = nir_step_time(ov, steps, tmp / f"{b}_{r}_{name[:2]}{len(ov)}", args.device)
                times.setdefault(name, []).append(t)
            print(f"batch {b} rep {r}: " + ", ".join(f"{n} {v[-1] * 1e3:.3f} ms" for n, v in times.items()), flush=True)
        rows.append((b, times))
    lines = report(rows, args, k, steps, gpu) if rows else []
    if gpu and args.large:
        lines += large_batch(tmp, steps)
    bench.write_section(out, "bench_host" + (" --device cuda" if gpu else ""), "\n".join(lines))
    print("\n".join(lines))


def machine(gpu: bool) -> str:
    import os
    import platform

    if gpu:
        p = torch.cuda.get_device_properties(0)
        return f"{p.name}, torch {torch.__version__}"
    return f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} (CPU)"


def report(rows, args, k: int, steps: int, gpu: bool) -> list[str]:
    cmd = "python scripts/bench_host.py" + (" --device cuda" if gpu else "") + (" --large" if args.large else "")
    lines = [
        "### Time per optimizer step: steps per call and CUDA graphs (issue 16)",
        "",
        f"Generated by `{cmd}` (do not edit by hand); {machine(gpu)}; {time.strftime('%Y-%m-%d')}.",
        f"SIREN 3x256 on the 256x256 cameraman, Adam 1e-4, fp32, {steps} optimizer steps per run, "
        f"median of {args.reps} alternating runs; ratio: against the plain (eager) loop.",
        "",
        "| batch | loop | time per optimizer step | ratio to the plain loop | samples/s |",
        "|---|---|---|---|---|",
    ]
    for b, times in rows:
        base = statistics.median(times["plain loop"])
        for name, ts in times.items():
            t = statistics.median(ts)
            lines.append(f"| {b:,} | {name} | {t * 1e3:.3f} ms | {t / base:.3f} | {min(b, 65536) / t / 1e6:.2f} M |")
    return lines


def large_batch(tmp: Path, steps: int) -> list[str]:
    """GPU: nir's default loop (auto steps per call and graph) at batch 2^18 (the 512x512
    cameraman, full batch): SIREN 3x256 fp32 vs bf16-mixed, eager and compiled (time and PSNR
    after the same steps), and the hash grid."""
    res = {}
    base = ["data.sample=camera", "batch_size=262144", *QUIET]
    for name, ov in [
        ("SIREN 3x256, 32", [*SIREN[:2], "trainer.precision=32"]),
        ("SIREN 3x256, bf16-mixed", [*SIREN[:2], "trainer.precision=bf16-mixed"]),
        ("SIREN 3x256, 32, compile=true", [*SIREN[:2], "trainer.precision=32", "compile=true"]),
        ("SIREN 3x256, bf16-mixed, compile=true", [*SIREN[:2], "trainer.precision=bf16-mixed", "compile=true"]),
        ("hash grid (model=hashgrid), 32", ["model=hashgrid", "trainer.precision=32"]),
        ("hash grid (model=hashgrid), bf16-mixed", ["model=hashgrid", "trainer.precision=bf16-mixed"]),
    ]:
        t, m = nir_step_time([*base, *ov], steps, tmp / name.replace(" ", "_").replace(",", ""), "cuda")
        res[name] = (t, m["psnr"])
        print(name, f"{t * 1e3:.3f} ms", f"{m['psnr']:.2f} dB", flush=True)
    s32, s16 = res["SIREN 3x256, 32"], res["SIREN 3x256, bf16-mixed"]
    c32, c16 = res["SIREN 3x256, 32, compile=true"], res["SIREN 3x256, bf16-mixed, compile=true"]
    lines = [
        "",
        f"Batch 262,144 (the 512x512 cameraman, full batch), nir's defaults on the GPU (steps per call auto, "
        f"CUDA graph), {steps} steps, PSNR of the final field in fp32:",
        "",
        "| network, precision | time per optimizer step | samples/s | PSNR |",
        "|---|---|---|---|",
    ]
    lines += [f"| {n} | {t * 1e3:.3f} ms | {262144 / t / 1e6:.1f} M | {p:.2f} dB |" for n, (t, p) in res.items()]
    lines += [
        "",
        f"SIREN bf16-mixed / fp32 speed (target >= 1.4x at PSNR within 0.2 dB): {s32[0] / s16[0]:.2f}x eager "
        f"(PSNR {s16[1] - s32[1]:+.2f} dB); with `compile=true` (bias, scale and sine fused) {c32[0] / c16[0]:.2f}x "
        f"(PSNR {c16[1] - c32[1]:+.2f} dB), and {s32[0] / c16[0]:.2f}x the eager fp32 step.",
    ]
    return lines


if __name__ == "__main__":
    main()
