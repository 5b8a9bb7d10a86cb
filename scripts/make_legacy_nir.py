#!/usr/bin/env python
"""Write the committed compact field files that pin the ``.nir`` format's bytes
(tests/data/legacy/nir/, tests/test_legacy.py): each stored precision and integer coder, a grid
table, and an error-bounded field with its residual. Each file comes with the answers of the
field it holds (``<name>.npy``: on tests/data/legacy/coords.npy, and for the bounded field on its
training grid, residual applied), so a later nir must load it to the same values and save it
again to the same bytes.

    python scripts/make_legacy_nir.py OUT_DIR     # the committed files were written at commit 6cdebfb

Run once; rerunning it with a later nir writes that nir's files (the test would then pin those).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

import nir

ROOT = Path(__file__).resolve().parent.parent
COORDS = ROOT / "tests" / "data" / "legacy" / "coords.npy"

#: name: (trained field, stored dtype, int8 scale, coder)
FILES = {
    "siren_float32": ("siren", "float32", "row", "auto"),
    "siren_float16": ("siren", "float16", "row", "auto"),
    "siren_int8_raw": ("siren", "int8", "row", "raw"),
    "siren_int8_ans": ("siren", "int8", "row", "ans"),
    "siren_int8_zstd": ("siren", "int8", "row", "zstd"),
    "siren_int4_tensor": ("siren", "int4", "tensor", "auto"),
    "hashgrid_int6_ans": ("hashgrid", "int6", "row", "ans"),
}


def _signal() -> np.ndarray:
    y, x = np.meshgrid(np.linspace(0, 1, 24), np.linspace(0, 1, 20), indexing="ij")
    return (0.01 + 50 * np.exp(-40 * ((x - 0.6) ** 2 + (y - 0.4) ** 2)) + 0.5 * x).astype(np.float32)


def _fit(tmp: Path, name: str, *overrides: str) -> nir.Field:
    quiet = ["log.images=false", "trainer.enable_progress_bar=false", "trainer.precision=32"]
    field, _ = nir.fit(_signal(), [*quiet, *overrides], run_dir=tmp / name, steps=30)
    return field


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    coords = torch.from_numpy(np.load(COORDS))[:, :2]
    with tempfile.TemporaryDirectory() as tmp:
        fields = {
            "siren": _fit(Path(tmp), "siren", "model=siren", "model.hidden_dim=12", "model.num_layers=1"),
            "hashgrid": _fit(
                Path(tmp),
                "hashgrid",
                "model=hashgrid",
                "model.encoding.log2_hashmap_size=8",
                "model.encoding.n_levels=4",
                "model.hidden_dim=8",
            ),  # fmt: skip
            "bounded": _fit(Path(tmp), "bounded", "model=siren", "model.hidden_dim=8", "bound.rel=0.01"),
        }
        for name, (which, dtype, scale, coder) in FILES.items():
            path = fields[which].save(out / f"{name}.nir", dtype, scale, coder=coder)
            with torch.no_grad():
                np.save(out / f"{name}.npy", nir.load_field(path)(coords).numpy())
        bounded = Path(tmp) / "bounded" / "field.nir"
        (out / "siren_bounded_rel.nir").write_bytes(bounded.read_bytes())
        np.save(out / "siren_bounded_rel.npy", nir.load_field(bounded).sample())
    print("\n".join(f"{p.name} {p.stat().st_size}" for p in sorted(out.iterdir())))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
