#!/usr/bin/env python
"""Throughput of one network's forward + backward (+ Adam step): samples per second.

For docs/performance.md (issue 12: the hash grid's encoding at batch 2^18 beside SIREN 3x256)
and the CPU tables. Prints one JSON line per network.

    .venv/bin/python scripts/bench_encoding.py --batch 16384                 # CPU
    python scripts/bench_encoding.py --device cuda --batch 262144             # GPU (scripts/gpu_check.sh)
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


def networks(d: int) -> dict[str, torch.nn.Module]:
    return {
        "hash grid encoding only (16 x 2, 2^16)": GridEncoding(d, **GRID),
        "hash grid + MLP 2x64 (model=hashgrid)": EncodedMLP(d, 3, "nir.fields.encodings.GridEncoding", **GRID),
        "SIREN 3x256 (model=siren)": Siren(d, 3),
    }


def measure(net: torch.nn.Module, batch: int, device: str, dtype: torch.dtype | None, steps: int) -> float:
    net = net.to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.rand(batch, 2, device=device) * 2 - 1

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
    args = ap.parse_args()
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    for label, net in networks(2).items():
        for dtype in (None, torch.bfloat16):
            sps = measure(net, args.batch, args.device, dtype, args.steps)
            row = {"network": label, "device": name, "batch": args.batch, "precision": "bf16-mixed" if dtype else "32",
                   "samples_per_s": round(sps)}  # fmt: skip
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
