#!/usr/bin/env python
"""Sampling speed and peak memory of ``Field.sample`` on an n^3 grid.

The network's weights do not change the cost, so the field is built from its spec (no training).
Peak memory beyond the output array: on CUDA, ``torch.cuda.max_memory_allocated`` (the output
lives on the host); on the CPU, the process's peak RSS (``ru_maxrss``) minus the RSS before
sampling minus the output array (with ``--out x.npy`` the written pages of the memory map count
in RSS, so they are subtracted too).

    .venv/bin/python scripts/bench_sample.py --model siren --n 128
    .venv/bin/python scripts/bench_sample.py --model fourier_lt3d --n 512 --out /tmp/s.npy
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time

import torch

from nir.field import Field

MODELS = {
    "siren": {
        "target": "nir.fields.siren.Siren",
        "kwargs": {"in_dim": 3, "out_dim": 1, "hidden_dim": 256, "num_layers": 3},
    },
    "fourier_lt3d": {
        "target": "nir.fields.fourier.FourierMLP",
        "kwargs": {"in_dim": 3, "out_dim": 1, "hidden_dim": 64, "num_layers": 2, "num_features": 64, "sigma": 4.0},
    },
}


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=list(MODELS), default="siren")
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--chunk", type=int, default=65536)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None, help="also write the grid to this .npy (memory-mapped)")
    args = ap.parse_args()
    spec = {
        "network": MODELS[args.model],
        "transform": {"target": "nir.transforms.Log", "kwargs": {}},
        "bounds": [[-1.0, 1.0]] * 3,
        "shape": [args.n] * 3,
        "channels": 1,
    }
    torch.manual_seed(0)
    field = Field.from_spec(spec).to(args.device).eval()
    params = field.num_parameters()
    # warm-up (allocator, kernels)
    field.sample([8, 8, 8], chunk=args.chunk)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = rss_mb()
    t = time.perf_counter()
    out = field.sample([args.n] * 3, chunk=args.chunk, out=args.out)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    dt = time.perf_counter() - t
    out_mb = out.numel() * 4 / 2**20
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res = {
        "model": args.model,
        "params": params,
        "n": args.n,
        "points": out.numel(),
        "chunk": args.chunk,
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu",
        "seconds": round(dt, 2),
        "mpoints_per_s": round(out.numel() / dt / 1e6, 2),
        "output_mb": round(out_mb),
        # a memory-mapped output's written pages count in RSS too, so the output is subtracted either way
        "host_peak_beyond_output_mb": round(peak_rss - before - out_mb),
        "to_npy": bool(args.out),
        "torch": torch.__version__,
    }
    if args.device.startswith("cuda"):
        res["gpu_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
