"""Lightning module and data module: random index batches in, loss out; full-grid validation."""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset

from nir.field import Field
from nir.metrics import GridMetrics
from nir.signal import Grid, Signal


class _Ticks(IterableDataset):
    """An endless stream of step numbers: batches are drawn on the device by the module."""

    def __iter__(self) -> Iterator[int]:
        i = 0
        while True:
            yield i
            i += 1


def chunk_ranges(n: int, chunk: int, rank: int = 0, world: int = 1) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` ranges covering ``n`` flat indices; under DDP rank r takes every
    ``world``-th chunk, so the ranks' metric states merge into exactly the full grid. Chunks
    shrink so that every rank gets at least one (a rank without batches would skip the
    validation hooks and leave the others waiting in the metric sync)."""
    chunk = max(1, min(chunk, -(-n // world)))
    for i, s in enumerate(range(0, n, chunk)):
        if i % world == rank:
            yield (s, min(s + chunk, n))


class _Chunks(IterableDataset):
    """This rank's chunk ranges of the grid, for validation."""

    def __init__(self, n: int, chunk: int, rank: int = 0, world: int = 1) -> None:
        self.n, self.chunk, self.rank, self.world = n, chunk, rank, world

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return chunk_ranges(self.n, self.chunk, self.rank, self.world)


class FieldDataModule(pl.LightningDataModule):
    """Serves step ticks for training and chunk ranges for validation (no worker round trips).

    The signal itself moves to the module's device once; batches are drawn there as indices.
    """

    def __init__(self, signal: Signal, val_chunk: int = 65536) -> None:
        super().__init__()
        self.signal = signal
        self.val_chunk = val_chunk

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Ticks(), batch_size=None, num_workers=0)

    def val_dataloader(self) -> DataLoader:
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        return DataLoader(_Chunks(self.signal.numel, self.val_chunk, rank, world), batch_size=None, num_workers=0)


class IndexSampler:
    """Random flat indices, drawn on the device: epochs of a shuffled permutation, sliced in batches.

    Batches run on across epoch boundaries (the last batch of an epoch is completed from the next
    permutation), so every batch has the same size and after ``k * n`` samples every sample has
    been drawn exactly ``k`` times. When the batch covers the whole signal, every step is the
    full grid. Epoch
    ``e``'s permutation comes from a generator seeded with ``seed + e``, so the whole state is
    ``(epoch, pos)``: it goes into checkpoints and a resumed run draws the same batches as an
    uninterrupted one. Signals of more than ``PERMUTE_MAX`` samples draw batches uniformly with
    replacement instead (every sample has the same expected count; memory stays O(batch)).
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


class BlockCache:
    """Training batches from a memory-mapped signal larger than the cache, with bounded memory.

    The signal is cut into blocks of ``block_rows`` contiguous flat samples (slabs of a volume).
    The cache holds ``slots`` blocks of training targets on the device; each step replaces the
    oldest ``per_step`` blocks with the next ones of an epoch-seeded block permutation (read
    from the file, transformed, copied in), and draws the batch uniformly from the cached
    samples. Every block stays in the cache for the same number of steps and draws are uniform
    over the cached samples, so every sample has the same expected number of draws; reading
    ``per_step * block_rows >= batch`` samples a step moves through the data at least as fast
    as training consumes it. State: ``(epoch, pos)``;
    a resumed run refills the cache from that position (its batches differ from an
    uninterrupted run's, its coverage does not).
    """

    def __init__(self, signal: Signal, prepare: Callable[[Tensor], Tensor], cache_bytes: int,
                 batch_size: int, device: torch.device, seed: int = 0, block_rows: int = 1 << 16) -> None:
        self.signal, self.prepare, self.device, self.seed = signal, prepare, device, int(seed)
        c = signal.channels
        row_bytes = 4 * c
        self.block = int(min(block_rows, max(1, cache_bytes // (8 * row_bytes))))  # at least 8 slots
        self.n_blocks = -(-signal.numel // self.block)
        self.slots = int(max(1, min(self.n_blocks, cache_bytes // (self.block * row_bytes))))
        self.per_step = min(self.slots, -(-batch_size // self.block))
        self.batch = batch_size
        self.values = torch.zeros(self.slots, self.block, c, device=device)
        self.start = torch.zeros(self.slots, dtype=torch.long, device=device)
        self.length = torch.ones(self.slots, dtype=torch.long, device=device)
        self.gen = torch.Generator(device=device).manual_seed(self.seed)
        self.epoch, self.pos, self.next_slot = 0, 0, 0
        self._order = self._permutation(0)
        self.filled = False

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng(self.seed + epoch).permutation(self.n_blocks)

    def _load(self, slot: int) -> None:
        if self.pos >= self.n_blocks:
            self.epoch, self.pos = self.epoch + 1, 0
            self._order = self._permutation(self.epoch)
        b = int(self._order[self.pos])
        self.pos += 1
        lo, hi = b * self.block, min((b + 1) * self.block, self.signal.numel)
        with torch.no_grad():
            v = self.prepare(self.signal.read(lo, hi).to(self.device, non_blocking=True))
        self.values[slot, : hi - lo] = v
        self.start[slot], self.length[slot] = lo, hi - lo

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
        # uniform over the cached samples (a slot holding a short last block gets its share only)
        end = torch.cumsum(self.length, 0)
        u = (torch.rand(self.batch, device=self.device, generator=self.gen, dtype=torch.float64) * end[-1]).long()
        slot = torch.searchsorted(end, u, right=True)
        off = u - (end[slot] - self.length[slot])
        return self.start[slot] + off, self.values[slot, off]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self._order = self._permutation(self.epoch)
        self.filled = False


def cosine_with_warmup(total: int, warmup: int, floor: float) -> Callable[[int], float]:
    """LR factor: linear warmup over ``warmup`` steps, then cosine from 1 to ``floor`` at ``total``."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))

    return f


class FieldModule(pl.LightningModule):
    """Trains a :class:`Field` on a :class:`Signal` with random index batches.

    Args:
        field: network + transform + box.
        loss: ``(pred, target) -> scalar`` in the transform's space.
        signal: the training signal (kept on the module's device, never in checkpoints).
        batch_size: samples per step; ``>= signal.numel`` means full batch.
        lr: Adam learning rate.
        schedule: ``"constant"`` or ``"cosine"`` (with ``warmup_steps`` and ``min_lr_ratio``).
        max_steps: length of the cosine schedule.
        compile: run the training forward through ``torch.compile`` (fuses SIREN's scale, bias and
            sine into the matmul epilogues; see docs/performance.md). Validation, evaluation and
            the saved field stay eager, so a loaded field never carries compiled state.
        cache_mb: memory for the training values (the signal, plus its transformed copy unless
            the transform is the identity). A memory-mapped ``.npy`` that needs more streams
            through a :class:`BlockCache` of this size instead of being held whole.
    """

    def __init__(
        self,
        field: Field,
        loss: nn.Module,
        signal: Signal,
        batch_size: int,
        lr: float,
        schedule: str = "cosine",
        warmup_steps: int = 0,
        min_lr_ratio: float = 0.01,
        max_steps: int = 1000,
        betas: tuple[float, float] = (0.9, 0.999),
        compile: bool = False,
        cache_mb: float = 4096,
    ) -> None:
        super().__init__()
        self.field = field
        self.loss_fn = loss
        self.signal = signal
        self.batch_size = batch_size
        self.lr, self.schedule, self.betas = lr, schedule, tuple(betas)
        self.warmup_steps, self.min_lr_ratio, self.max_steps = warmup_steps, min_lr_ratio, max_steps
        self.val_metrics = GridMetrics(signal)
        self.last_magnitude: dict[str, Any] | None = None
        self.sampler_seed = 0
        self._sampler_state: dict[str, int] | None = None
        self.register_buffer("nonfinite_steps", torch.zeros((), dtype=torch.long), persistent=False)
        self.register_buffer("first_bad_step", torch.full((), -1, dtype=torch.long), persistent=False)
        self.register_buffer("first_bad_loss", torch.zeros(()), persistent=False)
        self.register_buffer("skipped_steps", torch.zeros((), dtype=torch.long), persistent=False)
        self.register_buffer("_last_scale", torch.full((), float("inf")), persistent=False)
        self._device_data: tuple[torch.device, Tensor | None, Tensor | None, Grid, IndexSampler | BlockCache] | None = None
        # kept in a plain dict: an nn.Module attribute would register the wrapper as a submodule
        # and duplicate every weight in the state dict
        self._compiled: dict[str, Callable[[Tensor], Tensor]] = {}
        self.compile_network = bool(compile)
        self.cache_bytes = int(cache_mb * 2**20)

    def train_network(self) -> Callable[[Tensor], Tensor]:
        """The network as the training step calls it: compiled once when ``compile`` is on."""
        if not self.compile_network:
            return self.field.network
        if "net" not in self._compiled:
            self._compiled["net"] = torch.compile(self.field.network, dynamic=False)
        return self._compiled["net"]

    # -- data on the device ------------------------------------------------------------------
    def _transformed_copy(self) -> bool:
        """Whether training needs the transformed values besides the signal's own."""
        from nir.transforms import Identity

        return not isinstance(self.field.transform, Identity)

    def streaming(self) -> bool:
        """True when the signal is memory-mapped and its training values exceed the cache."""
        copies = 2 if self._transformed_copy() else 1
        return self.signal.source is not None and copies * self.signal.nbytes > self.cache_bytes

    def data(self) -> tuple[Tensor | None, Tensor | None, Grid, IndexSampler | BlockCache]:
        """Signal values (signal units and transformed) on this module's device, moved once;
        ``(None, None, grid, BlockCache)`` when the signal streams (see ``cache_mb``)."""
        dev = self.device
        if self._device_data is None or self._device_data[0] != dev:
            grid = Grid(self.signal.shape, self.signal.bounds).to(dev)
            # each DDP rank draws its own batches (same seed on every rank would repeat one batch)
            seed = self.sampler_seed + 1_000_003 * self.global_rank
            y = t = None
            sampler: IndexSampler | BlockCache
            if self.streaming():
                signal_space = self.loss_fn.space == "signal"
                prepare = (lambda v: v.float()) if signal_space else (lambda v: self.field.transform(v).float())
                sampler = BlockCache(self.signal, prepare, self.cache_bytes, self.batch_size, dev, seed=seed)
            else:
                y = self.signal.flat().to(dev)
                t = y
                if self._transformed_copy():
                    t = torch.empty(y.shape, device=dev)
                    with torch.no_grad():  # in chunks: the transform's temporaries stay chunk-sized
                        for a in range(0, self.signal.numel, 1 << 20):
                            t[a : a + (1 << 20)] = self.field.transform(y[a : a + (1 << 20)]).float()
                if self.signal.source is not None:
                    self.signal.source.release()  # pages of the map come back as training touches them
                sampler = IndexSampler(self.signal.numel, self.batch_size, dev, seed=seed)
            if self._sampler_state is not None:
                sampler.load_state_dict(self._sampler_state)
            self._device_data = (dev, y, t, grid, sampler)
        return self._device_data[1:]

    def values_at(self, idx: Tensor) -> Tensor:
        """Signal values (signal units) at flat indices, on this module's device."""
        y = self.data()[0]
        return y[idx] if y is not None else self.signal.gather(idx).to(self.device)

    def values_range(self, start: int, stop: int) -> Tensor:
        """Signal values (signal units) of flat rows ``[start, stop)``, on this module's device."""
        y = self.data()[0]
        return y[start:stop] if y is not None else self.signal.read(start, stop).to(self.device)

    # -- training ------------------------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        y, t, grid, sampler = self.data()
        if isinstance(sampler, BlockCache):
            idx, target = sampler.next()
        else:
            idx = sampler.next()
            target = (y if self.loss_fn.space == "signal" else t)
            target = target if sampler.full else target[idx]  # full batch: the values as they are, no gather copy
        out = self.train_network()(grid.coords(idx))
        if self.loss_fn.space == "signal":
            out = self.field.transform.inverse(out)
        loss = self.loss_fn(out, target)
        # self.log costs ~0.3 ms of host time per call; Lightning writes only every
        # log_every_n_steps (the same rule as its logger connector), so log only then
        if (self.global_step + 1) % self.trainer.log_every_n_steps == 0:
            self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        # counted on the device, no host sync in the step; the DivergenceGuard reads the count.
        # A non-finite gradient with a finite loss makes the weights non-finite, and so the next
        # step's loss; flag_nonfinite_weights covers the last step before a validation or the end.
        self._flag_nonfinite(loss.detach())
        return loss

    def _flag_nonfinite(self, value: Tensor) -> None:
        bad = ~torch.isfinite(value)
        self.nonfinite_steps += bad.long()
        newly = bad & (self.first_bad_step < 0)
        self.first_bad_loss = torch.where(newly, value.float(), self.first_bad_loss)
        self.first_bad_step.masked_fill_(newly, self.global_step)

    @torch.no_grad()
    def flag_nonfinite_weights(self) -> None:
        """Count a non-finite weight as a divergence at the current step: called before every
        validation (so no checkpoint holds one) and at the end of training. Under 16-mixed the
        gradient scaler skips non-finite steps, so weights stay finite there."""
        params = list(self.field.parameters())
        if params:
            total = torch.stack(torch._foreach_norm(params)).sum()
            self._flag_nonfinite(torch.where(torch.isfinite(total), torch.zeros_like(total), total))

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if scaler is not None and getattr(scaler, "_scale", None) is not None:
            scale = scaler._scale.detach().reshape(())
            self.skipped_steps += (scale < self._last_scale).long()  # the scaler halves its scale when it skips
            self._last_scale = scale.clone()
            self.log("train/grad_scale", scale, on_step=True, on_epoch=False)
            self.log("train/skipped_steps", self.skipped_steps.float(), on_step=True, on_epoch=False)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.Adam(self.field.parameters(), lr=self.lr, betas=self.betas)
        if self.schedule == "constant":
            return opt
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, cosine_with_warmup(self.max_steps, self.warmup_steps, self.min_lr_ratio)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -- validation on the whole grid ----------------------------------------------------------
    def validation_step(self, batch: tuple[int, int], batch_idx: int) -> None:
        grid = self.data()[2]
        start, stop = (int(v) for v in batch)
        idx = torch.arange(start, stop, device=self.device)
        pred = self.field(grid.coords(idx))
        self.val_metrics.update(pred, self.values_range(start, stop))

    def on_validation_epoch_end(self) -> None:
        for name, value in self.val_metrics.compute().items():
            self.log(f"val/{name}", value, prog_bar=(name == "psnr"), sync_dist=False)
        self.log("train/nonfinite_steps", self.nonfinite_steps.float(), sync_dist=True, reduce_fx="sum")
        if self.val_metrics.long_tailed:  # kept for the TensorBoard callback (plain values)
            bins = self.val_metrics.bins
            self.last_magnitude = {"table": bins.table(), "hist": bins.compute()["hist"].detach().cpu()}
        self.val_metrics.reset()

    @torch.no_grad()
    def evaluate(self, chunk: int = 65536) -> dict[str, float]:
        """Metrics of the field on the whole grid, in fp32 (outside autocast), as a user loading
        the field would see them. Same code as validation, without Lightning's loop; under DDP
        every rank evaluates its share of chunks and the metric states are merged."""
        grid = self.data()[2]
        metrics = GridMetrics(self.signal).to(self.device)
        was_training = self.training
        self.eval()
        dist = torch.distributed
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
        for start, stop in chunk_ranges(self.signal.numel, chunk, rank, world):
            idx = torch.arange(start, stop, device=self.device)
            metrics.update(self.field(grid.coords(idx)), self.values_range(start, stop))
        self.train(was_training)
        out: dict[str, Any] = {k: float(v) for k, v in metrics.compute().items()}
        if metrics.long_tailed:
            out["magnitude_floor"] = metrics.floor
            out["magnitude_bins"] = metrics.magnitude_table()
        return out

    # -- checkpoints carry a plain-value spec, never config objects -----------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["nir_spec"] = self.field.spec
        if self._device_data is not None:
            checkpoint["nir_sampler"] = self._device_data[4].state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._sampler_state = checkpoint.get("nir_sampler")
        self._device_data = None
