"""Fields saved by an earlier nir (tests/data/legacy, written before the structure change of
issue 11; the hash grid's, a 3-D hash grid with hashed levels, written for issue 28 to pin the
spatial hash) load and answer exactly as they did then."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nir import load_field

LEGACY = Path(__file__).resolve().parent / "data" / "legacy"


@pytest.mark.parametrize(
    "name", ["siren_image.safetensors", "fourier_log3d.safetensors", "hashgrid_log3d.safetensors", "siren_tiny.ckpt"]
)
def test_legacy_field_gives_the_same_outputs(name: str) -> None:
    field = load_field(LEGACY / name)
    coords = torch.from_numpy(np.load(LEGACY / "coords.npy"))[:, : field.in_dim]
    expected = np.load(LEGACY / (name.split(".")[0] + ("_ckpt" if name.endswith(".ckpt") else "") + "_out.npy"))
    with torch.no_grad():
        got = field(coords).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


def test_a_legacy_image_field_is_still_an_image():
    """Fields saved before the spec carried ``is_image`` get it from their reader's label."""
    assert load_field(LEGACY / "siren_image.safetensors").is_image
    assert not load_field(LEGACY / "fourier_log3d.safetensors").is_image


COMPACT = sorted(p.stem for p in (LEGACY / "nir").glob("*.nir"))
#: the stored settings each committed compact file was written with (scripts/make_legacy_nir.py)
SAVED_WITH = {
    "siren_float32": ("float32", "row", "auto"),
    "siren_float16": ("float16", "row", "auto"),
    "siren_int8_raw": ("int8", "row", "raw"),
    "siren_int8_ans": ("int8", "row", "ans"),
    "siren_int8_zstd": ("int8", "row", "zstd"),
    "siren_int4_tensor": ("int4", "tensor", "auto"),
    "hashgrid_int6_ans": ("int6", "row", "ans"),
}


def test_every_committed_compact_file_is_pinned():
    assert sorted([*SAVED_WITH, "siren_bounded_rel"]) == COMPACT


@pytest.mark.parametrize("name", sorted(SAVED_WITH))
def test_a_committed_compact_file_loads_to_its_values_and_saves_to_its_bytes(name: str, tmp_path: Path) -> None:
    """The ``.nir`` format's bytes, pinned: each stored precision and integer coder (written at
    commit 6cdebfb by scripts/make_legacy_nir.py) answers as it did and is written again bit for bit."""
    path = LEGACY / "nir" / f"{name}.nir"
    field = load_field(path)
    coords = torch.from_numpy(np.load(LEGACY / "coords.npy"))[:, : field.in_dim]
    with torch.no_grad():  # the parameters are exact (the bytes below); the float32 evaluation may differ in
        # the last bit on another CPU's kernels (seen: 1.2e-7 relative on an AMX machine)
        np.testing.assert_allclose(field(coords).numpy(), np.load(LEGACY / "nir" / f"{name}.npy"), rtol=1e-6, atol=1e-7)
    dtype, scale, coder = SAVED_WITH[name]
    assert field.save(tmp_path / "again.nir", dtype, scale, coder=coder).read_bytes() == path.read_bytes()


def test_a_committed_bounded_file_answers_its_grid_and_saves_to_its_bytes(tmp_path: Path) -> None:
    path = LEGACY / "nir" / "siren_bounded_rel.nir"
    field = load_field(path)
    assert field.residual is not None
    np.testing.assert_allclose(field.sample(), np.load(LEGACY / "nir" / "siren_bounded_rel.npy"), rtol=1e-6, atol=1e-7)
    assert field.save(tmp_path / "again.nir", "float32").read_bytes() == path.read_bytes()


def _context_fixtures():
    """scripts/make_legacy_context.py: the fixtures' inputs and their digest."""
    path = Path(__file__).resolve().parent.parent / "scripts" / "make_legacy_context.py"
    spec = importlib.util.spec_from_file_location("make_legacy_context", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["1d", "2d", "3d", "4d"])
def test_a_committed_context_residual_decodes_to_its_values(name: str) -> None:
    """The context coder's streams written before the compiled loop and coder (scripts/make_legacy_context.py,
    commit 92544c0) decode to the same float64 bits, each within half a cell of its value."""
    from nir.codec import context

    fx = _context_fixtures()
    shape = fx.SHAPES[name]
    net, own, modes = fx.inputs(shape)
    back, on_map = context.decode((LEGACY / "context" / f"{name}.bin").read_bytes(), int(np.prod(shape)), legacy=True)
    assert np.array_equal(on_map, context.map_mask(modes, shape))
    assert np.abs(back - np.where(on_map, own, net)).max() <= fx.CELL / 2 * (1 + 1e-12)
    hashes = json.loads((LEGACY / "context" / "hashes.json").read_text())
    assert fx.digest(back) == hashes[name]
