#!/usr/bin/env python
"""Write the committed context-coded residuals that pin the context coder's format
(tests/data/legacy/context/, tests/test_legacy.py): one stream per grid rank (1-D to 4-D, odd
sizes), blocks of every mode mixed, values random, spiky and heavy-tailed. The inputs are
regenerated from :func:`inputs` (seeded); each stream's decoded offsets are pinned by their
SHA-256 in ``hashes.json``, so a later nir must decode the stream to the same float64 bits.

    python scripts/make_legacy_context.py        # the committed files were written at commit 92544c0

Run once; rerunning it with a later nir writes that nir's streams (the test would then pin those).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "tests" / "data" / "legacy" / "context"
SHAPES = {"1d": (3001,), "2d": (41, 53), "3d": (12, 17, 11), "4d": (5, 6, 7, 9)}
CELL = 0.37


def inputs(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The network's residual, the signal's map (flat) and the block modes of a fixture."""
    from nir.codec import context

    rng = np.random.default_rng(len(shape))
    n = int(np.prod(shape))
    net = rng.laplace(scale=3, size=n)
    net[rng.integers(0, n, 5)] = 4e3  # spikes
    net[: n // 4] = rng.standard_cauchy(n // 4).clip(-1e4, 1e4)  # a heavy-tailed stretch
    own = np.cumsum(rng.normal(size=n))
    modes = rng.integers(0, 3, context.block_count(shape)).astype(np.uint8)
    return net, own, modes


def digest(offset: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(offset, "<f8").tobytes()).hexdigest()


def main() -> None:
    from nir.codec import context

    OUT.mkdir(parents=True, exist_ok=True)
    hashes = {}
    for name, shape in SHAPES.items():
        net, own, modes = inputs(shape)
        data, offset, _ = context.encode(net, own, modes, shape, CELL)
        (OUT / f"{name}.bin").write_bytes(data)
        hashes[name] = digest(offset)
    (OUT / "hashes.json").write_text(json.dumps(hashes, indent=1) + "\n")


if __name__ == "__main__":
    main()
