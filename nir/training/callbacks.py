"""The TensorBoard views of a run: the figures of :mod:`nir.figures` (reconstructions, error
maps, slices), the per-decade histograms and errors, and the logger that counts steps in
optimizer steps and never lets a failing event file stop the run. The progress display is
:mod:`nir.training.progress`; the final metrics, the guards and the checkpoint plugin are
:mod:`nir.training.guards`.

Under DDP every callback runs on every rank; the views write only on the first process."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger

from nir.data.signal import chunk_ranges
from nir.figures import error_figure, field_figure, magnitude_figure, predict_at, preview_indices
from nir.ranks import on_first_process


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

    @on_first_process
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from nir.training.metrics import HIST_BINS, HIST_HI, HIST_LO

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
        from nir.training.metrics import MaxProjections

        if getattr(pl_module, "val_projections", None) is None:
            return None
        if self._target_mip is None:
            data = pl_module.batches()
            mip = MaxProjections(data.signal.shape).to(pl_module.device)
            for start, stop in chunk_ranges(data.grid.numel, 1 << 18):
                mip.update(start, stop, data.values_range(start, stop))
            self._target_mip = [p.cpu().numpy() for p in mip.compute()]
        return self._target_mip

    @on_first_process
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


class NirTensorBoardLogger(TensorBoardLogger):
    """Lightning's TensorBoard logger without its ``epoch`` scalar (nir trains in steps; the
    epoch is a constant 0 that would head the scalars page), with optimizer steps on the x axis.

    Lightning logs at its count of training calls; with ``steps_per_call=K`` a call ``c`` ends
    after optimizer step ``(c + 1) K``, so a point logged at ``c`` is drawn at ``(c + 1) K - 1``,
    where a K=1 run draws the same step (every call has K steps: :mod:`nir.training.steps`)."""

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

    @on_first_process
    def save(self) -> None:  # hparams.yaml
        if self.failed is None:
            try:
                super().save()
            except OSError as e:
                self.tensorboard_failed(e)

    @on_first_process
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
