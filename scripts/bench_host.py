#!/usr/bin/env python
"""Host time per training step: nir against a plain PyTorch loop at a tiny batch (64 samples),
where the arithmetic is negligible and the step is the host's work (Python, hooks, launches).

    .venv/bin/python scripts/bench_host.py                  # CPU
    python scripts/bench_host.py --device cuda               # on a GPU machine
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    if args.device == "cuda":
        bench.DEVICE_OVERRIDES.append("trainer=gpu")
    bench.tune_allocator()
    sig = bench.cameraman256()
    ov = [
        "model.hidden_dim=256",
        "model.num_layers=3",
        "optim.lr=1e-4",
        "optim.schedule=constant",
        f"batch_size={args.batch}",
        "trainer.precision=32",
        "trainer.val_check_interval=100000",
    ]
    tmp = Path(tempfile.mkdtemp(prefix="nir_host_"))
    plain, nir = [], []
    for r in range(args.reps):
        plain.append(statistics.median(bench.PlainLoop(sig, 1e-4, device=args.device, batch=args.batch).timed(300)))
        timer = bench.step_timer(args.device)
        bench.nir_run(sig.meta["path"], ov, 304, tmp / f"r{r}", [timer])
        nir.append(statistics.median(timer.step_times()))
    print(
        f"batch {args.batch} on {args.device}: plain {bench.fmt3(plain, 1e3)} ms, nir {bench.fmt3(nir, 1e3)} ms "
        f"(min / median / max of {args.reps} alternations); ratio {statistics.median(nir) / statistics.median(plain):.2f}"
    )


if __name__ == "__main__":
    main()
