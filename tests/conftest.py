"""Shared fixtures: tiny signals and Hydra-composed configs (the same configs the CLI uses)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from nir.run.config import CONF_DIR

warnings.filterwarnings("ignore", ".*LeafSpec.*", FutureWarning)
ROOT = Path(__file__).resolve().parent.parent
# keep the 2-core CI machine responsive: under pytest-xdist (make test runs one worker per core)
# each worker computes with one thread, so workers do not oversubscribe the cores; alone, two
os.environ.setdefault("OMP_NUM_THREADS", "1" if os.environ.get("PYTEST_XDIST_WORKER") else "2")
# the grid encoding's Triton kernels run in Triton's interpreter where no CUDA device is (set before
# nir.fields.grid_triton is imported: @triton.jit reads it when the kernels are defined)
if "TRITON_INTERPRET" not in os.environ:
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"


def smooth_image(h: int = 32, w: int = 40, channels: int = 3, seed: int = 0) -> np.ndarray:
    """A smooth, low-frequency uint8 test image (easy to fit, not constant)."""
    rng = np.random.default_rng(seed)
    y, x = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    chans = []
    for _ in range(channels):
        a, b, p = rng.uniform(1, 3, 3)
        chans.append(0.5 + 0.4 * np.sin(a * np.pi * x + p) * np.cos(b * np.pi * y))
    return (np.stack(chans, -1) * 255).round().astype(np.uint8)


@pytest.fixture
def tiny_png(tmp_path: Path) -> Path:
    import imageio.v3 as iio

    p = tmp_path / "tiny.png"
    iio.imwrite(p, smooth_image(), extension=".png")
    return p


def make_cfg(overrides: list[str]):
    """Compose ``conf/train.yaml`` with overrides, as ``nir-train`` would."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def tiny_overrides(image: Path, steps: int = 30) -> list[str]:
    return [
        f"data.path={image}",
        "model.hidden_dim=32",
        "model.num_layers=1",
        f"trainer.max_steps={steps}",
        "trainer.val_check_interval=10",
        "trainer.enable_progress_bar=false",
        "batch_size=512",
        "trainer.precision=32",
    ]
