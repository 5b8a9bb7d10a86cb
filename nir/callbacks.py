"""Lightning callbacks (logging the figures of :mod:`nir.figures` to TensorBoard, progress lines,
final metrics, the divergence guard, the interrupt checkpoint) and the crash-safe checkpoint plugin.

Under DDP every callback runs on every rank; what each writes: the figure, magnitude and
progress callbacks only on rank 0; :class:`FinalMetrics` evaluates on every rank (each its
share of the grid, merged) and logs on rank 0; :class:`DivergenceGuard` checks on every rank, so
all stop together."""

from __future__ import annotations

import io
import math
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities import rank_zero_only

from nir.checkpoint import atomic_write_bytes, load_checkpoint
from nir.figures import error_figure, field_figure, magnitude_figure, predict_at, preview_indices
from nir.module import evaluate_stored
from nir.signal import chunk_ranges


def exact_tag(tag: str) -> str:
    """A TensorBoard custom-scalars pattern matching ``tag`` and nothing else (patterns there are
    regular expressions, so the ``+`` and ``.`` of a decade label must be escaped)."""
    return f"^{re.escape(tag)}$"


class MagnitudeLogger(pl.Callback):
    """Per-magnitude diagnostics in TensorBoard after each validation (long-tailed fields):

    - ``magnitude/log10_rel_err/<bin>``: histogram of log10 relative error per decade bin
      (built from the metric's fixed histogram, so it is exact on the whole grid);
    - ``magnitude/median/<bin>`` and ``magnitude/p90/<bin>`` scalars, grouped in one
      custom-scalars chart each;
    - ``magnitude/quantiles``: a figure of the quantiles against magnitude.
    """

    def __init__(self) -> None:
        self._layout_done = False

    @rank_zero_only
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from nir.metrics import HIST_BINS, HIST_HI, HIST_LO

        last = getattr(pl_module, "last_magnitude", None)
        if trainer.sanity_checking or trainer.logger is None or last is None:
            return
        tb = trainer.logger.experiment
        step = trainer.global_step
        table, hist = last["table"], last["hist"].numpy()
        limits = HIST_LO + (np.arange(HIST_BINS) + 1) * (HIST_HI - HIST_LO) / HIST_BINS
        centres = limits - 0.5 * (HIST_HI - HIST_LO) / HIST_BINS
        for row, counts in zip(table, hist):
            if row["count"] <= 0:
                continue
            nz = np.nonzero(counts)[0]
            sl = slice(nz[0], nz[-1] + 1)
            tb.add_histogram_raw(
                f"magnitude/log10_rel_err/{row['bin']}",
                min=float(centres[nz[0]]),
                max=float(centres[nz[-1]]),
                num=int(counts.sum()),
                sum=float((counts * centres).sum()),
                sum_squares=float((counts * centres**2).sum()),
                bucket_limits=limits[sl].tolist(),
                bucket_counts=counts[sl].tolist(),
                global_step=step,
            )
            for key in ("median", "p90"):
                tb.add_scalar(f"magnitude/{key}/{row['bin']}", row[key], step)
        if not self._layout_done:
            tb.add_custom_scalars(
                {
                    "per-magnitude relative error": {
                        # the tags are regular expressions there: escaped, or "1e+00..1e+01" never matches itself
                        key: ["Multiline", [exact_tag(f"magnitude/{key}/{r['bin']}") for r in table]]
                        for key in ("median", "p90")
                    }
                }
            )
            self._layout_done = True
        tb.add_figure("magnitude/quantiles", magnitude_figure(table), step)


class ReconstructionLogger(pl.Callback):
    """Logs the reconstruction, the target (once) and an error map after each validation.

    Images: the grid is strided to at most ``max_side`` pixels per axis. Long-tailed fields:
    the figure of :func:`field_figure` (1-D profile, or central slices of a 3-D field).
    Values are shown over ``data.value_range``; the error map shows ``|pred - target|`` averaged
    over channels, scaled so that white-hot (1.0 of the colormap) is ``error_scale`` of the range.
    """

    def __init__(self, max_side: int = 512, error_scale: float = 0.1) -> None:
        self.max_side, self.error_scale = max_side, error_scale
        self._target_logged = False
        self._target_mip: list[np.ndarray] | None = None

    def target_projections(self, pl_module: pl.LightningModule) -> list[np.ndarray] | None:
        """The target's maximum-intensity projections (3-D long-tailed fields), computed once
        from the whole signal in chunks."""
        from nir.metrics import MaxProjections

        if getattr(pl_module, "val_projections", None) is None:
            return None
        if self._target_mip is None:
            data = pl_module.batches()
            mip = MaxProjections(data.signal.shape).to(pl_module.device)
            for start, stop in chunk_ranges(data.grid.numel, 1 << 18):
                mip.update(start, stop, data.values_range(start, stop))
            self._target_mip = [p.cpu().numpy() for p in mip.compute()]
        return self._target_mip

    @rank_zero_only
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.logger is None:
            return
        signal = pl_module.data.signal
        if signal.long_tailed:
            fig = field_figure(pl_module, self.max_side, self.target_projections(pl_module))
            if fig is not None:
                trainer.logger.experiment.add_figure("field/reconstruction", fig, trainer.global_step)
            return
        idx, shape = preview_indices(signal.shape, self.max_side)
        pred, target = predict_at(pl_module, idx)
        pred, target = pred.reshape(*shape, -1), target.reshape(*shape, -1)
        lo, hi = signal.meta.get("value_range", (float(target.min()), float(target.max())))
        tb = trainer.logger.experiment
        step = trainer.global_step

        def as_img(a: np.ndarray) -> np.ndarray:
            a = np.clip((a - lo) / (hi - lo), 0, 1)
            return a if a.shape[-1] == 3 else np.repeat(a[..., :1], 3, -1)

        if not self._target_logged:
            tb.add_image("image/target", as_img(target), step, dataformats="HWC")
            self._target_logged = True
        tb.add_image("image/reconstruction", as_img(pred), step, dataformats="HWC")
        tb.add_figure(
            "image/abs_error", error_figure(np.abs(pred - target).mean(-1), (hi - lo) * self.error_scale), step
        )


class StepProgressBar(TQDMProgressBar):
    """The terminal's progress bar: the run's optimizer steps (``step 340/800``, across epochs
    and resumes), the loss to three significant figures, the last validation PSNR labelled with
    the precision it was computed in, and no separate validation bar."""

    def __init__(self, precision: str) -> None:
        super().__init__()
        self.precision = precision

    def init_train_tqdm(self) -> Any:
        import sys

        from pytorch_lightning.callbacks.progress.tqdm_progress import Tqdm

        return Tqdm(
            total=self.trainer.max_steps,
            initial=self.trainer.global_step,
            bar_format="step {n_fmt}/{total_fmt} |{bar:24}| {elapsed}<{remaining}{postfix}",
            disable=self.is_disabled,
            leave=True,
            dynamic_ncols=True,
            file=sys.stdout,
            smoothing=0,
        )

    def on_train_epoch_start(self, trainer: pl.Trainer, *_: Any) -> None:
        bar = self.train_progress_bar
        if bar.total != trainer.max_steps:
            bar.reset(total=trainer.max_steps)
        bar.n = trainer.global_step
        bar.refresh()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *_: Any) -> None:
        n = trainer.global_step
        if self._should_update(n, trainer.max_steps):
            self.train_progress_bar.n = n
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=True)

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        m = trainer.callback_metrics
        out: dict[str, Any] = {}
        if "train/loss" in m:
            out["loss"] = f"{float(m['train/loss']):#.3g}"
        if "val/psnr" in m and math.isfinite(float(m["val/psnr"])):
            out[f"val psnr ({self.precision})"] = f"{float(m['val/psnr']):.2f} dB"
        if "val/worst_decade_median" in m:
            out["worst decade"] = f"{float(m['val/worst_decade_median']):.3g}"
        return out

    # validation is one whole-grid pass per val_check_interval: its own bar would only flicker
    def on_validation_start(self, *_: Any) -> None:
        pass

    def on_validation_batch_start(self, *_: Any, **__: Any) -> None:
        pass

    def on_validation_batch_end(self, *_: Any, **__: Any) -> None:
        pass

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._train_progress_bar is not None and trainer.state.fn == "fit":
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=True)


class ProgressPrinter(pl.Callback):
    """One plain line per validation, where a bar would not render (stdout not a terminal: CI,
    nohup, SLURM, multiruns) or is turned off (``trainer.enable_progress_bar=false``)."""

    def __init__(self, precision: str = "32") -> None:
        self.precision = precision
        self._t0 = time.perf_counter()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0 = time.perf_counter()

    @rank_zero_only
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        m = trainer.callback_metrics
        loss = m.get("train/loss")
        psnr = m.get("val/psnr")
        parts = [f"step {trainer.global_step}/{trainer.max_steps}", f"{time.perf_counter() - self._t0:7.1f}s"]
        if loss is not None:
            parts.append(f"loss {float(loss):#.3g}")
        if psnr is not None and math.isfinite(float(psnr)):
            parts.append(f"val psnr {float(psnr):.2f} dB")
        worst = m.get("val/worst_decade_median")
        if worst is not None:
            parts.append(f"worst-decade median rel. error {float(worst):.3g}")
        parts.append(f"({self.precision})")
        print("  ".join(parts), flush=True)


class NirTensorBoardLogger(TensorBoardLogger):
    """Lightning's TensorBoard logger without its ``epoch`` scalar (nir trains in steps; the
    epoch is a constant 0 that would head the scalars page), with optimizer steps on the x axis.

    Lightning logs at its count of training calls; with ``steps_per_call=K`` a call ``c`` ends
    after optimizer step ``(c + 1) K``, so a point logged at ``c`` is drawn at ``(c + 1) K - 1``,
    where a K=1 run draws the same step (every call has K steps: :mod:`nir.steps`)."""

    def __init__(self, *args: Any, steps_per_call: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.steps_per_call = int(steps_per_call)
        self.failed: str | None = None

    # TensorBoard is a view of the run, not its result: a write that fails (a full disk, an I/O
    # error, in the writer's thread or here) prints one line and turns TensorBoard off for the
    # rest of the run; training, checkpoints, the field and metrics.json go on (docs/troubleshooting.md)
    @property
    def experiment(self) -> Any:
        exp = TensorBoardLogger.experiment.fget(self)
        if exp is not None and not isinstance(exp, _Guarded):
            self._experiment = exp = _Guarded(exp, self)
        return exp

    def tensorboard_failed(self, e: BaseException) -> None:
        if self.failed is None:
            from nir.checkpoint import free_space

            self.failed = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            print(
                f"warning: TensorBoard events in {self.log_dir} could not be written ({self.failed}; "
                f"{free_space(Path(self.log_dir))} free there); TensorBoard is off for the rest of the run, "
                "training goes on and the field and metrics.json will be saved",
                file=sys.stderr,
                flush=True,
            )

    @rank_zero_only
    def save(self) -> None:  # hparams.yaml
        if self.failed is None:
            try:
                super().save()
            except OSError as e:
                self.tensorboard_failed(e)

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if step is not None:
            step = (int(step) + 1) * self.steps_per_call - 1
        super().log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step)


class _Guarded:
    """A TensorBoard writer (or its file writer) whose calls never raise: the first failure is
    reported through ``logger.tensorboard_failed``, later calls do nothing."""

    def __init__(self, target: Any, logger: NirTensorBoardLogger) -> None:
        self._target, self._logger = target, logger

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            if self._logger.failed is not None:
                return None
            try:
                out = attr(*args, **kwargs)
            except Exception as e:  # OSError, or the writer thread's error re-raised here
                self._logger.tensorboard_failed(e)
                return None
            return _Guarded(out, self._logger) if hasattr(out, "add_event") else out

        return call


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
        if trainer.is_global_zero and trainer.logger is not None:
            writer = trainer.logger.experiment._get_file_writer()  # as Lightning's log_hyperparams does
            for summary in hparams(self.hparams, dict.fromkeys(self.hp_metrics, 0.0)):
                writer.add_summary(summary)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.metrics = evaluate_stored(pl_module, self.store)
        self.metrics["nonfinite_steps"] = int(pl_module.health.nonfinite_steps)
        self.metrics["fit_time_s"] = time.perf_counter() - self._t0
        if trainer.is_global_zero and trainer.logger is not None:
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
    """The training loop's side of :class:`nir.faults.SignalCatcher`: after each training call,
    if a signal arrived, write ``checkpoints/last.ckpt`` at this optimizer step (atomically;
    the weights checked finite first, as before any checkpoint) and stop with
    :class:`nir.faults.Interrupted`. ``resume=last`` or ``resume=auto`` continues from there to
    the same field as an uninterrupted run (tests/test_faults.py)."""

    def __init__(self, catcher: Any, run_dir: Path) -> None:
        self.catcher, self.run_dir = catcher, Path(run_dir)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.catcher.reclaim()  # after Lightning's signal connector wrapped SIGTERM

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *_: Any) -> None:
        if self.catcher.signum is None:
            return
        from nir.faults import Interrupted

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
