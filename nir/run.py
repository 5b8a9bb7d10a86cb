"""One training run, in the order it happens: prepare the run directory, build the parts, build
the trainer, fit with the guards, collect the metrics, write the run. ``nir-train`` (through
Hydra) and ``nir.fit`` (from Python) both call :func:`train_field`.

Library calls leave the process as they found it: no allocator settings (``nir-train`` sets
them, :mod:`nir.allocator`), and Lightning's noise is silenced only inside the run.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from nir.budget import fit_to_budget
from nir.config import ALIASES, build, check_config, compose_config, groups, kwargs_of, preset_line
from nir.errors import NirError, require

log = logging.getLogger("nir")


@dataclass
class Parts:
    """What a run trains: the signal, its training data, the field, the Lightning module."""

    signal: Any
    data: Any
    field: Any
    module: Any
    precision: str
    loss_option: str | None = None  # what loss=auto chose (None: the loss was named)


def resolve_precision(precision: Any, accelerator: str) -> str:
    """``"auto"``: ``bf16-mixed`` where the hardware has native bf16 (CUDA with bf16, or a CPU
    with AMX / AVX512-BF16, where oneDNN runs bf16 matmuls natively), else ``"32"``.
    Any other value is passed to Lightning unchanged."""
    import torch

    if str(precision) != "auto":
        return str(precision)
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32"
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native = False
    return "bf16-mixed" if native else "32"


def hydra_job() -> tuple[bool, Any]:
    """(is this a multirun job, Hydra's config) — (False, None) outside Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        return hc.mode == RunMode.MULTIRUN, hc
    except Exception:
        return False, None


def _terminal() -> bool:
    """Is stdout a terminal wide enough for a progress bar (a pty of width 0 shows none)?"""
    try:
        return sys.stdout.isatty() and os.get_terminal_size(sys.stdout.fileno()).columns >= 40
    except (OSError, ValueError, AttributeError):
        return False


def _check_strategy(trainer_kwargs: dict[str, Any]) -> None:
    """Refuse script-relaunching DDP inside a multirun: its child processes re-run the whole sweep."""
    strategy = str(trainer_kwargs.get("strategy", "auto"))
    multirun, _ = hydra_job()
    relaunch = strategy.startswith("ddp") and not strategy.startswith(("ddp_spawn", "ddp_notebook"))
    require(
        not (multirun and relaunch),
        f"trainer.strategy={strategy} inside a multirun would re-run the whole sweep in every DDP process; "
        "run DDP jobs one at a time (no -m), or use trainer.strategy=ddp_spawn in sweeps",
    )


def _threads_for_parallel_jobs() -> None:
    """Under Hydra's joblib launcher, give each job cores / n_jobs threads (no oversubscription)."""
    import torch

    _, hc = hydra_job()
    launcher = hc.launcher if hc is not None else None
    if launcher is None or "Joblib" not in str(launcher.get("_target_", "")):
        return
    cores = os.cpu_count() or 1
    n_jobs = int(launcher.get("n_jobs", -1))
    n_jobs = cores if n_jobs <= 0 else n_jobs
    threads = max(1, cores // n_jobs)
    torch.set_num_threads(threads)
    log.info("joblib launcher with %d parallel jobs on %d cores: %d torch thread(s) per job", n_jobs, cores, threads)


def _seed_all(seed: int) -> None:
    """Seed python, numpy and torch (all devices), as Lightning's seed_everything does."""
    import random

    import numpy as np
    import torch

    os.environ["PL_GLOBAL_SEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - seeds the legacy global generator that user code may use
    torch.manual_seed(seed)


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float (an empty bin's NaN, an infinite PSNR) as ``None``, so
    it is strict JSON (``null``), and tensors / numpy scalars as plain numbers."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # torch / numpy scalar
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: Path, obj: Any) -> None:
    """Strict JSON (``allow_nan=False``: non-finite numbers are written as ``null``), atomically."""
    from nir.checkpoint import atomic_write_text

    atomic_write_text(path, json.dumps(json_safe(obj), indent=2, allow_nan=False) + "\n")


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object nir wrote (``metrics.json``, a sweep record); a file that is not one
    (truncated, corrupt, foreign) is one line naming it."""
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise NirError(
            f"{what} {str(path)!r} cannot be read ({type(e).__name__}); it is corrupt or truncated: remove it or re-run"
        ) from None
    require(isinstance(obj, dict), f"{what} {str(path)!r} is not a JSON object; it was not written by nir")
    return obj


def write_hydra_record(run_dir: Path, cfg: DictConfig, overrides: Sequence[str], hydra_cfg: Any = None) -> None:
    """``.hydra/config.yaml``, ``overrides.yaml`` (and ``hydra.yaml`` under Hydra): the record
    Hydra keeps of a job, written by nir (``hydra.output_subdir: null``) once the run holds its
    directory's lock, atomically, so a refused second run or a full disk leaves the first intact."""
    from nir.checkpoint import atomic_write_text

    record = run_dir / ".hydra"
    atomic_write_text(record / "config.yaml", OmegaConf.to_yaml(cfg))
    atomic_write_text(record / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(list(overrides))))
    if hydra_cfg is not None:
        atomic_write_text(record / "hydra.yaml", OmegaConf.to_yaml(OmegaConf.create({"hydra": hydra_cfg})))


# ----------------------------------------------------------------------------- the run's steps


def prepare_run_dir(cfg: DictConfig, run_dir: str | Path | None) -> Path:
    """Check the config, create the run directory (Hydra's output dir by default) and make
    sure it is writable, then seed everything."""
    if run_dir is None:
        from hydra.core.hydra_config import HydraConfig

        run_dir = HydraConfig.get().runtime.output_dir
    run_dir = Path(run_dir)
    check_config(cfg)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".nir-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise NirError(
            f"run directory {str(run_dir)!r} is not writable ({e.strerror}); choose another with hydra.run.dir=..."
        ) from None
    _seed_all(int(cfg.seed))
    return run_dir


def resolve_auto_loss(cfg: DictConfig, signal: Any) -> str:
    """``loss=auto`` (``data=array``'s default): put the chosen loss (and its transform) into
    ``cfg`` from the signal's exact extremes, print the decision in one line, return the option."""
    from omegaconf import open_dict

    from nir.config import option_nodes
    from nir.losses import auto_choice
    from nir.transforms import floor_from_data

    st = signal.summary()
    minimum = float(st["min"].min())
    floor = floor_from_data(signal.fit_sample(), 1e-7) if minimum <= 0 else 0.0
    choice, why = auto_choice(
        float(st["absmin"]), float(st["absmax"]), minimum, float(cfg.loss.get("min_decades", 3.0)), floor
    )
    own = str(cfg.transform.get("_target_", "nir.transforms.Identity"))
    if choice != "mse" and own != "nir.transforms.Identity" and not (choice == "log_mse" and own.endswith(".Log")):
        choice = "mse"  # a transform named on the command line wins: MSE in its space
        why += f"; transform {own.rsplit('.', 1)[-1]} as given"
    nodes = option_nodes("loss", choice)
    if own != "nir.transforms.Identity":
        nodes.pop("transform", None)
    with open_dict(cfg):
        for group, (_, node) in nodes.items():
            cfg[group] = node
    brings = "".join(f", {g}={option}" for g, (option, _) in nodes.items() if g != "loss")
    if os.environ.get("LOCAL_RANK", "0") == "0":
        print(f"loss=auto: {why} -> loss={choice}{brings}; pass loss=... to choose", flush=True)
    return choice


def resolve_auto_sampling(cfg: DictConfig, signal: Any) -> str | None:
    """``sampling=auto`` (``data=array``'s default): put the chosen sampling into ``cfg`` from the
    signal and the transform in effect (after ``loss=auto``), print it in one line, return it."""
    if str(cfg.sampling.get("_target_", "")) != "nir.samplers.Auto":
        return None
    from omegaconf import open_dict

    from nir.config import option_nodes
    from nir.samplers.auto import choose

    choice, why = choose(bool(signal.long_tailed), str(cfg.transform.get("_target_", "")))
    with open_dict(cfg):
        cfg["sampling"] = option_nodes("sampling", choice)["sampling"][1]
    if os.environ.get("LOCAL_RANK", "0") == "0":
        print(f"sampling=auto: {why} -> sampling={choice}; pass sampling=... to choose", flush=True)
    return choice


def resolve_auto_model(cfg: DictConfig, choices: dict[str, Any], task: Sequence[str] | None) -> tuple[DictConfig, Any]:
    """``model=auto``: choose the network from the signal's shape (:mod:`nir.fields.auto`), print
    the decision in one line, and compose the config again as if ``model=<choice>`` had been
    typed, so the precedence rule holds. ``task``: the run's overrides; without them (a config
    composed by hand) the chosen model's node and optimiser settings replace ``cfg``'s. Returns
    the config and the signal (read once, reused by :func:`build_parts`)."""
    if str(cfg.model.get("_target_", "")) != "nir.fields.Auto":
        return cfg, None
    from omegaconf import open_dict

    from nir.fields.auto import choose

    signal = build(cfg.data, "data")
    option, why, sized = choose(signal.ndim, signal.numel)
    size, bound = cfg.get("size") or {}, cfg.get("bound") or {}
    if any(size.get(k) is not None for k in ("bytes", "ratio")) or any(
        bound.get(k) is not None for k in ("rel", "abs")
    ):
        sized = []  # the run's own size or bound decides the network's size
    if os.environ.get("LOCAL_RANK", "0") == "0":
        print(
            f"model=auto: {why} -> model={option}{''.join(', ' + o for o in sized)}; pass model=... to choose",
            flush=True,
        )
    if task is not None:
        keep = [o for o in task if o.split("=", 1)[0].lstrip("+~") != "model"]
        new = compose_again([*keep, f"model={option}", *sized])
    else:
        chosen = compose_again([f"model={option}", *sized])
        new = cfg.copy()
        with open_dict(new):
            new.model, new.optim, new.size = chosen.model, chosen.optim, chosen.size
    choices["model"] = option
    return new, signal


def compose_again(overrides: Sequence[str]) -> DictConfig:
    """``conf/train.yaml`` with ``overrides``, inside a running Hydra app (its search path) or not."""
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        from hydra import compose

        return compose(config_name="train", overrides=list(overrides))
    return compose_config(overrides)[0]


def announce_signal(signal: Any) -> None:
    """The start lines about the data: a dataset's axes (names, sizes, boxes, units) and the
    number of masked samples."""
    from nir.datasets import describe

    if os.environ.get("LOCAL_RANK", "0") != "0":
        return
    line = describe(signal)
    if line:
        print(line, flush=True)
    if signal.missing:
        print(f"data: {signal.missing:,} of {signal.numel:,} samples are missing (NaN / _FillValue): masked, never "
              "trained on or scored (masked_samples in metrics.json); data.nan=error refuses them", flush=True)  # fmt: skip


def build_field(cfg: DictConfig, model: DictConfig, dims: dict[str, Any], signal: Any) -> Any:
    """The untrained field for ``model`` (a model node) on ``signal``: the network, the value
    transform and the plain-value spec a saved field carries."""
    from nir.field import Field, component_spec

    network = build(model, "model", **dims)
    transform = build(cfg.transform, "transform")
    spec = {
        "network": component_spec(network, {**kwargs_of(model), **dims}),
        "transform": component_spec(transform, kwargs_of(cfg.transform)),
        "bounds": [list(b) for b in signal.bounds],
        "shape": list(signal.shape),
        "channels": signal.channels,
        "is_image": signal.is_image,
        "meta": {"signal": signal.name, **signal.meta},
    }
    return Field(network, transform, spec)


def _candidate_bytes(
    cfg: DictConfig, model: DictConfig, dims: dict[str, Any], signal: Any, dtype: str | None = None
) -> int:
    """The field file's size for a candidate model node at ``dtype`` (default: the run's store)
    with its integers at N bits each: the entropy coder only makes the file smaller
    (for :func:`nir.budget.fit_to_budget`)."""
    store = store_of(cfg)
    with contextlib.redirect_stdout(io.StringIO()):  # a candidate's own start lines (e.g. a grid's)
        field = build_field(cfg, model, dims, signal)
    return field.stored_bytes(dtype or store["dtype"], store["int8_scale"], coder="raw")


def build_parts(cfg: DictConfig, signal: Any = None) -> Parts:
    """Signal (``signal``: already read, e.g. by ``model=auto``), network, transform and loss from
    the config; the training data (which fits the transform and the loss once); the field; the
    Lightning module."""
    from nir.losses import check_setup

    signal = build(cfg.data, "data") if signal is None else signal
    announce_signal(signal)
    loss_option = resolve_auto_loss(cfg, signal) if str(cfg.loss.get("_target_", "")) == "nir.losses.Auto" else None
    resolve_auto_sampling(cfg, signal)
    dims = {"in_dim": signal.ndim, "out_dim": signal.channels}
    if cfg.model.get("bounds", "absent") is None:  # networks that cover a box (grids) get the signal's
        dims["bounds"] = [list(b) for b in signal.bounds]
    sized = fit_to_budget(cfg, signal, dims, lambda node, dtype: _candidate_bytes(cfg, node, dims, signal, dtype))
    if sized and os.environ.get("LOCAL_RANK", "0") == "0":
        print(sized, flush=True)
    field = build_field(cfg, cfg.model, dims, signal)
    transform = field.transform
    loss = build(cfg.loss, "loss")
    optim = build(cfg.optim, "optim")
    trainer_cfg = cfg.trainer
    precision = resolve_precision(trainer_cfg.get("precision", "32"), trainer_cfg.get("accelerator", "auto"))

    from nir.batches import TrainingData  # Lightning's import cost only once the input is known good
    from nir.holdout import Holdout
    from nir.module import FieldModule

    sampling = build(cfg.sampling, "sampling")
    holdout = Holdout.of(cfg.data.get("holdout"), signal.shape, int(cfg.seed))
    data = TrainingData(
        signal, transform, loss, int(cfg.batch_size), float(cfg.cache_mb), int(cfg.seed), sampling, holdout
    )
    check_setup(loss, transform, precision)
    from nir.bound import bound_of
    from nir.storage import StoredTraining

    bound = bound_of(cfg.get("bound"), float(data.stats.floor) or None)
    require(bound is None or not signal.missing,
            f"a bound needs every sample: the signal has {signal.missing:,} missing (NaN) samples; fill them or drop bound.*")  # fmt: skip
    module = FieldModule(
        field, loss, data, optim, max_steps=int(trainer_cfg.max_steps), compile=bool(cfg.compile),
        steps_per_call=steps_per_call(cfg), cuda_graph=cfg.get("cuda_graph", "auto"),
        clip=trainer_cfg.get("gradient_clip_val"),
        stored=StoredTraining(store_of(cfg), int(trainer_cfg.max_steps), signal.numel * signal.channels, bound),
    )  # fmt: skip
    return Parts(signal, data, field, module, precision, loss_option)


def steps_per_call(cfg: DictConfig) -> int:
    """Optimizer steps per training call (``steps_per_call``, :mod:`nir.steps`): the requested
    (or the device's ``auto``) value, reduced so that every call ends on the last step, each
    validation and each scalar log; the reduction is printed."""
    from nir.steps import effective_steps_per_call, resolve_steps_per_call

    t = cfg.trainer
    try:
        asked = resolve_steps_per_call(cfg.get("steps_per_call", 1), str(t.get("accelerator", "cpu")))
    except ValueError as e:
        raise NirError(str(e)) from None
    events = [int(t.max_steps), int(t.get("val_check_interval") or 0), int(t.get("log_every_n_steps", 50) or 0)]
    k = effective_steps_per_call(asked, *events)
    if k != asked and os.environ.get("LOCAL_RANK", "0") == "0":
        print(f"nir: steps_per_call {asked} -> {k}, so that every call ends on the last step, each validation "
              f"and each log (trainer.max_steps, val_check_interval, log_every_n_steps: {', '.join(map(str, events))})",
              flush=True)  # fmt: skip
    return k


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
            v = parts.loss_option if k == "loss" and parts.loss_option else choices.get(k)
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
    from nir.callbacks import FinalMetrics, NirTensorBoardLogger
    from nir.sweep import read_swept

    multirun, hc = hydra_job()
    swept = read_swept(hc.sweep.dir) if multirun else []
    hparams = run_hparams(cfg, parts, choices, swept, list(hc.overrides.task) if hc is not None else [])
    # a sweep job's events go to tb/<its swept values>, so TensorBoard names the run after them
    version = run_name(hparams, swept) if swept else ""
    logger = NirTensorBoardLogger(
        save_dir=str(run_dir), name="tb", version=version, default_hp_metric=False,
        steps_per_call=parts.module.loop.k,
    )  # fmt: skip
    extra = ["hp/psnr_log", "hp/worst_decade_median"] if parts.signal.long_tailed else []
    extra += ["hp/ssim"] if parts.signal.is_image else []
    extra += ["hp/psnr_heldout", "hp/psnr_train"] if parts.data.holdout is not None else []
    extra += ["hp/compression_ratio", "hp/bits_per_sample", "hp/bits_per_parameter"]
    return logger, FinalMetrics(hparams, ["hp/psnr", "hp/fit_time_s", *extra], store_of(cfg))


def store_of(cfg: DictConfig) -> dict[str, Any]:
    """The ``store`` settings as plain, checked values: ``dtype`` (``float32``, ``float16`` or
    ``intN``, from ``store.dtype`` and ``store.bits``), ``int8_scale``, ``coder``,
    ``qat_fraction`` and ``rate_weight``."""
    from nir.container import CODERS
    from nir.storage import check, dtype_of

    store = OmegaConf.to_container(cfg.store, resolve=True) if "store" in cfg else {}
    given = str(store.get("dtype", "float32"))
    require(given in ("float32", "float16", "int8"),
            f"store.dtype must be one of float32, float16, int8 (other integer widths: store.bits=2..8), got {given!r}")  # fmt: skip
    out = {
        "dtype": dtype_of(given, store.get("bits")),
        "int8_scale": str(store.get("int8_scale", "row")),
        "coder": str(store.get("coder", "auto")),
        "qat_fraction": store.get("qat_fraction", 0.0),
        "rate_weight": store.get("rate_weight", 0.0),
    }
    check(out["dtype"], out["int8_scale"])
    require(out["coder"] in ("auto", *CODERS), f"store.coder must be auto, raw, ans or zstd, got {out['coder']!r}")
    for key in ("qat_fraction", "rate_weight"):
        v = out[key]
        require(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 and math.isfinite(v),
                f"store.{key} must be a number >= 0, got {v!r}")  # fmt: skip
    require(out["qat_fraction"] <= 1, f"store.qat_fraction must be between 0 and 1, got {out['qat_fraction']!r}")
    return out


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


def build_trainer(
    cfg: DictConfig,
    parts: Parts,
    run_dir: Path,
    extra_callbacks: Sequence[Any] = (),
    choices: dict[str, Any] | None = None,
) -> tuple[Any, Any]:
    """The Lightning trainer with nir's callbacks and crash-safe checkpoints; returns it and the
    :class:`~nir.callbacks.FinalMetrics` callback that holds the end-of-run metrics."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint

    from nir.callbacks import (
        AtomicCheckpointIO,
        DivergenceGuard,
        MagnitudeLogger,
        ProgressPrinter,
        ReconstructionLogger,
        StepProgressBar,
    )

    trainer_kwargs = trainer_arguments(cfg, parts)
    _check_strategy(trainer_kwargs)
    _threads_for_parallel_jobs()
    long_tailed = parts.signal.long_tailed
    logger, final_metrics = _logger_and_final_metrics(cfg, parts, run_dir, choices or {})
    callbacks: list[pl.Callback] = [
        DivergenceGuard(int(cfg.check_finite_every)),  # first: nothing is evaluated or saved after a divergence
        final_metrics,
        ModelCheckpoint(
            dirpath=run_dir / "checkpoints",
            filename="best",
            monitor="val/psnr",
            mode="max",
            save_top_k=1,
            save_last=True,
            auto_insert_metric_name=False,
            enable_version_counter=False,  # one run per directory (its lock): never last-v1.ckpt beside last.ckpt
        ),
    ]
    callbacks += [ReconstructionLogger()] if cfg.log.images else []
    callbacks += [MagnitudeLogger()] if long_tailed else []
    # a bar where it renders (a terminal, one run); elsewhere (CI, nohup, SLURM, sweeps) plain lines
    bar = bool(trainer_kwargs.get("enable_progress_bar", True)) and _terminal() and not hydra_job()[0]
    trainer_kwargs["enable_progress_bar"] = bar
    callbacks += [StepProgressBar(parts.precision)] if bar else [ProgressPrinter(parts.precision)]
    trainer = pl.Trainer(
        **trainer_kwargs,
        logger=logger,
        callbacks=[*callbacks, *extra_callbacks],
        plugins=[AtomicCheckpointIO()],
        default_root_dir=str(run_dir),
        enable_model_summary=False,
    )
    return trainer, final_metrics


def fit_with_guards(
    cfg: DictConfig, parts: Parts, trainer: Any, final_metrics: Any, run_dir: Path, t_start: float
) -> tuple[dict[str, Any], int]:
    """Fit (resuming if asked); a divergence writes ``metrics.json`` with status ``diverged`` and
    ends in one line. Returns the final fp32 metrics and the number of optimizer steps."""
    from nir.callbacks import Diverged
    from nir.checkpoint import atomic_write_text, load_checkpoint
    from nir.faults import Interrupted

    last = run_dir / "checkpoints" / "last.ckpt"
    ckpt_path = resume_checkpoint(cfg.resume, last, trainer.is_global_zero)
    if trainer.is_global_zero:
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    try:
        trainer.fit(
            parts.module, datamodule=_datamodule(parts), ckpt_path=ckpt_path, weights_only=True if ckpt_path else None
        )
    except Interrupted as e:
        if trainer.is_global_zero:
            info = {"status": "interrupted", "step": e.step, "signal": e.signum, "checkpoint": str(e.checkpoint),
                    "wall_time_s": time.perf_counter() - t_start, "message": str(e)}  # fmt: skip
            write_json(run_dir / "metrics.json", info)
        raise
    except Diverged as d:
        info = {
            "status": "diverged",
            "step": d.step,
            "loss": d.loss,
            "precision": parts.precision,
            "last_good_checkpoint": str(last) if last.is_file() else None,
            "wall_time_s": time.perf_counter() - t_start,
            "message": str(d),
        }
        if trainer.is_global_zero:
            write_json(run_dir / "metrics.json", info)
        raise NirError(str(d) + (f"; last good checkpoint: {last}" if last.is_file() else "")) from None
    if final_metrics.metrics:
        return final_metrics.metrics, int(trainer.global_step)
    # ddp_spawn: the callback ran in the worker processes; the weights came back here
    from nir.module import evaluate_stored

    final = {
        **evaluate_stored(parts.module, store_of(cfg)),
        "nonfinite_steps": 0,
        "fit_time_s": time.perf_counter() - t_start,
    }
    return final, int(load_checkpoint(last).get("global_step", 0))


def resume_checkpoint(resume: Any, last: Path, talk: bool = True) -> Path | None:
    """The checkpoint ``resume`` names: ``null`` none; ``last`` the run directory's
    ``checkpoints/last.ckpt`` (which must exist); ``auto`` that one if it exists, else none (a
    requeued job resumes, a first start starts); any other value a ``.ckpt`` path. The file is
    read once here, so a corrupt, foreign or newer one is one line before training starts."""
    from nir.checkpoint import load_checkpoint

    if not resume:
        return None
    if str(resume) == "auto":
        if not last.is_file():
            if talk:
                print(f"nir: resume=auto: no checkpoint at {last}; starting from step 0", flush=True)
            return None
        path = last
    else:
        path = last if str(resume) == "last" else Path(str(resume))
        require(
            path.is_file(),
            f"resume: checkpoint {str(path)!r} not found; pass a .ckpt path, 'last' with the run's hydra.run.dir, or 'auto'",
        )
    ckpt = load_checkpoint(path)
    require("nir_spec" in ckpt, f"resume: checkpoint {str(path)!r} was not written by nir (no nir spec)")
    if talk and str(resume) == "auto":
        print(f"nir: resume=auto: resuming from {path} at step {int(ckpt.get('global_step', 0))}", flush=True)
    return path


def _datamodule(parts: Parts) -> Any:
    from nir.batches import FieldDataModule

    return FieldDataModule(parts.signal)


def collect_metrics(
    parts: Parts, trainer: Any, final: dict[str, Any], steps: int, t_start: float, t_wall0: float
) -> dict[str, Any]:
    """``metrics.json``'s content: the final fp32 metrics with their convention and the run's facts."""
    final = dict(final)
    fit_s = final.pop("fit_time_s")
    diverged = final.get("nonfinite_steps", 0) > 0 or not math.isfinite(final["psnr"])
    signal = parts.signal
    return {
        "status": "diverged" if diverged else "ok",
        **final,
        "psnr_convention": f"10 log10(R^2/MSE) over all valid samples and channels, signal units, R = {parts.data.stats.range:g}; fp32 evaluation",
        "steps": steps,
        "num_params": parts.field.num_parameters(),
        "fit_time_s": fit_s,
        "wall_time_s": time.perf_counter() - t_start,
        "started_at": t_wall0,
        "finished_at": time.time(),
        "precision": parts.precision,
        "sampling": str(parts.data.sampling),
        **({"holdout": str(parts.data.holdout)} if parts.data.holdout is not None else {}),
        "device": str(trainer.strategy.root_device),  # the module is back on the CPU after fit
        "signal": {"name": signal.name, "shape": list(signal.shape), "channels": signal.channels},
    }


def bound_line(metrics: dict[str, Any]) -> str:
    """The console's bound line (``bound.rel`` / ``bound.abs``), or nothing."""
    b = metrics.get("bound")
    if not b:
        return ""
    worst = metrics.get("max_rel_error", metrics.get("max_abs_error"))
    what = f"relative {b['value']:g} (floor {b['floor']:.3g})" if b["kind"] == "rel" else f"absolute {b['value']:g}"
    return (f"bound: {what}; measured max error {worst:.4g} over every sample of the grid; "
            f"{metrics['bytes_network']:,} bytes network + {metrics['bytes_residual']:,} bytes residual\n")  # fmt: skip


def magnitude_line(metrics: dict[str, Any]) -> str:
    """The per-magnitude summary of a long-tailed field: worst and top decade, and how many of
    the below-floor samples (zeros) the field keeps below the floor."""
    worst, top, kept = (metrics.get(k) for k in ("worst_decade_median", "top_decade_median", "below_floor_kept"))
    line = f"worst-decade median relative error {worst:.3g} (= {worst:.2%}"
    if top is not None and math.isfinite(top):
        line += f"; top decade {top:.2%}"
    if kept is not None and math.isfinite(kept):
        line += f"; below-floor samples kept below it {kept:.1%}"
    return line + "; per-decade table in metrics.json)\n"


def heldout_line(metrics: dict[str, Any]) -> str:
    """The console's held-out line (``data.holdout``), or nothing."""
    if metrics.get("psnr_heldout") is None:
        return ""
    worst = metrics.get("heldout_worst_decade_median")
    return (
        f"held out ({metrics['holdout']}): PSNR {metrics['psnr_heldout']:.2f} dB on samples never trained on, "
        f"{metrics['psnr_train']:.2f} dB on the training samples"
        + (f"; held-out worst-decade median relative error {worst:.3g} (= {worst:.2%})" if worst is not None else "")
        + "\n"
    )


def write_run(field: Any, metrics: dict[str, Any], run_dir: Path, data_range: float, store: dict[str, str]) -> None:
    """``field.nir`` (the compact file, what ``bytes`` counts), ``field.safetensors`` (the same
    values, for interchange) and ``metrics.json`` into the run directory; the summary lines."""
    field.cpu().save(run_dir / "field.nir", store["dtype"], store["int8_scale"], coder=store.get("coder", "auto"))
    field.save(run_dir / "field.safetensors", store["dtype"], store["int8_scale"])
    write_json(run_dir / "metrics.json", metrics)
    finite = math.isfinite(metrics["psnr"])
    worst = metrics.get("worst_decade_median")
    print(
        f"nir: {metrics['steps']} steps in {metrics['fit_time_s']:.1f} s, PSNR {metrics['psnr']:.2f} dB"
        + (f", SSIM {metrics['ssim']:.4f}" if metrics.get("ssim") is not None else "")
        + f" (fp32 evaluation of the final field, data range {data_range:g}, "
        f"{'all samples' if not metrics.get('masked_samples') else 'valid samples: ' + format(metrics['masked_samples'], ',') + ' masked'})"
        f"{'' if finite else ' (not finite!)'}\n"
        + f"stored field: {metrics['bytes']:,} bytes ({metrics['store_dtype']}; field.nir), compression ratio"
        f" {metrics['compression_ratio']:.3g}, {metrics['bits_per_sample']:.3g} bits per value,"
        f" {metrics['bits_per_parameter']:.3g} bits per parameter\n"
        + (magnitude_line(metrics) if worst is not None else "")
        + bound_line(metrics)
        + heldout_line(metrics)
        + f"run directory: {run_dir}\n"
        f"look at it:    tensorboard --logdir {run_dir}",
        flush=True,
    )


# ----------------------------------------------------------------------------- the run


def train(cfg: DictConfig, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Fit the field described by ``cfg``; write the run directory; return the final metrics.

    The run directory gets: ``tb/`` (TensorBoard events), ``checkpoints/`` (``last.ckpt``,
    ``best.ckpt``), ``config.yaml`` (resolved), ``field.nir``, ``field.safetensors`` and ``metrics.json``.
    """
    return train_field(cfg, run_dir)[1]


def train_field(
    cfg: DictConfig,
    run_dir: str | Path | None = None,
    callbacks: Sequence[Any] = (),
    choices: dict[str, Any] | None = None,
    overrides: Sequence[str] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """:func:`train`, also returning the trained :class:`~nir.field.Field` (on the CPU, eval mode).
    ``callbacks``: extra Lightning callbacks (benchmarks, custom logging). ``choices``: the
    chosen option per config group (Hydra's, by default), for the data preset's line.
    ``overrides``: the overrides to record in ``.hydra/`` (Hydra's task overrides by default;
    no record outside Hydra unless given).

    The run holds its directory's lock (:class:`nir.faults.RunLock`) from before its first write
    to after its last, and stops at a step boundary with a checkpoint on SIGTERM, SIGINT or
    SIGUSR1 (:class:`nir.faults.Interrupted`)."""
    t_start, t_wall0 = time.perf_counter(), time.time()
    _, hc = hydra_job()
    choices = dict(choices) if choices is not None else dict(hc.runtime.choices) if hc else {}
    task = list(overrides) if overrides is not None else list(hc.overrides.task) if hc is not None else None
    cfg, signal = resolve_auto_model(cfg, choices, task)
    line = preset_line(cfg, choices)
    if line and os.environ.get("LOCAL_RANK", "0") == "0":
        print(line, flush=True)
    with warnings.catch_warnings(), _quiet_lightning():  # Lightning's noise, silenced for this run only
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*LeafSpec.*", FutureWarning)
        run_dir = prepare_run_dir(cfg, run_dir)  # its key check imports Lightning, which adds filters
        from nir.callbacks import InterruptCheckpoint
        from nir.faults import SignalCatcher, run_lock, signals_to_catch

        with run_lock(run_dir, enabled=_first_process()), SignalCatcher(signals_to_catch()) as catcher:
            if task is not None:
                write_hydra_record(run_dir, cfg, task, hc)
            parts = build_parts(cfg, signal)
            interrupt = InterruptCheckpoint(catcher, run_dir)
            trainer, final_metrics = build_trainer(cfg, parts, run_dir, [interrupt, *callbacks], choices)
            if trainer.is_global_zero:
                print(start_line(cfg, parts, trainer), flush=True)
            final, steps = fit_with_guards(cfg, parts, trainer, final_metrics, run_dir, t_start)
            metrics = collect_metrics(parts, trainer, final, steps, t_start, t_wall0)
            if trainer.is_global_zero:
                write_run(parts.field, metrics, run_dir, parts.data.stats.range, store_of(cfg))
    return parts.field.cpu().eval(), metrics


def _first_process() -> bool:
    """Rank 0 of a run (the process that holds the run directory's lock): not a DDP child that
    Lightning or torchrun started with its rank in the environment."""
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "LOCAL_RANK", "NODE_RANK"))


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Lightning's info lines (GPU/TPU/AMP availability, a logger advert, "fit stopped") are
    dropped for the run; nir prints its own :func:`start_line`. Warnings still show."""
    import pytorch_lightning  # noqa: F401 - imported first: its import sets these loggers' levels

    loggers = [logging.getLogger(n) for n in ("pytorch_lightning", "lightning_fabric")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def start_line(cfg: DictConfig, parts: Parts, trainer: Any) -> str:
    """The one line a run prints before training: what is fitted to what, where and how."""
    s = parts.signal
    shape = "x".join(map(str, s.shape)) + (f"x{s.channels}" if s.channels > 1 else "")
    devices = f" x{trainer.num_devices}" if trainer.num_devices > 1 else ""
    return (
        f"nir: {type(parts.field.network).__name__} ({parts.field.num_parameters():,} parameters) on {s.name} "
        f"({shape}), {trainer.max_steps} steps of {int(cfg.batch_size):,} samples, sampling {parts.data.sampling}; "
        f"device {trainer.strategy.root_device}{devices}, precision {parts.precision}"
        + (f", {parts.module.loop.k} steps per call" if parts.module.loop.k > 1 else "")
        + grid_backend(parts.field.network, trainer.strategy.root_device)
    )


def grid_backend(network: Any, device: Any) -> str:
    """``, grid encoding: triton`` (or ``numba``, ``torch``) for a network with a grid encoding; else empty."""
    from nir.fields.encodings import GridEncoding

    grids = [m for m in network.modules() if isinstance(m, GridEncoding)]
    return f", grid encoding: {grids[0].backend_for(device)}" if grids else ""


def _signal_overrides(signal: Any, run_dir: Path) -> list[str]:
    """The ``data=...`` overrides for what ``nir.fit`` was given (a path, an option, an array)."""
    import numpy as np
    import torch

    from nir.config import reader_option

    if isinstance(signal, (str, Path)) and Path(signal).suffix:
        return [f"data={reader_option(signal)}", f"data.path={Path(signal).resolve()}"]
    if isinstance(signal, str):
        options = groups()["data"]
        require(signal in options, f"signal {signal!r} is neither a file nor a data option ({', '.join(options)})")
        return [f"data={signal}"]
    arr = signal.detach().cpu().numpy() if torch.is_tensor(signal) else np.asarray(signal)
    run_dir.mkdir(parents=True, exist_ok=True)
    np.save(run_dir / "signal.npy", arr.astype(np.float32, copy=False))
    return ["data=array", f"data.path={(run_dir / 'signal.npy').resolve()}"]


def fit(
    signal: Any, overrides: Sequence[str] = (), run_dir: str | Path | None = None, **options: Any
) -> tuple[Any, dict[str, Any]]:
    """Train a field from Python with the same configs as ``nir-train``; return ``(field, metrics)``.

    Args:
        signal: an image path (.png/.jpg/.tif), an array path (.npy/.npz), the name of a data
            option (``"peaks1d"``), or a numpy array / torch tensor of shape ``(*grid)`` (scalar
            field; pass ``channel_axis=-1`` for ``(*grid, channels)``), saved as ``signal.npy``
            in the run directory and read back through ``data=array``.
        overrides: Hydra override strings, exactly as on the command line.
        run_dir: where the run goes (default ``outputs/fit/<date>_<time>``).
        **options: more overrides as keywords: a config group picks an option (``model="siren"``),
            ``steps``, ``lr``, ``precision`` and ``channel_axis`` are short for
            ``trainer.max_steps``, ``optim.lr``, ``trainer.precision`` and ``data.channel_axis``,
            and ``__`` stands for a dot (``model__hidden_dim=64``).

    The run directory has the same layout as a ``nir-train`` run (``.hydra/`` included), and
    the returned field is the trained one, in memory (``nir.load_field(run_dir)`` gives the
    same answers from disk). The process's warning filters and allocator are left unchanged.
    """
    run_dir = Path(run_dir) if run_dir is not None else Path("outputs/fit") / time.strftime("%Y-%m-%d_%H-%M-%S")
    ov = _signal_overrides(signal, run_dir)
    names = groups()
    for key, value in options.items():
        key = ALIASES.get(key, key.replace("__", "."))
        literal = json.dumps(value) if isinstance(value, (list, tuple, bool)) or value is None else value
        ov.append(f"{key}={value if key in names else literal}")
    ov += list(overrides)
    cfg, choices = compose_config(ov)
    return train_field(cfg, run_dir, choices=choices, overrides=ov)
