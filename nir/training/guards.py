"""What keeps a run safe and says how it ended: the final metrics (:class:`FinalMetrics`, fp32 on
the whole grid, every rank its share), the divergence guard (:class:`DivergenceGuard`, on every
rank, so all stop together), the interrupt checkpoint (:class:`InterruptCheckpoint`) and the
crash-safe checkpoint plugin (:class:`AtomicCheckpointIO`)."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from nir.checkpoint import atomic_write_bytes, load_checkpoint
from nir.ranks import first_process
from nir.training.module import evaluate_stored


class FinalMetrics(pl.Callback):
    """The run's hyperparameters at fit start (in the process that trains, so one event file),
    and at the end of training, before the logger closes, the full-grid fp32 metrics: logged as
    the ``hp/*`` scalars that the HPARAMS tab shows and kept in ``self.metrics`` for ``train``.

    The HPARAMS summary declares the ``hp/*`` metric names without writing a value at step 0
    (Lightning's ``log_hyperparams`` would chart a NaN there); the values come at the end."""

    def __init__(self, hparams: dict[str, Any], hp_metrics: list[str], store: Any = None) -> None:
        from nir.codec.storage import Store

        self.hparams, self.hp_metrics, self.store = hparams, hp_metrics, store or Store()
        self.metrics: dict[str, Any] = {}
        self._t0 = time.perf_counter()

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from torch.utils.tensorboard.summary import hparams

        self._t0 = time.perf_counter()
        if first_process() and trainer.logger is not None:
            writer = trainer.logger.experiment._get_file_writer()  # as Lightning's log_hyperparams does
            for summary in hparams(self.hparams, dict.fromkeys(self.hp_metrics, 0.0)):
                writer.add_summary(summary)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.metrics = evaluate_stored(pl_module, self.store)
        self.metrics["nonfinite_steps"] = int(pl_module.health.nonfinite_steps)
        self.metrics["fit_time_s"] = time.perf_counter() - self._t0
        if first_process() and trainer.logger is not None:
            for name, value in self.metrics.items():
                if isinstance(value, float):
                    trainer.logger.experiment.add_scalar(f"hp/{name}", value, trainer.global_step)


class Diverged(RuntimeError):
    """Raised by :class:`DivergenceGuard`; ``train`` records it and exits with one line."""

    def __init__(self, message: str, step: int, loss: float) -> None:
        super().__init__(message)
        self.step, self.loss = step, loss


class DivergenceGuard(pl.Callback):
    """Stops a run whose loss or weights became NaN/Inf.

    The loss: the module counts non-finite losses on the device without syncing; this reads the
    count every ``every`` steps (one host sync), so a bad loss is caught within ``every`` steps.
    The weights: checked before each validation and at the end of training (not every ``every``
    steps); a non-finite gradient shows in the next step's loss anyway. Checkpoints are written
    only at validation, after the weight check, so the last one is good.
    """

    def __init__(self, every: int = 25) -> None:
        self.every, self._checked = every, 0

    def _check(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if int(pl_module.health.nonfinite_steps) == 0:
            return
        step, loss = int(pl_module.health.first_bad_step), float(pl_module.health.first_bad_loss)
        precision = str(trainer.precision)
        causes = ["learning rate too high (optim.lr)", "no gradient clipping (try trainer.gradient_clip_val=1.0)"]
        if "16" in precision and "bf16" not in precision:
            causes.append("values beyond fp16's range (try trainer.precision=bf16-mixed)")
        causes += list(getattr(pl_module.field.network, "divergence_causes", ()))  # a network's own likely causes
        raise Diverged(
            f"training diverged at step {step}: loss {loss} (precision {precision}); likely causes: "
            + "; ".join(causes),
            step,
            loss,
        )

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # a call may run several optimizer steps: check when the step count crosses a multiple
        if self.every and trainer.global_step // self.every > self._checked:
            self._checked = trainer.global_step // self.every
            self._check(trainer, pl_module)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.every and not trainer.sanity_checking:
            pl_module.flag_nonfinite_weights()
            self._check(trainer, pl_module)  # never checkpoint or report a diverged model

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.every:
            pl_module.flag_nonfinite_weights()
            self._check(trainer, pl_module)


class InterruptCheckpoint(pl.Callback):
    """The training loop's side of :class:`nir.training.faults.SignalCatcher`: after each training call,
    if a signal arrived, write ``checkpoints/last.ckpt`` at this optimizer step (atomically;
    the weights checked finite first, as before any checkpoint) and stop with
    :class:`nir.training.faults.Interrupted`. ``resume=last`` or ``resume=auto`` continues from there to
    the same field as an uninterrupted run (tests/test_faults.py)."""

    def __init__(self, catcher: Any, run_dir: Path) -> None:
        self.catcher, self.run_dir = catcher, Path(run_dir)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.catcher.reclaim()  # after Lightning's signal connector wrapped SIGTERM

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *_: Any) -> None:
        if self.catcher.signum is None:
            return
        from nir.training.faults import Interrupted

        for cb in trainer.callbacks:
            if isinstance(cb, DivergenceGuard):
                pl_module.flag_nonfinite_weights()
                cb._check(trainer, pl_module)  # a diverged model is reported, never checkpointed
        path = self.run_dir / "checkpoints" / "last.ckpt"
        trainer.save_checkpoint(path)
        raise Interrupted(self.catcher.signum, trainer.global_step, trainer.max_steps, path, self.run_dir)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that writes to a temporary file and renames it into place, and
    reads checkpoints with ``weights_only=True`` (:func:`nir.checkpoint.load_checkpoint`)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        # serialised first, then written: a full disk is an OSError of the write (one line,
        # WriteError), not torch's zip writer failing with "unexpected pos" (issue 25)
        buf = io.BytesIO()
        torch.save(checkpoint, buf)
        data = buf.getbuffer()
        atomic_write_bytes(Path(path), lambda f: f.write(data))

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return load_checkpoint(Path(path), map_location)
