"""``sampling=uniform``: every training sample alike, in shuffled epochs (:class:`IndexSampler`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor


class Uniform:
    """``sampling=uniform``: every sample alike (:class:`IndexSampler`; streamed signals: uniform
    draws over the block cache). Any signal."""

    def __str__(self) -> str:
        return "uniform"

    def check(self, signal: Any) -> None:
        return None

    def sampler(
        self, magnitude: Callable[[], Tensor], n: int, batch: int, device: torch.device, seed: int, stats: Any
    ) -> IndexSampler:
        return IndexSampler(n, batch, device, seed=seed)

    def groups(self, raw: Tensor, stats: Any) -> Tensor | None:
        return None  # one group: the cache draws uniformly over its rows

    def n_groups(self, stats: Any) -> int:
        return 1

    def shares(self, counts: Tensor, batch: int) -> Tensor:
        return torch.tensor([batch])


class IndexSampler:
    """Random flat indices, drawn on the device: epochs of a shuffled permutation, sliced in batches.

    Batches run on across epoch boundaries (the last batch of an epoch is completed from the next
    permutation), so every batch has the same size and after ``k * n`` samples every sample has
    been drawn exactly ``k`` times. When the batch covers the whole signal, every step is the
    full grid. Epoch ``e``'s permutation comes from a generator seeded with ``seed + e``, so the
    whole state is ``(epoch, pos)``: it goes into checkpoints and a resumed run draws the same
    batches as an uninterrupted one. Signals of more than ``PERMUTE_MAX`` samples draw batches
    uniformly with replacement instead (every sample has the same expected count; memory stays
    O(batch)).
    """

    PERMUTE_MAX = 1 << 24  # above this many samples, draws are with replacement (a permutation costs 8 bytes a sample)

    def __init__(self, n: int, batch_size: int, device: torch.device, seed: int = 0) -> None:
        self.n, self.batch, self.device, self.seed = n, min(batch_size, n), device, int(seed)
        self.full = batch_size >= n
        self.replace = not self.full and n > self.PERMUTE_MAX
        self.epoch, self.pos = -1, (0 if self.replace else n)
        self._perm = torch.arange(n, device=device) if self.full else torch.arange(1, device=device)[:0]

    def _permutation(self, epoch: int) -> Tensor:
        gen = torch.Generator(device=self.device).manual_seed(self.seed + epoch)
        return torch.randperm(self.n, device=self.device, generator=gen)

    def next(self) -> Tensor:
        if self.full:
            return self._perm
        if self.replace:  # batch k from a generator seeded by (seed, k): resumable, O(batch) memory
            gen = torch.Generator(device=self.device).manual_seed(self.seed * 1_000_003 + self.pos)
            self.pos += 1
            return torch.randint(0, self.n, (self.batch,), device=self.device, generator=gen)
        if self.pos + self.batch <= self.n:
            idx = self._perm[self.pos : self.pos + self.batch]
            self.pos += self.batch
            return idx
        tail = self._perm[self.pos :]
        self.epoch += 1
        self._perm = self._permutation(self.epoch)
        self.pos = self.batch - tail.numel()
        return torch.cat([tail, self._perm[: self.pos]]) if tail.numel() else self._perm[: self.pos]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        if not self.full and not self.replace and self.epoch >= 0:
            self._perm = self._permutation(self.epoch)
