"""What a run shows while it trains: the terminal's step bar (:class:`StepProgressBar`) and,
where there is no terminal (CI, nohup, SLURM, sweeps), plain progress lines
(:class:`ProgressPrinter`). Both only on the first process."""

from __future__ import annotations

import math
import sys
import time
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar

from nir.ranks import on_first_process


class StepProgressBar(TQDMProgressBar):
    """The terminal's progress bar: the run's optimizer steps (``step 340/800``, across epochs
    and resumes), the loss to three significant figures, the last validation PSNR labelled with
    the precision it was computed in, and no separate validation bar."""

    def __init__(self, precision: str) -> None:
        super().__init__()
        self.precision = precision

    def init_train_tqdm(self) -> Any:

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

    @on_first_process
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
