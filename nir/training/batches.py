"""Training data on the device: the signal's values (held or streamed), their transform and
statistics, the samplers that draw batches from them, and the Lightning data module.

One object, :class:`TrainingData`, owns all of it for a run. It fits the value transform and
the loss on one bounded sample of the signal and measures the metric statistics from the same
sample, so a large signal is sampled once. Batches are flat indices drawn on the device;
coordinates come from :class:`~nir.data.signal.Grid`, never from a stored ``numel x d`` tensor.

How batches are drawn is the sampling's business (:mod:`nir.data.samplers`: its protocol, and where
a new sampler goes); this module only asks it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset

from nir.allocator import release_heap
from nir.data.holdout import Holdout
from nir.data.samplers import Uniform
from nir.data.signal import Signal, chunk_ranges, valid_rows
from nir.errors import require
from nir.training.metrics import SignalStats

log = logging.getLogger("nir")


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

    With a ``sampling`` that groups rows (``sampling.groups``, e.g. ``sampling=decades``: the
    magnitude decades) the batch is balanced across the groups over the samples in the cache:
    each block's rows are grouped when it is loaded, the batch's rows are shared among the
    groups by ``sampling.shares`` of their counts in the cache, and within a group the draw is
    uniform over the cached samples. The cache knows nothing of what the groups mean.
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
        sampling: Any = None,
        stats: SignalStats | None = None,
        holdout: Holdout | None = None,
    ) -> None:
        self.signal, self.prepare, self.device, self.seed = signal, prepare, device, int(seed)
        self.holdout = holdout
        c = signal.channels
        self.masked = signal.missing > 0  # missing samples (NaN) are dropped as blocks load
        compact = holdout is not None or self.masked
        row_bytes = 4 * c + (8 if compact else 0)  # + each cached row's flat index
        self.block = int(min(block_rows, max(1, cache_bytes // (8 * row_bytes))))  # at least 8 slots
        self.n_blocks = -(-signal.numel // self.block)
        self.slots = int(max(1, min(self.n_blocks, cache_bytes // (self.block * row_bytes))))
        self.per_step = min(self.slots, -(-batch_size // self.block))
        self.batch = batch_size
        self.values = torch.zeros(self.slots, self.block, c, device=device)
        self.start = torch.zeros(self.slots, dtype=torch.long, device=device)
        self.length = torch.ones(self.slots, dtype=torch.long, device=device)
        # with a holdout or missing samples a slot keeps only its block's training rows, compacted, and their flat indices
        self.rows = torch.zeros(self.slots, self.block, dtype=torch.long, device=device) if compact else None
        self.gen = torch.Generator(device=device).manual_seed(self.seed)
        self._kept = [0] * self.slots  # rows each slot holds, on the host (known when a block loads)
        self.epoch, self.pos, self.next_slot = 0, 0, 0
        self._order = self._permutation(0)
        self.filled = False
        self.sampling, self.stats = sampling or Uniform(), stats
        self.grouped = int(self.sampling.n_groups(stats)) > 1  # one group: plain uniform draws over the cache
        if self.grouped:  # per slot: its rows ordered by group, and each group's count
            ng = int(self.sampling.n_groups(stats))
            self.by_group = torch.zeros(self.slots, self.block, dtype=torch.long, device=device)
            self.group_count = torch.zeros(self.slots, ng, dtype=torch.long, device=device)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng(self.seed + epoch).permutation(self.n_blocks)

    def _group_block(self, slot: int, raw: Tensor) -> None:
        groups = self.sampling.groups(raw, self.stats)
        self.by_group[slot, : groups.numel()] = torch.argsort(groups, stable=True)
        self.group_count[slot] = torch.bincount(groups, minlength=self.group_count.shape[1])

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
            if self.rows is not None:
                keep = valid_rows(raw) if self.masked else torch.ones_like(rows, dtype=torch.bool)
                if self.holdout is not None:
                    keep &= ~self.holdout.held(rows)
                raw, rows = raw[keep], rows[keep]
                self.rows[slot, : rows.numel()] = rows
            self._kept[slot] = int(rows.numel())
            self.values[slot, : rows.numel()] = self.prepare(raw)
            if self.grouped:
                self._group_block(slot, raw)
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
        for _ in range(self.n_blocks):  # a cache of wholly masked or held blocks (a land mask): read on
            if sum(self._kept):
                break
            self._load(self.next_slot)
            self.next_slot = (self.next_slot + 1) % self.slots
        if self.grouped:
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
        """A batch shared among the groups by the sampling, over the cached samples (one host sync for the shares)."""
        counts = self.group_count  # (slots, groups)
        per_group = self.sampling.shares(counts.sum(0).cpu(), self.batch).to(self.device)
        group = torch.repeat_interleave(torch.arange(counts.shape[1], device=self.device), per_group)
        cum = counts.T.cumsum(1)[group]  # (B, slots): cached samples of the row's group, by slot
        u = torch.rand(group.numel(), device=self.device, generator=self.gen, dtype=torch.float64)
        r = (u * cum[:, -1]).long().clamp_max(cum[:, -1] - 1)  # the r-th cached sample of the group
        slot = torch.searchsorted(cum, r[:, None], right=True)[:, 0]
        first = (counts.cumsum(1) - counts)[slot, group]  # where the group starts in the slot's order
        off = self.by_group[slot, first + r - (cum[torch.arange(len(r)), slot] - counts[slot, group])]
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
        sampling: how batches are drawn (:mod:`nir.data.samplers`; default :class:`~nir.data.samplers.Uniform`;
            ``Decades`` for long-tailed signals; every DDP rank draws its own batches).
        holdout: samples never drawn (:class:`~nir.data.holdout.Holdout`; ``data.holdout``): samplers
            draw from the training samples only, and :meth:`held_mask` tells the metrics which
            rows are held out. The transform's and loss's few fitted numbers (mean, scale,
            floor) still come from the whole signal's fit sample.

    Missing samples (NaN: :attr:`Signal.missing`) are never drawn: the samplers draw from the
    valid training samples (``_pool``), the block cache drops them as it loads a block.
    """

    def __init__(
        self,
        signal: Signal,
        transform: nn.Module,
        loss: nn.Module,
        batch_size: int,
        cache_mb: float = 4096,
        seed: int = 0,
        sampling: Any = None,
        holdout: Holdout | None = None,
    ) -> None:
        self.sampling, self.holdout = sampling or Uniform(), holdout
        self._pool: Tensor | None = None  # the training samples' flat indices (a holdout, held signal)
        self.sampling.check(signal)
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
        self.grid = signal.grid()
        self.sampler: Any = None  # the sampling's sampler (held), or the BlockCache (streamed)
        self._cache: BlockCache | None = None
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
        return self.signal.streamable and copies * self.signal.nbytes > self.cache_bytes

    def to(self, device: torch.device, rank: int = 0) -> TrainingData:
        """Put the values and the sampler on ``device`` (once; a no-op when they are there)."""
        if self._device == device:
            return self
        self.grid = self.signal.grid().to(device)
        seed = self.seed + 1_000_003 * rank  # each DDP rank draws its own batches
        self._y = self._t = None
        if self.streaming:
            prepare = (lambda v: v.float()) if not self.transformed_copy else (lambda v: self.transform(v).float())
            self.sampler = self._cache = BlockCache(self.signal, prepare, self.cache_bytes, self.batch_size, device,
                                                    seed=seed, sampling=self.sampling, stats=self.stats, holdout=self.holdout)  # fmt: skip
        else:
            self._y = self._t = self.signal.flat().to(device)
            if self.transformed_copy:
                self._t = torch.empty(self._y.shape, device=device)
                with torch.no_grad():  # in chunks: the transform's temporaries stay chunk-sized
                    for a, b in chunk_ranges(self.signal.numel, 1 << 20):
                        self._t[a:b] = self.transform(self._y[a:b]).float()
            if self.signal.source is not None:
                self.signal.source.release()  # pages of the map come back as training touches them
            self.sampler, self._cache = self._held_sampler(seed), None
        if self._pending_state is not None:
            self.sampler.load_state_dict(self._pending_state)
        self._device = device
        return self

    def _training_indices(self, device: torch.device) -> Tensor | None:
        """Flat indices of the samples training draws (valid, not held out), ascending; ``None``
        when that is every sample."""
        if self.signal.missing == 0:
            return None if self.holdout is None else self.holdout.train_indices(self.signal.numel, device)
        parts = []
        for a, b in chunk_ranges(self.signal.numel, 1 << 22):
            idx = torch.arange(a, b, device=device)
            keep = valid_rows(self._y[a:b])
            if self.holdout is not None:
                keep &= ~self.holdout.held(idx)
            parts.append(idx[keep])
        pool = torch.cat(parts)
        require(pool.numel() > 0, f"data {self.signal.name!r}: no valid sample is left for training (missing values and data.holdout)")  # fmt: skip
        return pool

    def _held_sampler(self, seed: int) -> Any:
        """The sampling's sampler of positions in the training samples: all of them, or ``_pool``'s."""
        self._pool = self._training_indices(self._y.device)
        n = self.signal.numel if self._pool is None else self._pool.numel()

        def magnitude() -> Tensor:
            return self._y.abs().amax(1) if self._pool is None else self._y[self._pool].abs().amax(1)

        return self.sampling.sampler(magnitude, n, self.batch_size, self._y.device, seed, self.stats)

    def next_batch(self) -> tuple[Tensor, Tensor]:
        """``(flat indices (B,), targets (B, channels))``, targets in the loss's space."""
        if self._cache is not None:
            return self._cache.next()
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
