"""Invertible value transforms: the network predicts ``t = T(y)``, the field answers ``y = T^-1(t)``.

Each transform is an ``nn.Module`` whose statistics are buffers, so a saved field carries them.
``fit(values)`` sets the statistics from the training data (fp64 reductions), once, before
training. All maths is done in fp32 (autocast disabled).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Identity(nn.Module):
    """``t = y``. For images scaled to a known range."""

    def fit(self, values: Tensor) -> Identity:
        return self

    def forward(self, y: Tensor) -> Tensor:
        return y

    def inverse(self, t: Tensor) -> Tensor:
        return t


class _Fitted(nn.Module):
    """Base for transforms with data statistics: buffers take the saved shapes on load."""

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name, buf in list(self._buffers.items()):
            key = prefix + name
            if key in state_dict and buf is not None and state_dict[key].shape != buf.shape:
                self._buffers[name] = torch.empty_like(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class Standardize(_Fitted):
    """``t = (y - mean) / std`` per channel, statistics from the training data."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(1))
        self.register_buffer("std", torch.ones(1))

    def fit(self, values: Tensor) -> Standardize:
        v = values.reshape(-1, values.shape[-1]).double()
        self.mean = v.mean(0).float()
        self.std = v.std(0).clamp_min(1e-12).float()
        return self

    def forward(self, y: Tensor) -> Tensor:
        return (y.float() - self.mean) / self.std

    def inverse(self, t: Tensor) -> Tensor:
        return t.float() * self.std + self.mean


def floor_from_data(values: Tensor, rel_min: float) -> float:
    """The documented floor rule (docs/long-tail.md):

        floor = max(0.1 * p1(|y| > 0),  rel_min * max|y|)

    with p1 the 1st percentile of the non-zero magnitudes: one decade below almost every
    sample, so relative accuracy is asked for down to the smallest values that matter, but
    never more than ``1 / rel_min`` below the peak (1e7 for log transforms, where fp32 still
    resolves it; 1e5 for linear relative losses, whose weights span floor^-2).
    """
    a = values.detach().reshape(-1).float().abs()  # a copy of the sample: the statistics' one full-size array
    top = float(a.max()) if a.numel() else 0.0
    nz = a[a > 0].cpu().numpy()
    del a
    if nz.size == 0:
        return max(top * rel_min, 1e-12)
    k = max(1, int(0.01 * nz.size))
    nz.partition(k - 1)  # in place: no sorted copy, no index array
    p1 = float(nz[k - 1])
    return max(0.1 * p1, rel_min * top, 1e-30)


class Log(_Fitted):
    """Standardised log space: ``t = (log(y + floor) - mu) / sigma``; inverse
    ``y = exp(clamp(sigma t + mu, log(floor) - 5, log(max + floor) + 5)) - floor``.

    The network then fits every decade with the same relative weight. ``mu, sigma`` per channel
    from the data; ``floor`` from :func:`floor_from_data` (``rel_min = 1e-7``) unless given.
    The clamp bounds the exponent to 5 e-folds outside the data (fp32 exp overflows at 88.7),
    and is inactive on the data's own range, so the inverse is exact there.
    Requires ``y >= 0``.
    """

    def __init__(self, floor: float | None = None) -> None:
        super().__init__()
        if floor is not None:
            from nir.errors import positive_float

            positive_float("transform.floor", floor)
        self.floor_arg = floor
        self.register_buffer("floor", torch.tensor(float(floor or 1.0)))
        self.register_buffer("mu", torch.zeros(1))
        self.register_buffer("sigma", torch.ones(1))
        self.register_buffer("log_lo", torch.tensor(-30.0))
        self.register_buffer("log_hi", torch.tensor(30.0))

    def fit(self, values: Tensor) -> Log:
        from nir.errors import NirError

        v = values.reshape(-1, values.shape[-1])
        vmin = float(v.min())
        if vmin < 0:
            raise NirError(
                f"transform log needs values >= 0, but the data's minimum is {vmin:.3g}; use transform=asinh or shift the data"
            )
        f = self.floor_arg if self.floor_arg is not None else floor_from_data(v, 1e-7)
        logs = v.double().add_(f).log_()  # one float64 copy
        self.floor = torch.tensor(float(f))
        self.mu = logs.mean(0).float()
        self.sigma = logs.std(0).clamp_min(1e-6).float() if v.shape[0] > 1 else torch.ones(v.shape[1])
        self.log_lo = torch.tensor(math.log(f) - 5.0)
        self.log_hi = torch.tensor(math.log(float(v.max()) + f) + 5.0)
        return self

    def forward(self, y: Tensor) -> Tensor:
        return (torch.log(y.float() + self.floor) - self.mu) / self.sigma

    def inverse(self, t: Tensor) -> Tensor:
        with torch.autocast(t.device.type, enabled=False):
            z = torch.clamp(t.float() * self.sigma + self.mu, self.log_lo, self.log_hi)
            return torch.exp(z) - self.floor


class Asinh(_Fitted):
    """``t = (asinh(y / scale) - mu) / sigma``: linear for ``|y| << scale``, logarithmic above.

    Accepts negative values. ``scale`` from :func:`floor_from_data` (``rel_min = 1e-7``) unless
    given: below it errors are absolute, above it relative.
    """

    def __init__(self, scale: float | None = None) -> None:
        super().__init__()
        if scale is not None:
            from nir.errors import positive_float

            positive_float("transform.scale", scale)
        self.scale_arg = scale
        self.register_buffer("scale", torch.tensor(float(scale or 1.0)))
        self.register_buffer("mu", torch.zeros(1))
        self.register_buffer("sigma", torch.ones(1))

    def fit(self, values: Tensor) -> Asinh:
        v = values.reshape(-1, values.shape[-1])
        s = self.scale_arg if self.scale_arg is not None else floor_from_data(v, 1e-7)
        a = self._f(v.double().div_(s))
        self.scale = torch.tensor(float(s))
        self.mu = a.mean(0).float()
        self.sigma = a.std(0).clamp_min(1e-6).float() if v.shape[0] > 1 else torch.ones(v.shape[1])
        return self

    @staticmethod
    def _f(x: Tensor) -> Tensor:
        return torch.asinh(x)

    @staticmethod
    def _f_inv(u: Tensor) -> Tensor:
        return torch.sinh(u)

    def forward(self, y: Tensor) -> Tensor:
        return (self._f(y.float() / self.scale) - self.mu) / self.sigma

    def inverse(self, t: Tensor) -> Tensor:
        with torch.autocast(t.device.type, enabled=False):
            return self._f_inv(t.float() * self.sigma + self.mu) * self.scale


class SignedLog(Asinh):
    """``t = (sign(y) log(1 + |y| / scale) - mu) / sigma``: the signed log, linear for
    ``|y| << scale`` and logarithmic above, as :class:`Asinh` (which is ``log(2|y|/scale)`` far
    from zero and smooth through it; this one has a kink in its curvature at zero). Kept for the
    comparison in docs/long-tail.md ("Zeros and values below zero"); ``scale`` by the same rule."""

    @staticmethod
    def _f(x: Tensor) -> Tensor:
        return torch.sign(x) * torch.log1p(x.abs())

    @staticmethod
    def _f_inv(u: Tensor) -> Tensor:
        return torch.sign(u) * torch.expm1(u.abs())


class Softplus(_Fitted):
    """Non-negative output for relative losses: ``y = scale * softplus(t)``,
    ``t = log(expm1(y / scale))``. ``scale`` = the data's max per channel, so the network's
    output stays O(1); the output can approach 0 but never cross it (no division by a
    negative prediction in ``rel_l2``). Requires ``y >= 0``; ``y = 0`` maps to a large negative t.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", torch.ones(1))

    def fit(self, values: Tensor) -> Softplus:
        from nir.errors import NirError

        v = values.reshape(-1, values.shape[-1])
        if float(v.min()) < 0:
            raise NirError(f"transform softplus needs values >= 0, but the data's minimum is {float(v.min()):.3g}")
        self.scale = v.abs().amax(0).clamp_min(1e-30).float()
        return self

    def forward(self, y: Tensor) -> Tensor:
        u = (y.float() / self.scale).clamp_min(1e-30)
        return torch.where(u > 20, u, torch.log(torch.expm1(u)))

    def inverse(self, t: Tensor) -> Tensor:
        with torch.autocast(t.device.type, enabled=False):
            return self.scale * F.softplus(t.float())
