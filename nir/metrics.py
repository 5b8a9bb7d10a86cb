"""Metrics with their conventions stated.

PSNR (``psnr``): 10 log10(R^2 / MSE) over every sample and channel of the whole grid, in signal
units, where R is the data range: ``hi - lo`` of ``data.value_range`` for images (1.0 by
default, the same as 8-bit PSNR on [0, 255] pixels), and ``max - min`` of the target for other
signals ("range PSNR", the convention of neural volume compression papers). Computed with
torchmetrics, whose sum-of-squares state is mergeable across processes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchmetrics.image import PeakSignalNoiseRatio

from nir.signal import Signal


def data_range(signal: Signal) -> float:
    """The R of PSNR for ``signal`` (see module doc)."""
    vr = signal.meta.get("value_range")
    if vr is not None:
        return float(vr[1] - vr[0])
    v = signal.values
    return float(v.max() - v.min()) or 1.0


class GridMetrics(nn.Module):
    """Accumulates metrics over chunks of the whole grid; ``compute()`` -> ``{name: tensor}``."""

    def __init__(self, signal: Signal) -> None:
        super().__init__()
        self.range = data_range(signal)
        self.psnr = PeakSignalNoiseRatio(data_range=self.range)

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        self.psnr.update(pred.float(), target.float())

    def compute(self) -> dict[str, Tensor]:
        return {"psnr": self.psnr.compute()}

    def reset(self) -> None:
        self.psnr.reset()
