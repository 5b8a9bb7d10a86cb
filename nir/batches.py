"""Training data on the device: the signal's values (held or streamed), their transform and
statistics, the samplers that draw batches from them, and the Lightning data module.

One object, :class:`TrainingData`, owns all of it for a run. It fits the value transform and
the loss on one bounded sample of the signal and measures the metric statistics from the same
sample, so a large signal is sampled once. Batches are flat indices drawn on the device;
coordinates come from :class:`~nir.signal.Grid`, never from a stored ``numel x d`` tensor.

Where a new sampler goes: a class beside :class:`IndexSampler` with ``next()``, and a state
``(epoch, pos)`` returned by ``state_dict()`` (it goes into checkpoints).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset

from nir.allocator import release_heap
from nir.errors import require
from nir.holdout import Holdout
from nir.metrics import SignalStats, decade_bin
from nir.signal import Grid, Signal, chunk_ranges

log = logging.getLogger("nir")


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


class DecadeSampler:
    """Flat indices drawn so that each magnitude decade of the target gets a fixed share of every
    batch (issue 13): the rare large values of a long-tailed field are drawn as often as the bulk.

    The decades are the per-decade metric's bins (:func:`nir.metrics.decade_edges` from the metric
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


class Uniform:
    """``sampling=uniform``: every sample alike (:class:`IndexSampler`, or the block cache)."""

    def __str__(self) -> str:
        return "uniform"


class Decades:
    """``sampling=decades``: each magnitude decade gets a share of every batch proportional to
    ``count^alpha`` (:class:`DecadeSampler`; ``alpha = 0``: equal shares, ``1``: uniform).

    Args:
        alpha: tempering exponent in [0, 1].
    """

    def __init__(self, alpha: float = 0.0) -> None:
        require(0.0 <= float(alpha) <= 1.0, f"sampling.alpha must be in [0, 1], got {alpha!r}")
        self.alpha = float(alpha)

    def __str__(self) -> str:
        return f"decades(alpha={self.alpha:g})"


class BlockCache:
    """Training batches from a memory-mapped signal larger than the cache, with bounded memory.

    The signal is cut into blocks of ``block_rows`` contiguous flat samples (slabs of a volume).
    The cache holds ``slots`` blocks of training targets on the device; each step replaces the
    oldest ``per_step`` blocks with the next ones of an epoch-seeded block permutation (read
    from the file, transformed, copied in), and draws the batch uniformly from the cached
    samples. Every block stays in the cache for the same number of steps and draws are uniform
    over the cached samples, so every sample has the same expected number of draws; reading
    ``per_step * block_rows >= batch`` samples a step moves through the data at least as fast
    as training consumes it. State: ``(epoch, pos)``; a resumed run refills the cache from that
    position (its batches differ from an uninterrupted run's, its coverage does not).

    With ``decades = (edges, alpha)`` the batch is balanced across magnitude decades as
    :class:`DecadeSampler` balances a held signal, over the samples in the cache: each block's
    decades are binned when it is loaded, the shares follow the decades' counts in the cache
    (``count^alpha``), and within a decade the draw is uniform over the cached samples.
    """

    def __init__(
        self,
        signal: Signal,
        prepare: Callable[[Tensor], Tensor],
        cache_bytes: int,
        batch_size: int,
        device: torch.device,
        seed: int = 0,
        block_rows: int = 1 << 16,
        decades: tuple[list[float], float] | None = None,
        holdout: Holdout | None = None,
    ) -> None:
        self.signal, self.prepare, self.device, self.seed = signal, prepare, device, int(seed)
        self.holdout = holdout
        c = signal.channels
        row_bytes = 4 * c + (8 if holdout is not None else 0)  # + each cached row's flat index
        self.block = int(min(block_rows, max(1, cache_bytes // (8 * row_bytes))))  # at least 8 slots
        self.n_blocks = -(-signal.numel // self.block)
        self.slots = int(max(1, min(self.n_blocks, cache_bytes // (self.block * row_bytes))))
        self.per_step = min(self.slots, -(-batch_size // self.block))
        self.batch = batch_size
        self.values = torch.zeros(self.slots, self.block, c, device=device)
        self.start = torch.zeros(self.slots, dtype=torch.long, device=device)
        self.length = torch.ones(self.slots, dtype=torch.long, device=device)
        # with a holdout a slot keeps only its block's training rows, compacted, and their flat indices
        self.rows = torch.zeros(self.slots, self.block, dtype=torch.long, device=device) if holdout else None
        self.gen = torch.Generator(device=device).manual_seed(self.seed)
        self.epoch, self.pos, self.next_slot = 0, 0, 0
        self._order = self._permutation(0)
        self.filled = False
        self.decades = decades
        if decades is not None:  # per slot: its rows grouped by decade, and each decade's count
            nb = len(decades[0])
            self._edges = torch.tensor(decades[0], dtype=torch.float32, device=device)
            self.by_decade = torch.zeros(self.slots, self.block, dtype=torch.long, device=device)
            self.decade_count = torch.zeros(self.slots, nb, dtype=torch.long, device=device)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng(self.seed + epoch).permutation(self.n_blocks)

    def _bin_block(self, slot: int, raw: Tensor) -> None:
        nb = self._edges.numel()
        bins = decade_bin(raw.abs().amax(1), self._edges)
        self.by_decade[slot, : bins.numel()] = torch.argsort(bins, stable=True)
        self.decade_count[slot] = torch.bincount(bins, minlength=nb)

    def _load(self, slot: int) -> None:
        if self.pos >= self.n_blocks:
            self.epoch, self.pos = self.epoch + 1, 0
            self._order = self._permutation(self.epoch)
        b = int(self._order[self.pos])
        self.pos += 1
        lo, hi = b * self.block, min((b + 1) * self.block, self.signal.numel)
        with torch.no_grad():
            raw = self.signal.read(lo, hi).to(self.device, non_blocking=True)
            rows = torch.arange(lo, hi, device=self.device)
            if self.holdout is not None:
                keep = ~self.holdout.held(rows)
                raw, rows = raw[keep], rows[keep]
                self.rows[slot, : rows.numel()] = rows
            self.values[slot, : rows.numel()] = self.prepare(raw)
            if self.decades is not None:
                self._bin_block(slot, raw)
        self.start[slot], self.length[slot] = lo, rows.numel()

    def next(self) -> tuple[Tensor, Tensor]:
        """``(flat indices, targets)`` of one batch."""
        if not self.filled:
            for s in range(self.slots):
                self._load(s)
            self.filled = True
        else:
            for _ in range(self.per_step):
                self._load(self.next_slot)
                self.next_slot = (self.next_slot + 1) % self.slots
        if self.decades is not None:
            return self._balanced()
        # uniform over the cached samples (a slot holding a short last block gets its share only)
        end = torch.cumsum(self.length, 0)
        u = (torch.rand(self.batch, device=self.device, generator=self.gen, dtype=torch.float64) * end[-1]).long()
        slot = torch.searchsorted(end, u, right=True)
        off = u - (end[slot] - self.length[slot])
        return self._flat(slot, off), self.values[slot, off]

    def _flat(self, slot: Tensor, off: Tensor) -> Tensor:
        """Flat indices of cached rows ``off`` of ``slot``."""
        return self.start[slot] + off if self.rows is None else self.rows[slot, off]

    def _balanced(self) -> tuple[Tensor, Tensor]:
        """A decade-balanced batch over the cached samples (one host sync for the shares)."""
        counts = self.decade_count  # (slots, decades)
        per_decade = decade_slots(counts.sum(0).cpu(), self.batch, self.decades[1]).to(self.device)
        decade = torch.repeat_interleave(torch.arange(counts.shape[1], device=self.device), per_decade)
        cum = counts.T.cumsum(1)[decade]  # (B, slots): cached samples of the row's decade, by slot
        u = torch.rand(decade.numel(), device=self.device, generator=self.gen, dtype=torch.float64)
        r = (u * cum[:, -1]).long().clamp_max(cum[:, -1] - 1)  # the r-th cached sample of the decade
        slot = torch.searchsorted(cum, r[:, None], right=True)[:, 0]
        first = (counts.cumsum(1) - counts)[slot, decade]  # where the decade starts in the slot's order
        off = self.by_decade[slot, first + r - (cum[torch.arange(len(r)), slot] - counts[slot, decade])]
        return self._flat(slot, off), self.values[slot, off]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self._order = self._permutation(self.epoch)
        self.filled = False


class TrainingData:
    """The signal as training sees it, owned in one place.

    On construction (on the host): checks that the signal is not constant, draws its fit sample
    once (:meth:`Signal.fit_sample`), fits the value ``transform`` and the ``loss`` on it in
    place and measures :attr:`stats` from it. On :meth:`to` (once per device): the values move
    to the device, transformed once into the loss's space, or, for a memory-mapped signal whose
    training values exceed ``cache_mb``, a :class:`BlockCache` streams them.

    Args:
        signal: the training signal.
        transform: the field's value transform (fitted here; the same object the field holds).
        loss: the training loss (fitted here); its ``space`` says which values it compares.
        batch_size: samples per step; ``>= signal.numel`` means full batch.
        cache_mb: memory for the training values (see :attr:`streaming`).
        seed: sampler seed; DDP rank r draws with ``seed + 1_000_003 r``.
        sampling: :class:`Uniform` (default) or :class:`Decades` (long-tailed signals; a streamed
            signal is balanced over the block cache; every DDP rank balances its own batches).
        holdout: samples never drawn (:class:`~nir.holdout.Holdout`; ``data.holdout``): samplers
            draw from the training samples only, and :meth:`held_mask` tells the metrics which
            rows are held out. The transform's and loss's few fitted numbers (mean, scale,
            floor) still come from the whole signal's fit sample.
    """

    def __init__(
        self,
        signal: Signal,
        transform: nn.Module,
        loss: nn.Module,
        batch_size: int,
        cache_mb: float = 4096,
        seed: int = 0,
        sampling: Uniform | Decades | None = None,
        holdout: Holdout | None = None,
    ) -> None:
        self.sampling, self.holdout = sampling or Uniform(), holdout
        self._pool: Tensor | None = None  # the training samples' flat indices (a holdout, held signal)
        if isinstance(self.sampling, Decades):
            require(
                signal.long_tailed,
                f"sampling=decades needs a long-tailed signal (one judged per decade); {signal.name!r} is not: use sampling=uniform",
            )
        st = signal.summary()
        vmin, vmax = float(st["min"].min()), float(st["max"].max())
        require(vmax > vmin, f"data {signal.name!r} is constant (every value is {vmin:g}); there is nothing to fit")
        if batch_size > signal.numel:
            log.info(
                "batch_size %d is larger than the signal (%d samples): using full batches of %d",
                batch_size,
                signal.numel,
                signal.numel,
            )
        sample = signal.fit_sample()  # the whole signal, or a bounded sample of a large one
        transform.fit(sample)
        loss.fit(sample)
        self.stats = SignalStats.measure(signal, sample)
        del sample
        release_heap()
        self.signal, self.transform, self.loss_space = signal, transform, getattr(loss, "space", "transformed")
        self.batch_size, self.cache_bytes, self.seed = int(batch_size), int(cache_mb * 2**20), int(seed)
        self.grid = Grid(signal.shape, signal.bounds)
        self.sampler: IndexSampler | DecadeSampler | BlockCache | None = None
        self._device: torch.device | None = None
        self._y: Tensor | None = None  # signal units, on the device (None when streaming)
        self._t: Tensor | None = None  # the loss's space (the same tensor when no copy is needed)
        self._pending_state: dict[str, int] | None = None

    @property
    def transformed_copy(self) -> bool:
        """Whether the loss compares transformed values, so training holds a transformed copy."""
        from nir.transforms import Identity

        return self.loss_space != "signal" and not isinstance(self.transform, Identity)

    @property
    def streaming(self) -> bool:
        """True when the signal is memory-mapped and its training values exceed the cache."""
        copies = 2 if self.transformed_copy else 1
        return self.signal.source is not None and copies * self.signal.nbytes > self.cache_bytes

    def to(self, device: torch.device, rank: int = 0) -> TrainingData:
        """Put the values and the sampler on ``device`` (once; a no-op when they are there)."""
        if self._device == device:
            return self
        self.grid = Grid(self.signal.shape, self.signal.bounds).to(device)
        seed = self.seed + 1_000_003 * rank  # each DDP rank draws its own batches
        self._y = self._t = None
        if self.streaming:
            prepare = (lambda v: v.float()) if not self.transformed_copy else (lambda v: self.transform(v).float())
            self.sampler = BlockCache(self.signal, prepare, self.cache_bytes, self.batch_size, device, seed=seed,
                                      decades=self._decades(), holdout=self.holdout)  # fmt: skip
        else:
            self._y = self._t = self.signal.flat().to(device)
            if self.transformed_copy:
                self._t = torch.empty(self._y.shape, device=device)
                with torch.no_grad():  # in chunks: the transform's temporaries stay chunk-sized
                    for a, b in chunk_ranges(self.signal.numel, 1 << 20):
                        self._t[a:b] = self.transform(self._y[a:b]).float()
            if self.signal.source is not None:
                self.signal.source.release()  # pages of the map come back as training touches them
            self.sampler = self._held_sampler(seed)
        if self._pending_state is not None:
            self.sampler.load_state_dict(self._pending_state)
        self._device = device
        return self

    def _decades(self) -> tuple[list[float], float] | None:
        """(bin edges, alpha) of decade-balanced sampling: the per-decade metric's bins."""
        if not isinstance(self.sampling, Decades):
            return None
        from nir.metrics import decade_edges

        return decade_edges(self.stats.floor, self.stats.absmax), self.sampling.alpha

    def _held_sampler(self, seed: int) -> IndexSampler | DecadeSampler:
        """A sampler of positions in the training samples: all of them, or ``_pool``'s."""
        decades = self._decades()
        self._pool = None if self.holdout is None else self.holdout.train_indices(self.signal.numel, self._y.device)
        n = self.signal.numel if self._pool is None else self._pool.numel()
        if decades is not None:
            mag = self._y.abs().amax(1) if self._pool is None else self._y[self._pool].abs().amax(1)
            return DecadeSampler(mag, decades[0], min(self.batch_size, n), decades[1], seed=seed)
        return IndexSampler(n, self.batch_size, self._y.device, seed=seed)

    def next_batch(self) -> tuple[Tensor, Tensor]:
        """``(flat indices (B,), targets (B, channels))``, targets in the loss's space."""
        if isinstance(self.sampler, BlockCache):
            return self.sampler.next()
        idx = self.sampler.next()
        if self._pool is not None:
            idx = self._pool[idx]
        return idx, self.targets_at(idx)

    def targets_at(self, idx: Tensor) -> Tensor:
        """Training targets (the loss's space) at flat indices of a held signal, on the device."""
        return self._t if self._pool is None and self.sampler.full else self._t[idx]  # full batch: no gather

    def held_mask(self, start: int, stop: int) -> Tensor | None:
        """Which of flat rows ``[start, stop)`` are held out, on the device (``None``: no holdout)."""
        return None if self.holdout is None else self.holdout.held_range(start, stop, self._device)

    def values_at(self, idx: Tensor) -> Tensor:
        """Signal values (signal units) at flat indices, on the device."""
        return self._y[idx] if self._y is not None else self.signal.gather(idx).to(self._device)

    def values_range(self, start: int, stop: int) -> Tensor:
        """Signal values (signal units) of flat rows ``[start, stop)``, on the device."""
        return self._y[start:stop] if self._y is not None else self.signal.read(start, stop).to(self._device)

    def state_dict(self) -> dict[str, int] | None:
        """The sampler's ``(epoch, pos)``; ``None`` before the first batch."""
        return self.sampler.state_dict() if self.sampler is not None else None

    def load_state_dict(self, state: dict[str, int] | None) -> None:
        self._pending_state = state
        if state is not None and self.sampler is not None:
            self.sampler.load_state_dict(state)


class _Ticks(IterableDataset):
    """An endless stream of step numbers: batches are drawn on the device by the module."""

    def __iter__(self) -> Iterator[int]:
        i = 0
        while True:
            yield i
            i += 1


class _Chunks(IterableDataset):
    """This rank's chunk ranges of the grid, for validation."""

    def __init__(self, n: int, chunk: int, rank: int = 0, world: int = 1) -> None:
        self.n, self.chunk, self.rank, self.world = n, chunk, rank, world

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return chunk_ranges(self.n, self.chunk, self.rank, self.world)


class FieldDataModule(pl.LightningDataModule):
    """Serves step ticks for training and this rank's chunk ranges for validation (no worker
    round trips): the values themselves stay on the device in :class:`TrainingData`."""

    def __init__(self, signal: Signal, val_chunk: int = 65536) -> None:
        super().__init__()
        self.numel = signal.numel
        self.val_chunk = val_chunk

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Ticks(), batch_size=None, num_workers=0)

    def val_dataloader(self) -> DataLoader:
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        return DataLoader(_Chunks(self.numel, self.val_chunk, rank, world), batch_size=None, num_workers=0)
