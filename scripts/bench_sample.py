#!/usr/bin/env python
"""Sampling speed and peak memory of ``Field.sample`` on an n^d grid.

The network's weights do not change the cost, so the field is built from its spec (no training).
Grid networks (``--model hashgrid_lt3d`` and the others below) are timed once per grid backend
given (``--backends torch numba``: the reference path and the fused CPU kernels, alternately in
this one process, best of ``--repeats``), with the work per point (table gathers, MLP FLOPs) and
the MLP's ceiling on this machine (its FLOPs at the large-matmul rate).
Peak memory beyond the output array: on CUDA, ``torch.cuda.max_memory_allocated`` (the output
lives on the host); on the CPU, the process's peak RSS (``ru_maxrss``) minus the RSS before
sampling minus the output array (with ``--out x.npy`` the written pages of the memory map count
in RSS, so they are subtracted too).

    .venv/bin/python scripts/bench_sample.py --model siren --n 128
    .venv/bin/python scripts/bench_sample.py --model fourier_lt3d --n 512 --out /tmp/s.npy
    .venv/bin/python scripts/bench_sample.py --model hashgrid_lt3d --n 128 --backends torch numba
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time

import torch

from nir.interop.benchmark import matmul_ceiling
from nir.reuse.field import Field

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
GRID = {"otype": "nir.fields.encodings.GridEncoding", "n_features_per_level": 2, "hashed": True}
LT3D = {**GRID, "n_levels": 8, "log2_hashmap_size": 10, "base_resolution": 4, "finest_resolution": 48}
HASH = {**GRID, "n_levels": 16, "log2_hashmap_size": 19, "base_resolution": 16, "finest_resolution": 512}
for name, d, enc, layers in [
    ("hashgrid_lt3d", 3, LT3D, 0),  # conf/model/hashgrid_lt3d.yaml
    ("hashgrid_lt3d_large", 3, {**LT3D, "log2_hashmap_size": 11}, 0),
    ("hashgrid16x2_2d", 2, HASH, 1),  # model=hashgrid with 2^19 tables
    ("hashgrid16x2_3d", 3, HASH, 1),
]:
    MODELS[name] = {
        "target": "nir.fields.EncodedMLP",
        "kwargs": {"in_dim": d, "out_dim": 1, "encoding": enc, "hidden_dim": 64, "num_layers": layers},
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
    ap.add_argument("--backends", nargs="+", default=None, help="grid networks: the backends to time (default auto)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    network = MODELS[args.model]
    if "encoding" not in network["kwargs"]:
        return sample_once(args, network, None)
    backends = args.backends or ["auto"]
    rows = [sample_once(args, network, b) for _ in range(args.repeats) for b in backends]  # alternately
    best = {b: max((r for r in rows if r["backend"] == b), key=lambda r: r["mpoints_per_s"]) for b in backends}
    limit = machine_limit(network, args.device)
    for b in backends:
        row = {
            **best[b],
            **limit,
            "x_first_backend": round(best[b]["mpoints_per_s"] / best[backends[0]]["mpoints_per_s"], 1),
        }
        print(json.dumps({"best_of": args.repeats, **row}))


def machine_limit(network: dict, device: str) -> dict:
    """Work per point of a grid network and a ceiling for it on this machine (M points/s): the
    MLP's FLOPs at the large-matmul rate. The gathers are counted, not timed: a table row from
    L1/L2 costs about a cycle at best, so ``cores x clock / gathers`` bounds them (docs/performance.md)."""
    kw = network["kwargs"]
    enc, d = kw["encoding"], kw["in_dim"]
    dims = [enc["n_levels"] * enc["n_features_per_level"]] + [kw["hidden_dim"]] * (kw["num_layers"] + 1) + [1]
    flops = sum(2 * a * b for a, b in zip(dims[:-1], dims[1:]))
    gflops = matmul_ceiling(torch.float32, device, reps=3)
    return {
        "gathers_per_point": enc["n_levels"] * 2**d,  # rows of n_features floats
        "mlp_flops_per_point": flops,
        "matmul_gflops": round(gflops),
        "limit_flops_mpoints_per_s": round(gflops * 1e9 / flops / 1e6, 1),
    }


def sample_once(args: argparse.Namespace, network: dict, backend: str | None) -> dict:
    if backend is not None:
        network = {
            **network,
            "kwargs": {**network["kwargs"], "encoding": {**network["kwargs"]["encoding"], "backend": backend}},
        }
    d = network["kwargs"]["in_dim"]
    spec = {
        "network": network,
        "transform": {"target": "nir.transforms.Log", "kwargs": {}},
        "bounds": [[-1.0, 1.0]] * d,
        "shape": [args.n] * d,
        "channels": 1,
    }
    torch.manual_seed(0)
    field = Field.from_spec(spec).to(args.device).eval()
    params = field.num_parameters()
    # warm-up (allocator, kernels)
    field.sample([8] * d, chunk=args.chunk)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = rss_mb()
    t = time.perf_counter()
    out = field.sample([args.n] * d, chunk=args.chunk, out=args.out)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    dt = time.perf_counter() - t
    out_mb = out.numel() * 4 / 2**20
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res = {
        "model": args.model,
        **({"backend": backend} if backend is not None else {}),
        "params": params,
        "n": args.n,
        "points": out.numel(),
        "chunk": args.chunk,
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu",
        "seconds": round(dt, 3),
        "mpoints_per_s": round(out.numel() / dt / 1e6, 3),
        "output_mb": round(out_mb),
        # a memory-mapped output's written pages count in RSS too, so the output is subtracted either way
        "host_peak_beyond_output_mb": round(peak_rss - before - out_mb),
        "to_npy": bool(args.out),
        "torch": torch.__version__,
    }
    if args.device.startswith("cuda"):
        res["gpu_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    if backend is None:
        print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
