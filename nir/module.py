"""Lightning module and data module: random index batches in, loss out; full-grid validation."""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator

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
    uninterrupted one.
    """

    def __init__(self, n: int, batch_size: int, device: torch.device, seed: int = 0) -> None:
        self.n, self.batch, self.device, self.seed = n, min(batch_size, n), device, int(seed)
        self.full = batch_size >= n
        self.epoch, self.pos = -1, n
        self._perm = torch.arange(n, device=device)[:0] if not self.full else torch.arange(n, device=device)

    def _permutation(self, epoch: int) -> Tensor:
        gen = torch.Generator(device=self.device).manual_seed(self.seed + epoch)
        return torch.randperm(self.n, device=self.device, generator=gen)

    def next(self) -> Tensor:
        if self.full:
            return self._perm
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
        if not self.full and self.epoch >= 0:
            self._perm = self._permutation(self.epoch)


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
        self._device_data: tuple[torch.device, Tensor, Tensor, Grid, IndexSampler] | None = None
        # kept in a plain dict: an nn.Module attribute would register the wrapper as a submodule
        # and duplicate every weight in the state dict
        self._compiled: dict[str, Callable[[Tensor], Tensor]] = {}
        self._step_loss = torch.zeros(())
        self.compile_network = bool(compile)

    def train_network(self) -> Callable[[Tensor], Tensor]:
        """The network as the training step calls it: compiled once when ``compile`` is on."""
        if not self.compile_network:
            return self.field.network
        if "net" not in self._compiled:
            self._compiled["net"] = torch.compile(self.field.network, dynamic=False)
        return self._compiled["net"]

    # -- data on the device ------------------------------------------------------------------
    def data(self) -> tuple[Tensor, Tensor, Grid, IndexSampler]:
        """Signal values (signal units and transformed) on this module's device, moved once."""
        dev = self.device
        if self._device_data is None or self._device_data[0] != dev:
            y = self.signal.flat().to(dev)
            with torch.no_grad():
                t = self.field.transform(y).float()
            grid = Grid(self.signal.shape, self.signal.bounds).to(dev)
            # each DDP rank draws its own batches (same seed on every rank would repeat one batch)
            seed = self.sampler_seed + 1_000_003 * self.global_rank
            sampler = IndexSampler(self.signal.numel, self.batch_size, dev, seed=seed)
            if self._sampler_state is not None:
                sampler.load_state_dict(self._sampler_state)
            self._device_data = (dev, y, t, grid, sampler)
        return self._device_data[1:]

    # -- training ------------------------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        y, t, grid, sampler = self.data()
        idx = sampler.next()
        out = self.train_network()(grid.coords(idx))
        target = (y if self.loss_fn.space == "signal" else t)
        target = target if sampler.full else target[idx]  # full batch: the values as they are, no gather copy
        if self.loss_fn.space == "signal":
            out = self.field.transform.inverse(out)
        loss = self.loss_fn(out, target)
        # self.log costs ~0.3 ms of host time per call; Lightning writes only every
        # log_every_n_steps (the same rule as its logger connector), so log only then
        if (self.global_step + 1) % self.trainer.log_every_n_steps == 0:
            self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        # counted on the device, no host sync in the step; checked together with the gradient
        # in on_before_optimizer_step (one flag per step), or here under a gradient scaler
        self._step_loss = loss.detach()
        if getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            self._flag_nonfinite(self._step_loss)
        return loss

    def _flag_nonfinite(self, value: Tensor) -> None:
        bad = ~torch.isfinite(value)
        self.nonfinite_steps += bad.long()
        newly = bad & (self.first_bad_step < 0)
        self.first_bad_loss = torch.where(newly, value.float(), self.first_bad_loss)
        self.first_bad_step.masked_fill_(newly, self.global_step)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """A finite loss with a non-finite gradient is divergence too, except under 16-mixed,
        where the gradient scaler skips such steps by design (and they are counted there)."""
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if scaler is not None:
            return
        loss = self._step_loss
        grads = [p.grad for p in self.field.parameters() if p.grad is not None]
        if grads:
            # loss + 0 * |g| is non-finite when either is (0 * inf = nan), and is the loss otherwise
            loss = loss.float() + 0.0 * torch.stack(torch._foreach_norm(grads)).sum()
        self._flag_nonfinite(loss)

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
        y, _, grid, _ = self.data()
        start, stop = (int(v) for v in batch)
        idx = torch.arange(start, stop, device=self.device)
        pred = self.field(grid.coords(idx))
        self.val_metrics.update(pred, y[start:stop])

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
        y, _, grid, _ = self.data()
        metrics = GridMetrics(self.signal).to(self.device)
        was_training = self.training
        self.eval()
        dist = torch.distributed
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
        for start, stop in chunk_ranges(self.signal.numel, chunk, rank, world):
            idx = torch.arange(start, stop, device=self.device)
            metrics.update(self.field(grid.coords(idx)), y[idx])
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
