"""Losses: each a small ``nn.Module`` ``(pred, target) -> scalar``, always computed in fp32.

``pred`` and ``target`` are in the network's output space (after the value transform). Autocast
is disabled inside every loss and both inputs are cast to fp32, so bf16-mixed and 16-mixed
training never evaluate a loss in reduced precision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nir.errors import positive_float


class _FP32Loss(nn.Module):
    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        with torch.autocast(pred.device.type, enabled=False):
            return self.compute(pred.float(), target.float())

    def compute(self, pred: Tensor, target: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class MSE(_FP32Loss):
    """Mean squared error, ``mean((p - y)^2)``."""

    def compute(self, pred: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(pred, target)


class L1(_FP32Loss):
    """Mean absolute error, ``mean(|p - y|)``."""

    def compute(self, pred: Tensor, target: Tensor) -> Tensor:
        return F.l1_loss(pred, target)


class Huber(_FP32Loss):
    """Huber loss: quadratic for ``|p - y| < delta``, linear beyond (``torch.nn.functional.huber_loss``)."""

    def __init__(self, delta: float = 0.1) -> None:
        super().__init__()
        self.delta = positive_float("loss.delta", delta)

    def compute(self, pred: Tensor, target: Tensor) -> Tensor:
        return F.huber_loss(pred, target, delta=self.delta)
