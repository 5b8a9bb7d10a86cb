#!/usr/bin/env python
"""GPU check of the captured step (issue 16): the same run eager (one step per call) and
captured (K steps per call in a CUDA graph) must reach the same field, within float tolerance
(the captured Adam is the capturable variant, and cuBLAS may pick other kernels inside a graph,
so bitwise equality is not expected). Prints one JSON line per case.

    python scripts/check_graph.py              # on a GPU (on a CPU: a 50-step smoke test of the script)
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CASES = {  # name: overrides (on top of trainer=gpu)
    # 10 steps: 3 warm-up steps, the capture, 6 replays; differences here are the step's own, not chaos
    "siren-image-32-10steps": ["trainer.max_steps=10", "trainer.log_every_n_steps=5", "trainer.precision=32"],
    "siren-image-bf16": ["trainer.max_steps=400"],
    "siren-image-32": ["trainer.max_steps=400", "trainer.precision=32"],
    "siren-image-32-clip": ["trainer.max_steps=200", "trainer.precision=32", "trainer.gradient_clip_val=0.01"],
    "siren-image-bf16-compile": ["trainer.max_steps=400", "compile=true"],
    "hashgrid-image-bf16": ["trainer.max_steps=400", "model=hashgrid"],
    "peaks1d-decades-logmse": ["data=peaks1d", "sampling=decades", "trainer.max_steps=400", "log.images=false"],
    "fourier-full-batch-32": [
        "model=fourier",
        "data.sample=camera",
        "batch_size=1000000",
        "trainer.max_steps=200",
        "trainer.precision=32",
    ],  # fmt: skip
}


def run(overrides: list[str], run_dir: Path) -> tuple[dict, float]:
    from nir.run.config import compose_config
    from nir.run.run import train_field

    t = time.perf_counter()
    device = (
        ["trainer=gpu"] if torch.cuda.is_available() else ["trainer.max_steps=50", "batch_size=1024"]
    )  # CPU: a smoke test
    ov = [*device, "trainer.enable_progress_bar=false", "trainer.val_check_interval=100", *overrides]
    if not torch.cuda.is_available():
        ov = [o for o in ov if not o.startswith(("trainer.max_steps=", "batch_size="))] + device[:2]
    _, m = train_field(compose_config(ov)[0], run_dir)
    return m, time.perf_counter() - t


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="nir_graph_"))
    only = sys.argv[1:] or list(CASES)
    for name in only:
        ov = CASES[name]
        eager, te = run([*ov, "steps_per_call=1", "cuda_graph=false"], tmp / f"{name}_eager")
        graph, tg = run([*ov, "steps_per_call=25", "cuda_graph=true"], tmp / f"{name}_graph")
        a, b = (
            load_file(tmp / f"{name}_eager" / "field.safetensors"),
            load_file(tmp / f"{name}_graph" / "field.safetensors"),
        )
        diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
        scale = max(float(a[k].float().abs().max()) for k in a)
        print(json.dumps({
            "check": "graph-vs-eager", "case": name, "psnr_eager": eager["psnr"], "psnr_graph": graph["psnr"],
            "worst_decade_eager": eager.get("worst_decade_median"), "worst_decade_graph": graph.get("worst_decade_median"),
            "max_weight_diff": diff, "max_weight": scale, "wall_eager_s": round(te, 2), "wall_graph_s": round(tg, 2),
            "fit_eager_s": eager.get("fit_time_s"), "fit_graph_s": graph.get("fit_time_s"),
            "nonfinite": [eager.get("nonfinite_steps"), graph.get("nonfinite_steps")],
        }), flush=True)  # fmt: skip
    # 16-mixed falls back to eager with one line (the scaler syncs with the host)
    m, _ = run(["trainer.max_steps=50", "trainer.precision=16-mixed", "cuda_graph=true"], tmp / "fp16")
    print(json.dumps({"check": "16-mixed-fallback", "psnr": m["psnr"], "status": m["status"]}), flush=True)


if __name__ == "__main__":
    main()
