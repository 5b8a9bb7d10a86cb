#!/usr/bin/env python
"""How much a neighbour predictor could take off the bounded residual (issue 37, a first
measurement, not the coder): a field is trained under ``--rel`` on a ``sources3d`` volume, and
its residual in nir's map, ``r = g(y) - g(pred)``, is quantised on the bound's cell

- directly (what nir stores today: ``k = round(r / cell)``, coded by the residual front end),
- after a Lorenzo predictor on the residual (``k = round((r - L(r)) / cell)``, ``L`` the
  inclusion-exclusion of the already visited neighbours, SZ3's first predictor), measured
  open-loop (on ``r`` itself, not on the decoded residual: an estimate of what a coder that
  predicts from decoded neighbours gets, close when the cell is small against ``r``'s variation),
- and the same Lorenzo on the map of the signal alone, without the network (what SZ3 starts from),

each coded by nir's residual coders (the smaller of ANS under one Laplace and zstd), beside SZ3's
bytes for the same guarantee (an absolute bound ``ln(1 + rel)`` on the map).

    .venv/bin/python scripts/residual_context_study.py --n 64 --steps 300
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import nir
from nir.codec import bound as B
from nir.data.synthetic import sources3d
from nir.run.settings import fit_overrides


def lorenzo(r: np.ndarray) -> np.ndarray:
    """The Lorenzo prediction of every sample from its visited neighbours (zero outside the grid)."""
    pred = np.zeros_like(r)
    padded = np.pad(r, [(1, 0)] * r.ndim)
    for offset in itertools.product((0, 1), repeat=r.ndim):
        if not any(offset):
            continue
        sign = (-1) ** (sum(offset) + 1)
        view = tuple(slice(1 - o, padded.shape[k] - o) for k, o in enumerate(offset))
        pred += sign * padded[view]
    return pred


def coded(k: np.ndarray) -> int:
    return len(B.code_ints(k.reshape(-1).astype(np.int64)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--rel", type=float, default=0.01)
    ap.add_argument("--floor", type=float, default=1e-3)
    args = ap.parse_args()
    y = sources3d(n=args.n).values.numpy().reshape((args.n,) * 3).astype(np.float64)
    bound = B.Bound("rel", args.rel, args.floor)
    cell = 2 * B.MARGIN * bound.step
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "y.npy", y.astype(np.float32))
        overrides = fit_overrides(True, rel=args.rel, floor=args.floor, steps=args.steps)
        with contextlib.redirect_stdout(io.StringIO()):
            field, _ = nir.fit(str(Path(tmp) / "y.npy"), overrides, run_dir=Path(tmp) / "run")
        network = len((Path(tmp) / "run" / "field.nir").read_bytes()) - len(field.residual)
    residual = B.decode(field.residual, y.size)
    pred = field._network_grid().reshape(y.shape).astype(np.float64)
    r = bound.g(y) - bound.g(pred)
    rows = {
        "network + residual, direct (nir today)": network + coded(np.rint(r / cell)),
        "network + residual after Lorenzo (open-loop)": network + coded(np.rint((r - lorenzo(r)) / cell)),
        "signal's map after Lorenzo, no network (open-loop)": coded(np.rint((bound.g(y) - lorenzo(bound.g(y))) / cell)),
    }
    from numcodecs_wasm_sz3 import Sz3

    rows["SZ3 on the map (its own predictors)"] = len(
        Sz3(eb_mode="abs", eb_abs=bound.step).encode(bound.g(y).astype(np.float32))
    )
    print(f"sources3d {args.n}^3, rel {args.rel}, floor {args.floor}, {args.steps} steps; network {network:,} B; "
          f"stored residual {len(field.residual):,} B ({residual.exceptions.size} exceptions)")  # fmt: skip
    for name, n in rows.items():
        print(f"  {name:55s} {n:>10,} B  ({8 * n / y.size:.2f} bits/sample)")


if __name__ == "__main__":
    main()
