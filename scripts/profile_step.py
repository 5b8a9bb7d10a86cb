#!/usr/bin/env python
"""Where a SIREN 3x256 full-batch training step spends its time (torch.profiler, CPU).

    .venv/bin/python scripts/profile_step.py [--precision bf16-mixed] [--batch 65536]

Prints the top operators by self CPU time and the share of matrix multiplies.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from nir.allocator import tune_allocator
from nir.fields import Siren

MATMUL = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "mkldnn")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--precision", default="32")
    ap.add_argument("--batch", type=int, default=65536)
    args = ap.parse_args()
    tune_allocator()
    torch.manual_seed(0)
    net = Siren(2, 1, 256, 3)
    opt = torch.optim.Adam(net.parameters(), 1e-4)
    x, y = torch.rand(args.batch, 2) * 2 - 1, torch.rand(args.batch, 1)
    bf16 = args.precision == "bf16-mixed"

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            p = net(x)
        loss = ((p.float() - y) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(5):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    mm = sum(e.self_cpu_time_total for e in events if e.key.startswith(MATMUL))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    print(f"matrix multiplies: {100 * mm / total:.0f} % of self CPU time ({args.precision}, batch {args.batch})")


if __name__ == "__main__":
    main()
