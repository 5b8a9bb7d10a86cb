#!/usr/bin/env python
"""Throughput of one network's forward + backward (+ Adam step): samples per second.

For docs/performance.md (issue 12: the hash grid's encoding at batch 2^18 beside SIREN 3x256)
and the CPU tables. Prints one JSON line per network.

    .venv/bin/python scripts/bench_encoding.py --batch 16384                 # CPU
    python scripts/bench_encoding.py --device cuda --batch 262144             # GPU: torch and Triton backends (scripts/gpu_check.sh)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nir.fields import EncodedMLP, GridEncoding, Siren

GRID = {"n_levels": 16, "n_features_per_level": 2, "log2_hashmap_size": 16, "base_resolution": 16,
        "finest_resolution": 512}  # fmt: skip
#: the grid setups issue 26 measures: tiny-cuda-nn's 2-D image config (tables 2^15 and the default
#: 2^16) and the 3-D hash grid at 128^3, each with the MLP 2x64 (model=hashgrid)
GRIDS = {
    "2-D hash grid 16x2, 2^15 + MLP 2x64": (2, {**GRID, "log2_hashmap_size": 15}),
    "2-D hash grid 16x2, 2^16 + MLP 2x64 (model=hashgrid)": (2, GRID),
    "3-D hash grid 16x2, 2^16, to 128 + MLP 2x64": (3, {**GRID, "finest_resolution": 128}),
}
#: the 3-D long-tail presets (conf/model/hashgrid_lt3d*.yaml: 8 levels x 2, 4..48, MLP 1x64) and
#: model=hashgrid with 2^19 tables, the CPU figures of issue 34 (``--grids cpu``)
LT3D = {
    "n_levels": 8,
    "n_features_per_level": 2,
    "log2_hashmap_size": 10,
    "base_resolution": 4,
    "finest_resolution": 48,
}
CPU_GRIDS = {
    "hashgrid_lt3d (8x2, 2^10) + MLP 1x64": (3, LT3D, 0),
    "hashgrid_lt3d_large (8x2, 2^11) + MLP 1x64": (3, {**LT3D, "log2_hashmap_size": 11}, 0),
    "2-D hash grid 16x2, 2^19 + MLP 2x64": (2, {**GRID, "log2_hashmap_size": 19}, 1),
    "3-D hash grid 16x2, 2^19 + MLP 2x64": (3, {**GRID, "log2_hashmap_size": 19}, 1),
}


def networks(backends: list[str], grids: str = "gpu") -> dict[str, tuple[int, torch.nn.Module]]:
    nets: dict[str, tuple[int, torch.nn.Module]] = {}
    if grids == "cpu":
        for label, (d, grid, layers) in CPU_GRIDS.items():
            for backend in backends:
                enc = {"otype": "nir.fields.encodings.GridEncoding", **grid, "backend": backend}
                nets[f"{label} [{backend}]"] = (d, EncodedMLP(d, 1, enc, hidden_dim=64, num_layers=layers))
        return nets
    for label, (d, grid) in GRIDS.items():
        for backend in backends:
            enc = {"otype": "nir.fields.encodings.GridEncoding", **grid, "backend": backend}
            nets[f"{label} [{backend}]"] = (d, EncodedMLP(d, 3, enc, hidden_dim=64, num_layers=1))
    nets["hash grid encoding only (16 x 2, 2^16) [torch]"] = (2, GridEncoding(2, **GRID, backend="torch"))
    nets["SIREN 3x256 (model=siren)"] = (2, Siren(2, 3))
    return nets


def measure(net: torch.nn.Module, d: int, batch: int, device: str, dtype: torch.dtype | None, steps: int) -> float:
    net = net.to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.rand(batch, d, device=device) * 2 - 1

    def step() -> None:
        with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = net(x)
        loss = out.float().square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=1 << 18)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument(
        "--backends", nargs="+", default=None, help="grid backends (default: torch and the device's kernels)"
    )
    ap.add_argument("--grids", choices=["gpu", "cpu"], default="gpu", help="gpu: issue 26's setups; cpu: issue 34's")
    ap.add_argument("--precisions", nargs="+", default=["32", "bf16-mixed"], choices=["32", "bf16-mixed"])
    args = ap.parse_args()
    backends = args.backends or (["torch", "triton"] if args.device == "cuda" else ["torch", "numba"])
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    for label, (d, net) in networks(backends, args.grids).items():
        for dtype in [torch.bfloat16 if p == "bf16-mixed" else None for p in args.precisions]:
            sps = measure(net, d, args.batch, args.device, dtype, args.steps)
            row = {"network": label, "device": name, "batch": args.batch, "precision": "bf16-mixed" if dtype else "32",
                   "samples_per_s": round(sps)}  # fmt: skip
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
