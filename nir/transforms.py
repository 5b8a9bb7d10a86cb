"""Invertible value transforms: the network predicts ``t = T(y)``, the field answers ``y = T^-1(t)``.

Each transform is an ``nn.Module`` whose statistics are buffers, so a saved field carries them.
``fit(values)`` sets the statistics from the training data (fp64 reductions), once, before
training. All maths is done in fp32 (autocast disabled).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Identity(nn.Module):
    """``t = y``. For images scaled to a known range."""

    def fit(self, values: Tensor) -> "Identity":
        return self

    def forward(self, y: Tensor) -> Tensor:
        return y

    def inverse(self, t: Tensor) -> Tensor:
        return t


class _Fitted(nn.Module):
    """Base for transforms with data statistics: buffers take the saved shapes on load."""

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: D401
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

    def fit(self, values: Tensor) -> "Standardize":
        v = values.reshape(-1, values.shape[-1]).double()
        self.mean = v.mean(0).float()
        self.std = v.std(0).clamp_min(1e-12).float()
        return self

    def forward(self, y: Tensor) -> Tensor:
        return (y.float() - self.mean) / self.std

    def inverse(self, t: Tensor) -> Tensor:
        return t.float() * self.std + self.mean
