"""TensorBoard callbacks: reconstructions and progress lines. Rank 0 only."""

from __future__ import annotations

import math
import sys
import time

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_only

from nir.signal import Grid


def preview_indices(shape: tuple[int, ...], max_side: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Flat indices of an evenly strided sub-grid with at most ``max_side`` samples per axis."""
    axes = [np.unique(np.linspace(0, n - 1, min(n, max_side)).round().astype(np.int64)) for n in shape]
    mesh = np.meshgrid(*axes, indexing="ij")
    flat = np.ravel_multi_index([m.ravel() for m in mesh], shape)
    return torch.from_numpy(flat), tuple(len(a) for a in axes)


def _colormap(x: np.ndarray, name: str = "magma") -> np.ndarray:
    """``x`` in [0, 1] -> RGB uint8 via matplotlib's colormap."""
    import matplotlib

    return (matplotlib.colormaps[name](np.clip(x, 0, 1))[..., :3] * 255).astype(np.uint8)


class ReconstructionLogger(pl.Callback):
    """Logs the reconstruction, the target (once) and an error map after each validation.

    2-D signals only here (images); the grid is strided to at most ``max_side`` pixels per axis.
    Values are shown over ``data.value_range``; the error map shows ``|pred - target|`` averaged
    over channels, scaled so that white-hot (1.0 of the colormap) is ``error_scale`` of the range.
    """

    def __init__(self, max_side: int = 512, error_scale: float = 0.1) -> None:
        self.max_side, self.error_scale = max_side, error_scale
        self._target_logged = False

    @rank_zero_only
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.logger is None:
            return
        signal = pl_module.signal
        if signal.ndim != 2:
            return
        idx, shape = preview_indices(signal.shape, self.max_side)
        y, _, grid, _ = pl_module.data()
        idx = idx.to(pl_module.device)
        with torch.no_grad():
            pred = pl_module.field(grid.coords(idx)).float().cpu().numpy().reshape(*shape, -1)
        target = y[idx].float().cpu().numpy().reshape(*shape, -1)
        lo, hi = signal.meta.get("value_range", (float(target.min()), float(target.max())))
        tb = trainer.logger.experiment
        step = trainer.global_step

        def as_img(a: np.ndarray) -> np.ndarray:
            a = np.clip((a - lo) / (hi - lo), 0, 1)
            return a if a.shape[-1] == 3 else np.repeat(a[..., :1], 3, -1)

        if not self._target_logged:
            tb.add_image("image/target", as_img(target), step, dataformats="HWC")
            self._target_logged = True
        tb.add_image("image/reconstruction", as_img(pred), step, dataformats="HWC")
        err = np.abs(pred - target).mean(-1) / ((hi - lo) * self.error_scale)
        tb.add_image("image/abs_error", _colormap(err), step, dataformats="HWC")


class ProgressPrinter(pl.Callback):
    """One plain line per validation (for CI logs and multiruns, where bars are off)."""

    def __init__(self) -> None:
        self._t0 = time.perf_counter()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0 = time.perf_counter()

    @rank_zero_only
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        m = trainer.callback_metrics
        loss = m.get("train/loss")
        psnr = m.get("val/psnr")
        parts = [f"step {trainer.global_step}/{trainer.max_steps}", f"{time.perf_counter() - self._t0:7.1f}s"]
        if loss is not None:
            parts.append(f"loss {float(loss):.3e}")
        if psnr is not None and math.isfinite(float(psnr)):
            parts.append(f"psnr {float(psnr):.2f} dB")
        print("  ".join(parts), file=sys.stderr if trainer.progress_bar_callback else sys.stdout, flush=True)


class FinalMetrics(pl.Callback):
    """At the end of training, before the logger closes: full-grid fp32 metrics, logged as the
    ``hp/*`` scalars that the HPARAMS tab shows, and kept in ``self.metrics`` for ``train``."""

    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}
        self._t0 = time.perf_counter()

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0 = time.perf_counter()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.metrics = pl_module.evaluate()
        self.metrics["fit_time_s"] = time.perf_counter() - self._t0
        if trainer.is_global_zero and trainer.logger is not None:
            for name, value in self.metrics.items():
                trainer.logger.experiment.add_scalar(f"hp/{name}", value, trainer.global_step)
