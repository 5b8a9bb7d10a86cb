"""``nir-train``: the Hydra entry point. Thin: it wires the composed config into :func:`train`."""

from __future__ import annotations

import ctypes
import json
import logging
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

from nir.errors import NirError, cli_errors, positive_float, positive_int, require

log = logging.getLogger("nir")
CONF_DIR = Path(os.environ.get("NIR_CONFIG_DIR", Path(__file__).resolve().parent.parent / "conf"))


def tune_allocator() -> bool:
    """Keep freed large blocks in glibc's heap instead of returning them to the OS.

    A full-batch step allocates and frees activations of tens of MB; glibc maps each afresh
    (mmap) and page-faults it in, which costs ~15 % of a CPU step here (docs/performance.md).
    Raising M_MMAP_THRESHOLD and M_TRIM_THRESHOLD makes glibc reuse that memory. No effect
    on other C libraries; set ``NIR_MALLOPT=0`` to skip.
    """
    if os.environ.get("NIR_MALLOPT", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, 1 << 30) == 1
        return ok and libc.mallopt(m_trim_threshold, (1 << 31) - 1) == 1
    except (OSError, AttributeError):
        return False


def release_heap() -> None:
    """Hand freed heap memory back to the OS (glibc ``malloc_trim``): after the one-off data
    passes and fits, whose temporaries :func:`tune_allocator` would otherwise keep resident."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


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


def _hydra_mode() -> tuple[bool, Any]:
    """(is this a multirun job, Hydra's config) — (False, None) outside Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        return hc.mode == RunMode.MULTIRUN, hc
    except Exception:  # noqa: BLE001 - not running under Hydra (tests, nir.fit)
        return False, None


def _check_strategy(trainer_kwargs: dict[str, Any]) -> None:
    """Refuse script-relaunching DDP inside a multirun: its child processes re-run the whole sweep."""
    strategy = str(trainer_kwargs.get("strategy", "auto"))
    multirun, _ = _hydra_mode()
    relaunch = strategy.startswith("ddp") and not strategy.startswith(("ddp_spawn", "ddp_notebook"))
    require(not (multirun and relaunch),
            f"trainer.strategy={strategy} inside a multirun would re-run the whole sweep in every DDP process; "
            "run DDP jobs one at a time (no -m), or use trainer.strategy=ddp_spawn in sweeps")


def _threads_for_parallel_jobs() -> None:
    """Under Hydra's joblib launcher, give each job cores / n_jobs threads (no oversubscription)."""
    import torch

    _, hc = _hydra_mode()
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
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _build(node: DictConfig, key: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` with errors turned into one-line :class:`NirError`."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, NirError):
            raise cause from None
        raise NirError(f"{key}: {cause or e}".replace("\n", " ")) from None


def _flat(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Config as ``{"model.hidden_dim": 256, ...}`` with scalar values (for the HPARAMS tab)."""
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        elif isinstance(v, (list, tuple)):
            out[key] = str(v)
        elif v is None or isinstance(v, (bool, int, float, str)):
            out[key] = "null" if v is None else v
    return out


def _write_json(path: Path, obj: Any) -> None:
    from nir.checkpoint import atomic_write_bytes

    text = json.dumps(obj, indent=2, default=float) + "\n"
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def check_config(cfg: DictConfig) -> None:
    """Refuse impossible settings before anything is built (one-line errors)."""
    positive_int("batch_size", cfg.batch_size)
    require(isinstance(cfg.check_finite_every, int) and cfg.check_finite_every >= 0,
            f"check_finite_every must be an integer >= 0 (0 = off), got {cfg.check_finite_every!r}")
    positive_int("trainer.max_steps", cfg.trainer.max_steps)
    positive_float("optim.lr", cfg.optim.lr)
    require(cfg.optim.schedule in ("cosine", "constant"), f"optim.schedule must be 'cosine' or 'constant', got {cfg.optim.schedule!r}")
    positive_float("cache_mb", cfg.cache_mb)
    require(isinstance(cfg.compile, bool), f"compile must be true or false, got {cfg.compile!r}")
    vci = cfg.trainer.get("val_check_interval")
    if vci is not None:
        positive_int("trainer.val_check_interval", vci)


def train(cfg: DictConfig, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Fit the field described by ``cfg``; write the run directory; return the final metrics.

    The run directory gets: ``tb/`` (TensorBoard events), ``checkpoints/`` (``last.ckpt``,
    ``best.ckpt``), ``config.yaml`` (resolved), ``field.safetensors`` and ``metrics.json``.
    """
    return train_field(cfg, run_dir)[1]


def train_field(
    cfg: DictConfig, run_dir: str | Path | None = None, callbacks: Sequence[Any] = ()
) -> tuple[Any, dict[str, Any]]:
    """:func:`train`, also returning the trained :class:`~nir.field.Field` (on the CPU, eval mode).
    ``callbacks``: extra Lightning callbacks (benchmarks, custom logging)."""
    extra_callbacks = list(callbacks)
    from nir.field import Field, component_spec
    from nir.losses import check_setup

    t_start, t_wall0 = time.perf_counter(), time.time()
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
        raise NirError(f"run directory {str(run_dir)!r} is not writable ({e.strerror}); choose another with hydra.run.dir=...") from None
    tune_allocator()
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*", FutureWarning)
    _seed_all(int(cfg.seed))

    signal = _build(cfg.data, "data")
    st = signal.summary()
    vmin, vmax = float(st["min"].min()), float(st["max"].max())
    require(vmax > vmin, f"data {signal.name!r} is constant (every value is {vmin:g}); there is nothing to fit")
    if int(cfg.batch_size) > signal.numel:
        log.info("batch_size %d is larger than the signal (%d samples): using full batches of %d",
                 int(cfg.batch_size), signal.numel, signal.numel)
    model_kwargs = {k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items() if k != "_target_"}
    model_kwargs.update(in_dim=signal.ndim, out_dim=signal.channels)
    network = _build(cfg.model, "model", in_dim=signal.ndim, out_dim=signal.channels)
    transform_kwargs = {k: v for k, v in OmegaConf.to_container(cfg.transform, resolve=True).items() if k != "_target_"}
    fit_values = signal.fit_sample()  # the whole signal, or a bounded sample of a large one
    transform = _build(cfg.transform, "transform").fit(fit_values)
    spec = {
        "network": component_spec(network, model_kwargs),
        "transform": component_spec(transform, transform_kwargs),
        "bounds": [list(b) for b in signal.bounds],
        "shape": list(signal.shape),
        "channels": signal.channels,
        "meta": {"signal": signal.name, **signal.meta},
    }
    field = Field(network, transform, spec)
    loss = _build(cfg.loss, "loss").fit(fit_values)
    del fit_values
    release_heap()
    trainer_kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_kwargs["precision"] = precision = resolve_precision(trainer_kwargs.get("precision", "32"), trainer_kwargs.get("accelerator", "auto"))
    check_setup(loss, transform, precision)
    _check_strategy(trainer_kwargs)
    _threads_for_parallel_jobs()

    # Lightning is imported only now: bad input above fails fast, before its import cost
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
    from pytorch_lightning.loggers import TensorBoardLogger

    from nir.callbacks import Diverged, DivergenceGuard, FinalMetrics, MagnitudeLogger, ProgressPrinter, ReconstructionLogger
    from nir.checkpoint import AtomicCheckpointIO
    from nir.module import FieldDataModule, FieldModule

    max_steps = int(cfg.trainer.max_steps)
    module = FieldModule(
        field, loss, signal,
        batch_size=int(cfg.batch_size), lr=float(cfg.optim.lr), schedule=cfg.optim.schedule,
        warmup_steps=int(cfg.optim.warmup_steps), min_lr_ratio=float(cfg.optim.min_lr_ratio),
        max_steps=max_steps, compile=bool(cfg.compile), cache_mb=float(cfg.cache_mb),
    )
    module.sampler_seed = int(cfg.seed)
    datamodule = FieldDataModule(signal)

    logger = TensorBoardLogger(save_dir=str(run_dir), name="tb", version="", default_hp_metric=False)
    hp_metrics = {"hp/psnr": float("nan"), "hp/fit_time_s": float("nan")}
    if signal.meta.get("kind") != "image":
        hp_metrics.update({"hp/psnr_log": float("nan"), "hp/worst_decade_median": float("nan")})
    final_metrics = FinalMetrics(_flat(OmegaConf.to_container(cfg, resolve=True)), hp_metrics)
    callbacks: list[pl.Callback] = [
        DivergenceGuard(int(cfg.check_finite_every)),  # first: nothing is evaluated or saved after a divergence
        final_metrics,
        ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor="val/psnr", mode="max",
                        save_top_k=1, save_last=True, auto_insert_metric_name=False),
        LearningRateMonitor(logging_interval="step"),
    ]
    if cfg.log.images:
        callbacks.append(ReconstructionLogger())
    if signal.meta.get("kind") != "image":
        callbacks.append(MagnitudeLogger())
    if not trainer_kwargs.get("enable_progress_bar", True):
        callbacks.append(ProgressPrinter())
    callbacks += extra_callbacks
    trainer = pl.Trainer(
        **trainer_kwargs, logger=logger, callbacks=callbacks, plugins=[AtomicCheckpointIO()],
        default_root_dir=str(run_dir), enable_model_summary=False,
    )
    ckpt_path = None
    if cfg.resume:
        ckpt_path = run_dir / "checkpoints" / "last.ckpt" if cfg.resume == "last" else Path(cfg.resume)
        require(ckpt_path.is_file(), f"resume: checkpoint {str(ckpt_path)!r} not found; pass a .ckpt path or 'last' with the run's hydra.run.dir")
    if trainer.is_global_zero:
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)

    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True if ckpt_path else None)
    except Diverged as d:
        last = run_dir / "checkpoints" / "last.ckpt"
        info = {"status": "diverged", "step": d.step, "loss": d.loss, "precision": precision,
                "last_good_checkpoint": str(last) if last.is_file() else None,
                "wall_time_s": time.perf_counter() - t_start, "message": str(d)}
        if trainer.is_global_zero:
            _write_json(run_dir / "metrics.json", info)
        raise NirError(str(d) + (f"; last good checkpoint: {last}" if last.is_file() else "")) from None
    final = final_metrics.metrics
    steps = int(trainer.global_step)
    if not final:  # ddp_spawn: the callback ran in the worker processes; weights came back here
        from nir.checkpoint import load_checkpoint

        final = {**module.evaluate(), "nonfinite_steps": 0, "fit_time_s": time.perf_counter() - t_start}
        steps = int(load_checkpoint(run_dir / "checkpoints" / "last.ckpt").get("global_step", 0))
    fit_s = final.pop("fit_time_s")

    diverged = final.get("nonfinite_steps", 0) > 0 or not math.isfinite(final["psnr"])
    metrics: dict[str, Any] = {
        "status": "diverged" if diverged else "ok",
        **final,
        "psnr_convention": f"10 log10(R^2/MSE) over all samples and channels, signal units, R = {module.val_metrics.range:g}; fp32 evaluation",
        "steps": steps,
        "num_params": field.num_parameters(),
        "fit_time_s": fit_s,
        "wall_time_s": time.perf_counter() - t_start,
        "started_at": t_wall0,
        "finished_at": time.time(),
        "precision": precision,
        "device": str(trainer.strategy.root_device),  # the module is back on the CPU after fit
        "signal": {"name": signal.name, "shape": list(signal.shape), "channels": signal.channels},
    }
    if trainer.is_global_zero:
        field.cpu().save(run_dir / "field.safetensors")
        _write_json(run_dir / "metrics.json", metrics)
        finite = math.isfinite(metrics["psnr"])
        print(
            f"nir: {metrics['steps']} steps in {fit_s:.1f} s, PSNR {metrics['psnr']:.2f} dB"
            f" (data range {module.val_metrics.range:g}, all samples){'' if finite else ' (not finite!)'}\n"
            + (f"worst-decade median relative error {metrics['worst_decade_median']:.2%} (per-decade table in metrics.json)\n"
               if "worst_decade_median" in metrics else "") +
            f"run directory: {run_dir}\n"
            f"look at it:    tensorboard --logdir {run_dir}",
            flush=True,
        )
    return field.cpu().eval(), metrics


# ----------------------------------------------------------------------------- from Python

ALIASES = {"steps": "trainer.max_steps", "lr": "optim.lr", "precision": "trainer.precision",
           "channel_axis": "data.channel_axis"}


def _groups() -> dict[str, list[str]]:
    return {p.name: sorted(q.stem for q in p.glob("*.yaml")) for p in CONF_DIR.iterdir() if p.is_dir()}


def fit(
    signal: Any,
    overrides: Sequence[str] = (),
    run_dir: str | Path | None = None,
    **options: Any,
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
            ``trainer.max_steps``, ``optim.lr``, ``trainer.precision`` and ``data.channel_axis``, and ``__`` stands for a dot (``model__hidden_dim=64``).

    The run directory has the same layout as a ``nir-train`` run (``.hydra/`` included), and
    the returned field is the trained one, in memory (``nir.load_field(run_dir)`` gives the
    same answers from disk).
    """
    import numpy as np
    import torch
    from hydra import compose, initialize_config_dir

    run_dir = Path(run_dir) if run_dir is not None else Path("outputs/fit") / time.strftime("%Y-%m-%d_%H-%M-%S")
    groups = _groups()
    ov: list[str] = []
    if isinstance(signal, (str, Path)) and Path(signal).suffix.lower() in (".npy", ".npz"):
        ov += ["data=array", f"data.path={Path(signal).resolve()}"]
    elif isinstance(signal, (str, Path)) and Path(signal).suffix:
        ov += ["data=image", f"data.path={Path(signal).resolve()}"]
    elif isinstance(signal, str):
        require(signal in groups["data"], f"signal {signal!r} is neither a file nor a data option ({', '.join(groups['data'])})")
        ov.append(f"data={signal}")
    else:
        arr = signal.detach().cpu().numpy() if torch.is_tensor(signal) else np.asarray(signal)
        run_dir.mkdir(parents=True, exist_ok=True)
        np.save(run_dir / "signal.npy", arr.astype(np.float32, copy=False))
        ov += ["data=array", f"data.path={(run_dir / 'signal.npy').resolve()}"]
    for key, value in options.items():
        key = ALIASES.get(key, key.replace("__", "."))
        if key in groups:
            ov.append(f"{key}={value}")
        else:
            ov.append(f"{key}={json.dumps(value) if isinstance(value, (list, tuple, bool)) or value is None else value}")
    ov += list(overrides)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=ov)
    hydra_dir = run_dir / ".hydra"
    hydra_dir.mkdir(parents=True, exist_ok=True)
    (hydra_dir / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(ov)))
    OmegaConf.save(cfg, hydra_dir / "config.yaml")
    return train_field(cfg, run_dir)


# ----------------------------------------------------------------------------- entry point


def _precheck_groups(argv: list[str]) -> None:
    """One-line error for ``group=option`` naming an option that does not exist."""
    groups = _groups()
    for arg in argv:
        if "=" not in arg or arg.startswith(("-", "+", "~", "hydra")):
            continue
        key, value = arg.split("=", 1)
        if key in groups and all(c.isalnum() or c in "_-," for c in value):
            for option in value.split(","):
                require(
                    option in groups[key],
                    f"unknown {key} {option!r}; choose one of: {', '.join(groups[key])}",
                )


def _precheck_output_dir(argv: list[str]) -> None:
    """One line for an output directory that cannot be created (before Hydra tries)."""
    for arg in argv:
        if arg.startswith(("hydra.run.dir=", "hydra.sweep.dir=")):
            key, value = arg.split("=", 1)
            p = Path(value).expanduser().absolute()
            while not p.exists():
                p = p.parent
            require(p.is_dir() and os.access(p, os.W_OK),
                    f"{key} {value!r} cannot be created: {str(p)!r} is not a writable directory; choose another {key}")


def _precheck_compose(argv: list[str]) -> None:
    """Compose the config once before Hydra runs, to turn composition errors (unknown keys,
    bad syntax) into one line. Sweep overrides (``a=1,2``) are left to Hydra."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    args = [a for a in argv if not a.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(args)
    except HydraException as e:
        raise NirError(f"cannot parse overrides: {str(e).splitlines()[0]}") from None
    keep = [o.input_line for o in parsed if not o.is_sweep_override() and not o.key_or_group.startswith("hydra")]
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            compose(config_name="train", overrides=keep)
    except (HydraException, OmegaConfBaseException) as e:
        lines = [l.strip() for l in str(e).splitlines() if l.strip()]
        msg = " ".join(l for l in lines[:3] if not l.startswith("full_key") and not l.startswith("object_type"))
        raise NirError(f"config: {msg}") from None


def _objective(metrics: dict[str, Any], cfg: DictConfig) -> float:
    """The value a sweeper optimises: ``metrics[cfg.objective]`` (NaN if absent)."""
    v = metrics.get(str(cfg.objective))
    return float(v) if isinstance(v, (int, float)) else float("nan")


def _hydra_app() -> Any:
    import hydra

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
    def app(cfg: DictConfig) -> float:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.get().mode != RunMode.MULTIRUN:
            with cli_errors():
                return _objective(train(cfg), cfg)
        # in a sweep a failed job is recorded and the sweep goes on; the exit status counts them
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        try:
            return _objective(train(cfg), cfg)
        except Exception as e:  # noqa: BLE001 - any failure of one job must not end the sweep
            msg = str(e).replace("\n", " ") if isinstance(e, NirError) else f"{type(e).__name__}: {e}".replace("\n", " ")
            mfile = run_dir / "metrics.json"
            if not (mfile.is_file() and json.loads(mfile.read_text()).get("status") == "diverged"):
                run_dir.mkdir(parents=True, exist_ok=True)
                _write_json(mfile, {"status": "failed", "error": msg[:2000]})
            print(f"error: job {HydraConfig.get().job.num} failed: {msg[:500]}", file=sys.stderr, flush=True)
            return float("nan")

    return app


def main() -> None:
    """Console script ``nir-train``."""
    with cli_errors():
        _precheck_groups(sys.argv[1:])
        _precheck_output_dir(sys.argv[1:])
        _precheck_compose(sys.argv[1:])
    from nir import sweep

    _hydra_app()()
    if sweep.LAST_FAILED:
        raise SystemExit(min(sweep.LAST_FAILED, 125))  # the exit status is the number of failed jobs


if __name__ == "__main__":
    main()
