"""``sampling=decades``: magnitude-balanced batches for long-tailed fields (issue 13)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from nir.decades import decade_bin, decade_edges
from nir.errors import require


class Decades:
    """``sampling=decades``: each magnitude decade gets a share of every batch proportional to
    ``count^alpha`` (:class:`DecadeSampler`; ``alpha = 0``: equal shares, ``1``: uniform). The
    decades are the per-decade metric's bins (:func:`nir.training.metrics.decade_edges` from the metric
    floor to the largest magnitude), so a sample is drawn in the decade it is scored in.
    Long-tailed signals only.

    Args:
        alpha: tempering exponent in [0, 1].
    """

    def __init__(self, alpha: float = 0.0) -> None:
        require(0.0 <= float(alpha) <= 1.0, f"sampling.alpha must be in [0, 1], got {alpha!r}")
        self.alpha = float(alpha)

    def __str__(self) -> str:
        return f"decades(alpha={self.alpha:g})"

    def check(self, signal: Any) -> None:
        require(
            signal.long_tailed,
            f"sampling=decades needs a long-tailed signal (one judged per decade); {signal.name!r} is not: use sampling=uniform",
        )

    @staticmethod
    def edges(stats: Any) -> list[float]:
        return decade_edges(stats.floor, stats.absmax)

    def sampler(
        self, magnitude: Callable[[], Tensor], n: int, batch: int, device: torch.device, seed: int, stats: Any
    ) -> DecadeSampler:
        return DecadeSampler(magnitude(), self.edges(stats), min(batch, n), self.alpha, seed=seed)

    def groups(self, raw: Tensor, stats: Any) -> Tensor:
        edges = torch.tensor(self.edges(stats), dtype=torch.float32, device=raw.device)
        return decade_bin(raw.abs().amax(1), edges)

    def n_groups(self, stats: Any) -> int:
        return len(self.edges(stats))  # bin 0 below the floor + one per decade

    def shares(self, counts: Tensor, batch: int) -> Tensor:
        return decade_slots(counts, batch, self.alpha)


class DecadeSampler:
    """Flat indices drawn so that each magnitude decade of the target gets a fixed share of every
    batch (issue 13): the rare large values of a long-tailed field are drawn as often as the bulk.

    The decades are the per-decade metric's bins (:func:`nir.training.metrics.decade_edges` from the metric
    floor to the largest magnitude, plus one bin below the floor); a sample's magnitude is its
    largest ``|value|`` over channels. Decade ``b`` holding ``n_b`` samples gets
    ``round(B * n_b^alpha / sum n^alpha)`` slots of each batch of ``B`` (largest remainders, so
    the slots add up to ``B`` exactly and every non-empty decade gets at least one): ``alpha = 0``
    is equal shares, ``alpha = 1`` is the share of a uniform draw. Within a decade samples are
    drawn uniformly with replacement, so a decade smaller than its share is simply repeated.
    Batch ``k`` comes from a generator seeded by ``(seed, k)``: the state is ``(-1, k)`` and a
    resumed run draws the same batches.
    """

    full = False

    def __init__(self, magnitude: Tensor, edges: list[float], batch_size: int, alpha: float, seed: int = 0) -> None:
        device = magnitude.device
        edges_t = torch.tensor(edges, dtype=torch.float32, device=device)
        bins = decade_bin(magnitude, edges_t)
        self.order = torch.argsort(bins, stable=True)  # flat indices grouped by decade
        counts = torch.bincount(bins, minlength=len(edges)).cpu()
        self.counts = counts
        self.slots = decade_slots(counts, batch_size, alpha)
        starts = torch.cumsum(counts, 0) - counts
        slot_bin = torch.repeat_interleave(torch.arange(len(counts)), self.slots).to(device)
        self._start, self._count = starts.to(device)[slot_bin], counts.to(device)[slot_bin]
        self.batch, self.device, self.seed, self.pos = int(self.slots.sum()), device, int(seed), 0

    def next(self) -> Tensor:
        gen = torch.Generator(device=self.device).manual_seed(self.seed * 1_000_003 + self.pos)
        self.pos += 1
        u = torch.rand(self.batch, device=self.device, generator=gen, dtype=torch.float64)
        within = (u * self._count).long().clamp_max(self._count - 1)
        return self.order[self._start + within]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": -1, "pos": self.pos}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.pos = int(state["pos"])


def decade_slots(counts: Tensor, batch: int, alpha: float) -> Tensor:
    """Slots of a batch of ``batch`` per decade: shares proportional to ``count^alpha`` over the
    non-empty decades, rounded by largest remainders, at least one slot per non-empty decade."""
    nonempty = counts > 0
    weight = torch.where(nonempty, counts.double().clamp_min(1) ** alpha, torch.zeros(len(counts), dtype=torch.float64))
    ideal = batch * weight / weight.sum()
    slots = torch.where(nonempty, ideal.floor().long().clamp_min(1), torch.zeros_like(counts))
    rest = batch - int(slots.sum())
    if rest > 0:
        frac = torch.where(nonempty, ideal - ideal.floor(), torch.full_like(ideal, -1.0))
        slots[torch.argsort(frac, descending=True)[:rest]] += 1
    while int(slots.sum()) > batch:  # the minimum of one slot overshot: take from the largest
        slots[int(torch.argmax(slots))] -= 1
    return slots
