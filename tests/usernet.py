"""A network that is not part of nir: the user's own class, for the trusted-modules tests."""

from torch import nn


class TinyNet(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, width: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(in_dim, width), nn.Tanh(), nn.Linear(width, out_dim))

    def forward(self, x):
        return self.body(x)
