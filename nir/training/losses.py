"""Losses: each a small ``nn.Module`` ``(pred, target) -> scalar``, always computed in fp32.

A loss declares the space it compares in (``space``): ``"transformed"`` (the network's raw
output against the transformed target; the default) or ``"signal"`` (the field's answer in
signal units against the data). Autocast is disabled inside every loss and both inputs are cast
to fp32, so bf16-mixed and 16-mixed training never evaluate a loss in reduced precision.

:func:`check_setup` refuses, before training, the combinations known to blow up
(docs/long-tail.md explains each).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nir.errors import positive_float


class _FP32Loss(nn.Module):
    space = "transformed"
    needs_log_transform = False

    def fit(self, values: Tensor) -> _FP32Loss:
        """Set data-dependent constants (floors) from the training values; default: none."""
        return self

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


class LogMSE(MSE):
    """MSE in standardised log space: the network predicts ``(log(y + floor) - mu) / sigma``
    (``transform=log``, which this option selects) and the field answers ``y``. Every decade
    gets the same relative weight; no log of a prediction is ever taken."""

    needs_log_transform = True


class LogHuber(Huber):
    """Huber loss in standardised log space (``transform=log``): robust to the few samples whose
    log error is large (zeros below the floor, sharp peaks)."""

    needs_log_transform = True


class RelL2(_FP32Loss):
    """Relative L2 with a stop-gradient denominator (Noise2Noise; RawNeRF; tiny-cuda-nn RelativeL2):

        L = mean( ((p - y) / (sg(p) + floor))^2 )

    in signal units, with ``p >= 0`` from a non-negative output (``transform=softplus``).
    Its minimiser is E[y] for noisy targets (unbiased, unlike log losses). ``floor`` from
    :func:`nir.transforms.floor_from_data` with ``rel_min = 1e-5`` unless given.
    """

    space = "signal"

    def __init__(self, floor: float | None = None) -> None:
        super().__init__()
        if floor is not None:
            positive_float("loss.floor", floor)
        self.floor_arg = floor
        self.floor = float(floor) if floor is not None else None

    def fit(self, values: Tensor) -> RelL2:
        from nir.transforms import floor_from_data

        if self.floor_arg is None:
            self.floor = floor_from_data(values, 1e-5)
        return self

    def compute(self, pred: Tensor, target: Tensor) -> Tensor:
        return (((pred - target) / (pred.detach().abs() + self.floor)) ** 2).mean()


class RelL2TCNN(_FP32Loss):
    """Parity with tiny-cuda-nn's ``RelativeL2``: ``mean((p - y)^2 / (sg(p)^2 + 0.01))`` with its
    fixed epsilon 0.01, in signal units, so results can be compared with tcnn-based code. (tcnn
    assumes data of order 1; on data up to hundreds this floor is 0.1 absolute.)"""

    space = "signal"
    floor = 0.1  # sqrt(0.01), for check_setup

    def __init__(self, epsilon: float = 0.01) -> None:
        super().__init__()
        self.epsilon = positive_float("loss.epsilon", epsilon)
        self.floor = self.epsilon**0.5

    def compute(self, pred: Tensor, target: Tensor) -> Tensor:
        return ((pred - target) ** 2 / (pred.detach() ** 2 + self.epsilon)).mean()


def check_setup(loss: nn.Module, transform: nn.Module, precision: str) -> None:
    """Refuse loss / transform / precision combinations that diverge, with the reason.

    1. A log loss needs ``transform=log``: nir never takes the log of a linear output (NaN for
       the ~half of outputs that are negative at initialisation).
    2. A loss in signal units with the prediction in a denominator needs a non-negative output
       (``transform=softplus`` or ``log``): ``sg(p) + floor`` can reach 0 for p = -floor and
       the weight 1/(...)^2 explodes.
    3. A floor must survive squaring in fp32 (every loss runs in fp32, whatever the training
       precision): ``floor^2`` below fp32's smallest normal (1.2e-38) is refused.
    """
    from nir.errors import NirError
    from nir.transforms import Log, Softplus

    lname, tname = type(loss).__name__, type(transform).__name__
    if getattr(loss, "needs_log_transform", False) and not isinstance(transform, Log):
        raise NirError(
            f"loss {lname} compares log values and needs transform=log, got transform={tname}: "
            "a log of an unconstrained linear output is NaN wherever it is negative"
        )
    if getattr(loss, "space", "transformed") == "signal":
        if not isinstance(transform, (Softplus, Log)):
            raise NirError(
                f"loss {lname} divides by the prediction and needs a non-negative output (transform=softplus or log), "
                f"got transform={tname}: a linear output crosses zero and the relative weight explodes"
            )
        floor = getattr(loss, "floor", None)
        if floor is not None and floor**2 < torch.finfo(torch.float32).tiny:
            raise NirError(
                f"loss floor {floor:g} underflows when squared in fp32 (precision {precision}); use a floor >= 1e-19"
            )


class Auto(nn.Module):
    """``loss=auto``: a placeholder that :func:`nir.run.resolve.choose_loss` replaces, once the signal is read,
    with ``log_mse`` (and ``transform=log``) for positive data spanning at least ``min_decades``
    decades, ``asinh_mse`` (and ``transform=asinh``) for long-tailed data with zeros or negative
    values, else ``mse`` (:func:`auto_choice`). Never trains itself."""

    def __init__(self, min_decades: float = 3.0) -> None:
        super().__init__()
        self.min_decades = positive_float("loss.min_decades", min_decades)

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:  # pragma: no cover - replaced before training
        raise RuntimeError("loss=auto must be resolved with nir.run.resolve.choose_loss before training")


def auto_choice(absmin: float, absmax: float, minimum: float, min_decades: float, floor: float) -> tuple[str, str]:
    """``(loss option, reason)`` for ``loss=auto`` from the data's extremes and metric floor.

    Long-tailed means the magnitudes, not the sign (docs/long-tail.md): positive data spanning
    ``absmax / absmin >= 10^min_decades`` -> ``log_mse`` (``transform=log``), as measured on the
    presets. Data that reach zero or below -> ``asinh_mse`` (``transform=asinh`` with the floor
    as its scale) when ``|y|`` spans ``min_decades`` from ``10 x floor`` (the 1st percentile of
    the non-zero magnitudes, unless the floor is capped at 1e-7 of the peak) to its maximum,
    whatever share of it is zero or slightly negative; else ``mse``."""
    if minimum > 0:
        decades = math.log10(absmax / absmin)
        if decades >= min_decades:
            return "log_mse", f"values are positive and span {decades:.1f} decades ({absmin:.3g} .. {absmax:.3g})"
        return "mse", f"values span {decades:.1f} decades (< {min_decades:g})"
    low = 10.0 * floor
    decades = math.log10(absmax / low) if absmax > low else 0.0
    what = f"values reach {minimum:.3g} and |y| spans {decades:.1f} decades ({low:.3g} .. {absmax:.3g})"
    if decades >= min_decades:
        return "asinh_mse", f"{what}: long-tailed with zeros or negatives"
    return "mse", f"{what} (< {min_decades:g})"
