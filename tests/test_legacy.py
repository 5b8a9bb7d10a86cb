"""Fields saved by an earlier nir (tests/data/legacy, written before the structure change of
issue 11; the hash grid's, a 3-D hash grid with hashed levels, written for issue 28 to pin the
spatial hash) load and answer exactly as they did then."""

from __future__ import annotations

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
