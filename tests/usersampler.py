"""A sampling that is not part of nir, built from a config path (``sampling._target_=...``):
batches drawn only from the even positions, in order, and for a streamed signal the block
cache's rows grouped into even and odd positions with every batch row from the even group.
It implements the protocol of :mod:`nir.data.samplers` and nothing else."""

from __future__ import annotations

import torch


class EvenOnly:
    def __init__(self, stride: int = 2) -> None:
        self.stride = int(stride)

    def __str__(self) -> str:
        return f"even_only(stride={self.stride})"

    def check(self, signal) -> None:
        return None

    def sampler(self, magnitude, n, batch, device, seed, stats):
        return _Cycle(torch.arange(0, n, self.stride, device=device), batch)

    def groups(self, raw, stats):
        return None  # streamed signals: uniform over the cache (kept simple)

    def n_groups(self, stats) -> int:
        return 1

    def shares(self, counts, batch):
        return torch.tensor([batch])


class _Cycle:
    full = False

    def __init__(self, pool: torch.Tensor, batch: int) -> None:
        self.pool, self.batch, self.pos = pool, min(batch, pool.numel()), 0

    def next(self) -> torch.Tensor:
        idx = self.pool[(torch.arange(self.batch, device=self.pool.device) + self.pos) % self.pool.numel()]
        self.pos = (self.pos + self.batch) % self.pool.numel()
        return idx

    def state_dict(self) -> dict[str, int]:
        return {"epoch": -1, "pos": self.pos}

    def load_state_dict(self, state) -> None:
        self.pos = int(state["pos"])
