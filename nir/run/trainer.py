"""The Lightning Trainer of a run: its arguments from ``cfg.trainer`` (steps counted in calls),
its callbacks as the config lists them (``callbacks:`` in conf/train.yaml, the way
lightning-hydra-template lists them), the TensorBoard logger with the HPARAMS columns, and the
guards of the job it runs in (DDP inside a multirun, threads under joblib)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf, open_dict

from nir.errors import require
from nir.run.config import build, groups
from nir.run.settings import Job

if TYPE_CHECKING:
    from nir.run.parts import Parts

log = logging.getLogger("nir")


def _terminal() -> bool:
    """Is stdout a terminal wide enough for a progress bar (a pty of width 0 shows none)?"""
    try:
        return sys.stdout.isatty() and os.get_terminal_size(sys.stdout.fileno()).columns >= 40
    except (OSError, ValueError, AttributeError):
        return False


def _check_strategy(trainer_kwargs: dict[str, Any], multirun: bool) -> None:
    """Refuse script-relaunching DDP inside a multirun: its child processes re-run the whole sweep."""
    strategy = str(trainer_kwargs.get("strategy", "auto"))
    relaunch = strategy.startswith("ddp") and not strategy.startswith(("ddp_spawn", "ddp_notebook"))
    require(
        not (multirun and relaunch),
        f"trainer.strategy={strategy} inside a multirun would re-run the whole sweep in every DDP process; "
        "run DDP jobs one at a time (no -m), or use trainer.strategy=ddp_spawn in sweeps",
    )


def _threads_for_parallel_jobs(hc: Any) -> None:
    """Under Hydra's joblib launcher, give each job cores / n_jobs threads (no oversubscription)."""
    import torch

    launcher = hc.launcher if hc is not None else None
    if launcher is None or "Joblib" not in str(launcher.get("_target_", "")):
        return
    cores = os.cpu_count() or 1
    n_jobs = int(launcher.get("n_jobs", -1))
    n_jobs = cores if n_jobs <= 0 else n_jobs
    threads = max(1, cores // n_jobs)
    torch.set_num_threads(threads)
    log.info("joblib launcher with %d parallel jobs on %d cores: %d torch thread(s) per job", n_jobs, cores, threads)


#: HPARAMS columns every run logs after its swept and overridden keys (the same set in every job)
HPARAM_GROUPS = ["model", "data", "loss", "transform", "sampling", "optim", "trainer"]


HPARAM_KEYS = ["optim.lr", "trainer.max_steps", "batch_size", "trainer.precision", "seed"]


def run_hparams(
    cfg: DictConfig, parts: Parts, choices: dict[str, Any], swept: Sequence[str], task: Sequence[str]
) -> dict[str, Any]:
    """The HPARAMS tab's columns, the same keys in every job of a sweep: the swept keys first
    (TensorBoard shows the first columns), then the job's other overrides, the chosen option of
    each group and the keys most runs change, plus the parameter count. The full config is in
    ``config.yaml``."""
    keys: list[str] = []
    for k in [*swept, *(o.split("=", 1)[0].lstrip("+~") for o in task if "=" in o), *HPARAM_GROUPS, *HPARAM_KEYS]:
        if k not in keys and not k.startswith("hydra"):
            keys.append(k)
    out: dict[str, Any] = {}
    for k in keys:
        if k in HPARAM_GROUPS or k in groups():
            v = parts.settings.chosen.get(k) or choices.get(k)  # what an auto rule chose, else the option named
        elif k == "trainer.precision":
            v = parts.precision
        else:
            v = OmegaConf.select(cfg, k, default=None)
        out[k] = v if isinstance(v, (bool, int, float, str)) else "null" if v is None else str(v)
    out["num_params"] = parts.field.num_parameters()
    return out


def run_name(hparams: dict[str, Any], swept: Sequence[str]) -> str:
    """A sweep job's TensorBoard run name: its swept values (``model=fourier,optim.lr=0.01``)."""
    name = ",".join(f"{k}={hparams.get(k)}" for k in swept)
    return "".join(c if c.isalnum() or c in "=,.-_+" else "_" for c in name)


def _logger_and_final_metrics(cfg: DictConfig, parts: Parts, run_dir: Path, choices: dict[str, Any]) -> tuple[Any, Any]:
    """The TensorBoard logger (a sweep job's run named after its swept values) and the
    callback that logs the HPARAMS columns and the final metrics."""
    from nir.training.callbacks import NirTensorBoardLogger
    from nir.training.guards import FinalMetrics

    job: Job = parts.settings.job
    swept = list(job.swept)
    hparams = run_hparams(cfg, parts, choices, swept, list(job.hydra.overrides.task) if job.hydra is not None else [])
    # a sweep job's events go to tb/<its swept values>, so TensorBoard names the run after them
    version = run_name(hparams, swept) if swept else ""
    logger = NirTensorBoardLogger(
        save_dir=str(run_dir), name="tb", version=version, default_hp_metric=False,
        steps_per_call=parts.module.loop.k,
    ) if cfg.log.get("tensorboard", True) else False  # fmt: skip
    extra = ["hp/psnr_log", "hp/worst_decade_median"] if parts.signal.long_tailed else []
    extra += ["hp/ssim"] if parts.signal.is_image else []
    extra += ["hp/psnr_heldout", "hp/psnr_train"] if parts.data.holdout is not None else []
    extra += ["hp/compression_ratio", "hp/bits_per_sample", "hp/bits_per_parameter"]
    return logger, FinalMetrics(hparams, ["hp/psnr", "hp/fit_time_s", *extra], parts.store)


def trainer_arguments(cfg: DictConfig, parts: Parts) -> dict[str, Any]:
    """``pl.Trainer``'s keyword arguments from ``cfg.trainer``: the resolved precision; with K
    optimizer steps per call, the logging and validation intervals in calls (Lightning counts
    calls); no ``gradient_clip_val`` (the module clips: manual optimisation)."""
    kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    kwargs["precision"] = parts.precision
    k = parts.module.loop.k
    every = int(kwargs.get("log_every_n_steps", 50) or 0)  # 0: no scalar logs
    kwargs["log_every_n_steps"] = max(1, every // k) if every else 0
    if kwargs.get("val_check_interval"):
        kwargs["val_check_interval"] = max(1, int(kwargs["val_check_interval"]) // k)
    kwargs.pop("gradient_clip_val", None)
    return kwargs


def configured_callbacks(cfg: DictConfig, run_dir: Path) -> list[Any]:
    """The callbacks ``cfg.callbacks`` lists, in its order (``name: node``; ``callbacks.name=null``
    drops one, a node with ``enabled: false`` is left out, a relative ``dirpath`` is inside the run
    directory)."""
    out = []
    for name, node in (cfg.get("callbacks") or {}).items():
        if node is None or node.get("enabled", True) is False:
            continue
        node = node.copy()
        OmegaConf.set_readonly(node, False)  # the run's config is read-only; this copy is the callback's
        with open_dict(node):
            node.pop("enabled", None)
            if node.get("dirpath") is not None and not Path(str(node.dirpath)).is_absolute():
                node.dirpath = str(run_dir / str(node.dirpath))
        out.append(build(node, f"callbacks.{name}"))
    return out


def build_trainer(
    parts: Parts,
    run_dir: Path,
    extra_callbacks: Sequence[Any] = (),
    choices: dict[str, Any] | None = None,
) -> tuple[Any, Any]:
    """The Lightning trainer with the configured callbacks, the final metrics, the progress
    display (a bar on a terminal, one run; elsewhere, as CI, nohup, SLURM and sweeps, plain
    lines) and crash-safe checkpoints; returns it and the :class:`~nir.training.guards.FinalMetrics`
    callback that holds the end-of-run metrics."""
    import pytorch_lightning as pl

    from nir.training.guards import AtomicCheckpointIO
    from nir.training.progress import ProgressPrinter, StepProgressBar

    cfg = parts.settings.config
    job: Job = parts.settings.job
    trainer_kwargs = trainer_arguments(cfg, parts)
    _check_strategy(trainer_kwargs, job.multirun)
    _threads_for_parallel_jobs(job.hydra)
    logger, final_metrics = _logger_and_final_metrics(cfg, parts, run_dir, choices or {})
    bar = bool(trainer_kwargs.get("enable_progress_bar", True)) and _terminal() and not job.multirun
    trainer_kwargs["enable_progress_bar"] = bar
    progress = StepProgressBar(parts.precision) if bar else ProgressPrinter(parts.precision)
    trainer = pl.Trainer(
        **trainer_kwargs,
        logger=logger,
        callbacks=[*configured_callbacks(cfg, run_dir), final_metrics, progress, *extra_callbacks],
        plugins=[AtomicCheckpointIO()],
        default_root_dir=str(run_dir),
        enable_model_summary=False,
    )
    return trainer, final_metrics
