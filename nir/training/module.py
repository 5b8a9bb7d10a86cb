"""The Lightning module: glue between a :class:`~nir.reuse.field.Field`, its loss, the training data
(:mod:`nir.training.batches`) and Lightning's loop. Batches in, loss out; whole-grid validation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from nir.checkpoint import FORMAT
from nir.codec import storage
from nir.reuse.field import Field
from nir.training.batches import TrainingData
from nir.training.bounded import bound_residual, stored_sizes
from nir.training.metrics import GridMetrics, MaxProjections, image_ssim
from nir.training.optim import Adam
from nir.training.steps import StepHealth, StepLoop


@torch.no_grad()
def batch_psnr(out: Tensor, target: Tensor, data: TrainingData, transform: nn.Module, loss: nn.Module) -> Tensor:
    """PSNR of a training batch in signal units with the run's R (``train/psnr``): a point per
    log step between the whole-grid validations, on the training samples and precision.
    ``out`` and ``target`` are in the loss's space, as the training step has them."""
    with torch.autocast(out.device.type, enabled=False):
        p, y = out.detach().float(), target.float()
        if getattr(loss, "space", "transformed") != "signal" and data.transformed_copy:
            p, y = transform.inverse(p), transform.inverse(y)
        return 10 * torch.log10(data.stats.range**2 / ((p - y) ** 2).mean())


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes (0, 1 without torch.distributed)."""
    dist = torch.distributed
    return (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)


def whole_image_ssim(field: Field, data: TrainingData, chunk: int) -> float | None:
    """SSIM of the field against an image signal: SSIM needs the whole image, so this is one
    more grid pass (on every rank under DDP; images are small)."""
    shape = (*data.signal.shape, data.signal.channels)
    pred = torch.cat([field(c) for _, _, c in data.grid.chunks(chunk)]).reshape(shape)
    return image_ssim(pred, data.values_range(0, data.grid.numel).reshape(shape), data.stats.range)


class FieldModule(pl.LightningModule):
    """Trains ``field`` on ``data`` with ``loss``.

    Args:
        field: network + transform + box.
        loss: ``(pred, target) -> scalar`` in the space the loss declares.
        data: the training values and their sampler (never in checkpoints; the sampler state is).
        optim: the optimiser settings (:class:`~nir.training.optim.Adam`).
        max_steps: length of the learning-rate schedule.
        compile: the training forward through ``torch.compile`` (docs/performance.md); validation,
            evaluation and the saved field stay eager (a loaded field carries no compiled state).
        steps_per_call, cuda_graph: optimizer steps per training call (manual optimisation) and
            their capture in a CUDA graph (:class:`~nir.training.steps.StepLoop`).
        clip: gradient-norm clipping (``trainer.gradient_clip_val``; Lightning clips only in
            automatic optimisation).
        stored: what training does for the stored field (:class:`~nir.storage.StoredTraining`).
    """

    def __init__(
        self,
        field: Field,
        loss: nn.Module,
        data: TrainingData,
        optim: Adam | None = None,
        max_steps: int = 1000,
        compile: bool = False,
        steps_per_call: int = 1,
        cuda_graph: bool | str = "auto",
        clip: float | None = None,
        stored: storage.StoredTraining | None = None,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False  # each of a call's K optimizer steps counted by Lightning
        self.loop = StepLoop(steps_per_call, cuda_graph, clip)  # nir.training.steps: K steps per call, CUDA graph
        self.field, self.loss_fn, self.data = field, loss, data
        self.optim, self.max_steps = optim or Adam(), max_steps
        self.val_metrics, self.last_magnitude = GridMetrics(data.stats, data.holdout is not None), None
        # volumes' maximum-intensity projections, exact from the validation pass (TensorBoard figure)
        volume, self.last_projections = data.signal.long_tailed and data.signal.ndim >= 3, None
        self.val_projections = MaxProjections(data.signal.shape) if volume else None
        self.health = StepHealth()  # non-finite losses, skipped fp16 steps: counted on the device
        # a plain dict: as an attribute the compiled wrapper would duplicate every weight in the state dict
        self._compiled: dict[str, Callable[[Tensor], Tensor]] = {}
        self.compile_network = bool(compile)
        self.stored = stored or storage.StoredTraining(storage.Store(), max_steps, 1)  # QAT, rate term, bound

    def batches(self) -> TrainingData:
        """The training data, on this module's device (moved there once)."""
        return self.data.to(self.device, self.global_rank)

    def train_network(self) -> Callable[[Tensor], Tensor]:
        """The network as the training step calls it: on its rounded parameters during
        quantisation-aware training (eager, compiled or not), compiled once when ``compile`` is on."""
        if self.stored.qat_on:
            return lambda coords: self.stored.forward(self.field.network, coords)
        if not self.compile_network:
            return self.field.network
        if "net" not in self._compiled:
            self._compiled["net"] = torch.compile(self.field.network, dynamic=False)
        return self._compiled["net"]

    # -- training: K optimizer steps per call, eager or replayed from a CUDA graph (nir.training.steps) ---
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        if self.stored.begins(self.global_step):  # from here the forward runs on the rounded parameters
            self.loop.reset()
        return self.loop.run(self, self.optimizers(), self.lr_schedulers(), self.batches())

    def forward_loss(self, data: TrainingData, idx: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        out = self.train_network()(data.grid.coords(idx))
        if self.loss_fn.space == "signal":
            out = self.field.transform.inverse(out)
        loss = self.loss_fn(out, target)
        if self.stored.rate_weight:  # estimated coded bits per signal value, weighted
            loss = loss + self.stored.rate(self.field.network)
        return loss, out

    def eager_step(self, opt: Any, data: TrainingData, idx: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        loss, out = self.forward_loss(data, idx, target)
        self.health.flag(loss.detach(), self.global_step)  # on the device: no host sync in the step
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        self.health.track_scale(getattr(self.trainer.precision_plugin, "scaler", None))
        return loss, out

    def on_before_optimizer_step(self, optimizer: Any) -> None:  # after the scaler's unscale
        if self.loop.clip:
            self.clip_gradients(optimizer, gradient_clip_val=self.loop.clip, gradient_clip_algorithm="norm")

    def log_step(self, loss: Tensor, out: Tensor, target: Tensor, data: TrainingData, raw: Any) -> None:
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        for group in raw.param_groups:  # the rate this step used: lr-Adam, or lr-Adam/<group> for named groups
            tag = "lr-Adam" + (f"/{group['name']}" if "name" in group else "")
            self.log(tag, float(group["lr"]), on_step=True, on_epoch=False)
        self.log("train/psnr", batch_psnr(out, target, data, self.field.transform, self.loss_fn), on_step=True)
        if getattr(self.trainer.precision_plugin, "scaler", None) is not None:  # 16-mixed: scale, skips
            self.log("train/grad_scale", self.health.last_scale, on_step=True, on_epoch=False)
            self.log("train/skipped_steps", self.health.skipped_steps.float(), on_step=True, on_epoch=False)

    @torch.no_grad()
    def flag_nonfinite_weights(self) -> None:
        """Count a non-finite weight as a divergence at the current step: called before every
        validation (so no checkpoint holds one) and at the end of training. Under 16-mixed the
        gradient scaler skips non-finite steps, so weights stay finite there."""
        params = list(self.field.parameters())
        if params:
            total = torch.stack(torch._foreach_norm(params)).sum()
            self.health.flag(torch.where(torch.isfinite(total), torch.zeros_like(total), total), self.global_step)

    def configure_optimizers(self) -> Any:
        return self.optim.build(self.field.network, self.max_steps)

    # -- validation on the whole grid ----------------------------------------------------------
    def validation_step(self, batch: tuple[int, int], batch_idx: int) -> None:
        data = self.batches()
        start, stop = (int(v) for v in batch)
        pred = self.field(data.grid.coords_range(start, stop))
        self.val_metrics.update(pred, data.values_range(start, stop), data.held_mask(start, stop))
        if self.val_projections is not None:
            self.val_projections.update(start, stop, pred)

    def on_validation_epoch_end(self) -> None:
        for name, value in self.val_metrics.compute().items():
            self.log(f"val/{name}", value, prog_bar=(name == "psnr"), sync_dist=False)
        self.log("train/nonfinite_steps", self.health.nonfinite_steps.float(), sync_dist=True, reduce_fx="sum")
        if self.val_metrics.long_tailed:  # kept for the TensorBoard callback (plain values)
            bins = self.val_metrics.bins
            self.last_magnitude = {"table": bins.table(), "hist": bins.compute()["hist"].detach().cpu()}
        self.val_metrics.reset()
        if self.val_projections is not None:
            self.last_projections = [p.detach().cpu() for p in self.val_projections.compute()]
            self.val_projections.reset()

    def evaluate(self, chunk: int = 65536) -> dict[str, Any]:
        """Metrics of the field on the whole grid (:func:`evaluate_grid`)."""
        return evaluate_grid(self, chunk)

    # -- checkpoints carry a plain-value spec and the sampler state, never config objects -------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["nir_format"] = FORMAT
        checkpoint["nir_spec"] = self.field.spec
        checkpoint["nir_steps_per_call"] = self.loop.k
        if self.data.state_dict() is not None:
            checkpoint["nir_sampler"] = self.data.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.loop.check_resume(int(checkpoint.get("nir_steps_per_call", 1)))
        self.data.load_state_dict(checkpoint.get("nir_sampler"))


@torch.no_grad()
def evaluate_grid(module: FieldModule, chunk: int = 65536) -> dict[str, Any]:
    """Metrics of the module's field on the whole grid, in fp32 (outside autocast), as a user
    loading the field would see them. The same grid pass as ``Field.sample``; under DDP every
    rank evaluates its share of chunks and the metric states are merged."""
    data = module.batches()
    metrics = GridMetrics(data.stats, data.holdout is not None).to(module.device)
    was_training = module.training
    module.eval()
    for start, stop, coords in data.grid.chunks(chunk, *rank_and_world()):
        metrics.update(module.field(coords), data.values_range(start, stop), data.held_mask(start, stop))
    results = metrics.results()
    if data.signal.is_image:
        results["ssim"] = whole_image_ssim(module.field, data, chunk)
    module.train(was_training)
    return results


def evaluate_stored(pl_module: FieldModule, store: storage.Store) -> dict[str, Any]:
    """The final metrics of the field as it will be stored: its parameters rounded to
    ``store.dtype`` in place (what ``field.nir`` will hold), evaluated in fp32, with the bounded
    residual's measurement under a bound and the stored sizes (:func:`nir.training.bounded.stored_sizes`)."""
    field, dtype, scale = pl_module.field, store.dtype, store.int8_scale
    if dtype != "float32":
        field.round_to_storage(dtype, scale)
    metrics = pl_module.evaluate()
    signal = pl_module.data.signal
    if pl_module.stored.bound is not None:
        metrics.update(bound_residual(field, signal, pl_module.stored.bound))
    metrics.update(stored_sizes(field, signal, store))
    return metrics
