"""One training run, in the order it happens: prepare the run directory, build the parts
(:mod:`nir.run.parts`), build the trainer (:mod:`nir.run.trainer`), fit with the guards, collect the
metrics, write the run (:mod:`nir.run.records`, the lines of :mod:`nir.run.console`). ``nir-train``
(through Hydra) and ``nir.fit`` (from Python) both call :func:`train_field`.

Library calls leave the process as they found it: no allocator settings (``nir-train`` sets
them, :mod:`nir.allocator`), and Lightning's noise is silenced only inside the run.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from nir.errors import NirError, require
from nir.ranks import first_process
from nir.run import console
from nir.run.config import ALIASES, build, check_config, compose_config, groups, preset_line, upgrade_targets
from nir.run.parts import Parts, build_parts
from nir.run.records import write_hydra_record, write_json
from nir.run.resolve import choose_network, resolve_auto_model, resolve_settings
from nir.run.settings import job_of
from nir.run.trainer import build_trainer

log = logging.getLogger("nir")


def _seed_all(seed: int) -> None:
    """Seed python, numpy and torch (all devices), as Lightning's seed_everything does."""
    import random

    import numpy as np
    import torch

    os.environ["PL_GLOBAL_SEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - seeds the legacy global generator that user code may use
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- the run's steps


def prepare_run_dir(cfg: DictConfig, run_dir: str | Path | None, check: bool = True) -> Path:
    """Check the config (``check``: False for one checked already, :func:`prepare`), create the
    run directory (Hydra's output dir by default) and make sure it is writable, then seed
    everything."""
    if run_dir is None:
        from hydra.core.hydra_config import HydraConfig

        run_dir = HydraConfig.get().runtime.output_dir
    run_dir = Path(run_dir)
    if check:
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


def fit_with_guards(
    parts: Parts, trainer: Any, final_metrics: Any, run_dir: Path, t_start: float
) -> tuple[dict[str, Any], int]:
    """Fit (resuming if asked); ``config.yaml`` is the resolved settings' config (every choice
    in place); a divergence writes ``metrics.json`` with status ``diverged`` and ends in one
    line. Returns the final fp32 metrics and the number of optimizer steps."""
    cfg = parts.settings.config
    from nir.checkpoint import load_checkpoint
    from nir.training.faults import Interrupted
    from nir.training.guards import Diverged

    last = run_dir / "checkpoints" / "last.ckpt"
    ckpt_path = resume_checkpoint(cfg.resume, last, first_process())
    if first_process():
        write_config(run_dir, cfg)
    try:
        trainer.fit(
            parts.module, datamodule=_datamodule(parts), ckpt_path=ckpt_path, weights_only=True if ckpt_path else None
        )
    except Interrupted as e:
        if first_process():
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
        if first_process():
            write_json(run_dir / "metrics.json", info)
        raise NirError(str(d) + (f"; last good checkpoint: {last}" if last.is_file() else "")) from None
    if final_metrics.metrics:
        return final_metrics.metrics, int(trainer.global_step)
    # ddp_spawn: the callback ran in the worker processes; the weights came back here
    from nir.training.module import evaluate_stored

    final = {
        **evaluate_stored(parts.module, parts.store),
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
    from nir.training.batches import FieldDataModule

    return FieldDataModule(parts.signal)


def collect_metrics(
    parts: Parts, trainer: Any, final: dict[str, Any], steps: int, t_start: float, t_wall0: float
) -> dict[str, Any]:
    """``metrics.json``'s content: the final fp32 metrics with their convention and the run's facts."""
    data = parts.data
    return run_metrics(
        final,
        parts.field,
        parts.signal,
        data.stats.range,
        parts.precision,
        steps,
        t_start,
        t_wall0,
        sampling=str(data.sampling),
        holdout=data.holdout,
        device=str(trainer.strategy.root_device),  # the module is back on the CPU after fit
    )


def run_metrics(
    final: dict[str, Any], field: Any, signal: Any, data_range: float, precision: str, steps: int, t_start: float,
    t_wall0: float, sampling: str, holdout: Any = None, device: str = "cpu", evaluated: str = "fp32 evaluation",
) -> dict[str, Any]:  # fmt: skip
    """The final metrics (``final``, with its ``fit_time_s``) and the run's facts, in
    ``metrics.json``'s order; ``evaluated``: what the metrics were measured on."""
    final = dict(final)
    fit_s = final.pop("fit_time_s")
    diverged = final.get("nonfinite_steps", 0) > 0 or not math.isfinite(final["psnr"])
    return {
        "status": "diverged" if diverged else "ok",
        **final,
        "psnr_convention": f"10 log10(R^2/MSE) over all valid samples and channels, signal units, R = {data_range:g}; {evaluated}",
        "steps": steps,
        "num_params": field.num_parameters(),
        "fit_time_s": fit_s,
        "wall_time_s": time.perf_counter() - t_start,
        "started_at": t_wall0,
        "finished_at": time.time(),
        "precision": precision,
        "sampling": sampling,
        **({"holdout": str(holdout)} if holdout is not None else {}),
        "device": device,
        "signal": {"name": signal.name, "shape": list(signal.shape), "channels": signal.channels},
    }


def write_run(parts: Parts, metrics: dict[str, Any], run_dir: Path) -> None:
    """The run's files and summary (:func:`write_files`)."""
    write_files(parts.field, parts.store, metrics, run_dir, parts.data.stats.range)


def write_files(field: Any, store: Any, metrics: dict[str, Any], run_dir: Path, data_range: float) -> None:
    """``field.nir`` (the compact file, what ``bytes`` counts), ``field.safetensors`` (the same
    values, for interchange) and ``metrics.json`` into the run directory; the summary lines."""
    field.cpu().save(run_dir / "field.nir", store.dtype, store.int8_scale, coder=store.coder)
    field.save(run_dir / "field.safetensors", store.dtype, store.int8_scale)
    write_json(run_dir / "metrics.json", metrics)
    print(console.summary(metrics, run_dir, data_range), flush=True)


def write_config(run_dir: Path, cfg: DictConfig) -> None:
    """``config.yaml``: the run's resolved config (every choice in place)."""
    from nir.checkpoint import atomic_write_text

    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))


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
    check: bool = True,
) -> tuple[Any, dict[str, Any]]:
    """:func:`train`, also returning the trained :class:`~nir.reuse.field.Field` (on the CPU, eval mode).
    ``callbacks``: extra Lightning callbacks (benchmarks, custom logging). ``choices``: the
    chosen option per config group (Hydra's, by default), for the data preset's line.
    ``overrides``: the overrides to record in ``.hydra/`` (Hydra's task overrides by default;
    no record outside Hydra unless given).

    The run holds its directory's lock (:class:`nir.training.faults.RunLock`) from before its first write
    to after its last, and stops at a step boundary with a checkpoint on SIGTERM, SIGINT or
    SIGUSR1 (:class:`nir.training.faults.Interrupted`)."""
    t_start, t_wall0 = time.perf_counter(), time.time()
    # the run's warning filters, and those its libraries' first imports add, end with the run
    with warnings.catch_warnings():
        job = job_of(overrides)
        cfg = upgrade_targets(cfg)  # an old run's config.yaml names classes where they were
        choices = dict(choices) if choices is not None else dict(job.hydra.runtime.choices) if job.hydra else {}
        network, cfg, line = choose_network(cfg)
        if line:
            console.say(line)
        cfg, signal = resolve_auto_model(cfg, choices, job.task)
        line = preset_line(cfg, choices)
        if line:
            console.say(line)
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*LeafSpec.*", FutureWarning)
        run_dir = prepare_run_dir(cfg, run_dir, check)
        from nir.training.faults import SignalCatcher, run_lock, signals_to_catch

        with run_lock(run_dir, enabled=first_process()), SignalCatcher(signals_to_catch()) as catcher:
            if job.task is not None:
                write_hydra_record(run_dir, cfg, job.task, job.hydra)
            signal = build(cfg.data, "data") if signal is None else signal
            console.announce_signal(signal)
            settings = resolve_settings(cfg, signal, job, network)  # every choice once; cfg itself stays as composed
            if settings.network == "never":  # nothing to train: the residual carries the signal
                return _without_network(settings, signal, run_dir, t_start, t_wall0)
            parts = build_parts(settings, signal)  # the input is read and checked before Lightning is imported
            with _quiet_lightning():  # Lightning's noise, silenced for this run only
                from nir.training.guards import InterruptCheckpoint

                interrupt = InterruptCheckpoint(catcher, run_dir)
                trainer, final_metrics = build_trainer(parts, run_dir, [interrupt, *callbacks], choices)
                if first_process():
                    print(console.start_line(int(settings.config.batch_size), parts, trainer), flush=True)
                final, steps = fit_with_guards(parts, trainer, final_metrics, run_dir, t_start)
                metrics = collect_metrics(parts, trainer, final, steps, t_start, t_wall0)
                if first_process():
                    write_run(parts, metrics, run_dir)
    return parts.field.cpu().eval(), metrics


def _without_network(settings: Any, signal: Any, run_dir: Path, t_start: float, t_wall0: float) -> tuple[Any, dict]:
    """A bounded run with no network (``bound.network=never``): no Trainer, no training data, no
    Lightning; the field (:class:`nir.fields.zero.Zero`) gets its residual, checked at every
    sample, and its metrics (PSNR, per decade) are the bounded answer's, the only one it has;
    ``config.yaml``, ``field.nir``, ``field.safetensors`` and ``metrics.json`` as for any run."""
    from nir.run.parts import build_field, network_dims
    from nir.training.bounded import bound_residual, stored_sizes
    from nir.training.metrics import GridMetrics, SignalStats, score

    cfg, store = settings.config, settings.store
    if first_process():
        write_config(run_dir, cfg)
    field = build_field(cfg, cfg.model, network_dims(cfg, signal), signal).eval()
    t = time.perf_counter()
    stats = SignalStats.measure(signal)
    gm = None if signal.is_image else GridMetrics(stats)  # an image's SSIM: score() samples it again
    final = {**bound_residual(field, signal, settings.bound, gm), **stored_sizes(field, signal, store)}
    final.update(score(field, signal) if gm is None else gm.results(), nonfinite_steps=0)
    final["fit_time_s"] = time.perf_counter() - t
    metrics = run_metrics(final, field, signal, stats.range, settings.precision, 0, t_start, t_wall0, sampling="none",
                          evaluated="fp32 evaluation of the bounded answer (no network)")  # fmt: skip
    if first_process():
        write_files(field, store, metrics, run_dir, stats.range)
    return field, metrics


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Lightning's info lines (GPU/TPU/AMP availability, a logger advert, "fit stopped") are
    dropped for the run; nir prints its own start line (:func:`nir.run.console.start_line`). Warnings
    still show."""
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


def _signal_overrides(signal: Any, run_dir: Path) -> list[str]:
    """The ``data=...`` overrides for what ``nir.fit`` was given (a path, an option, an array)."""
    import numpy as np
    import torch

    from nir.run.config import reader_option

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


@dataclass(frozen=True)
class Prepared:
    """A config composed and checked once for many arrays of the same kind (``data=array``):
    :meth:`fit` trains one without Hydra's composition or the key check again (the chunk codec
    fits every chunk of a store so; about 0.3 s of a 0.45 s chunk before)."""

    cfg: DictConfig
    choices: dict[str, Any]

    def fit(self, path: str | Path, run_dir: str | Path) -> tuple[Any, dict[str, Any]]:
        cfg = self.cfg.copy()
        cfg.data.path = str(Path(path).resolve())
        return train_field(cfg, run_dir, choices=self.choices, check=False)


@functools.lru_cache(maxsize=8)
def prepare(overrides: tuple[str, ...]) -> Prepared:
    """``data=array`` with ``overrides`` composed and checked once (cached per process)."""
    cfg, choices = compose_config(["data=array", "data.path=__each_array__", *overrides])
    check_config(cfg)
    return Prepared(cfg, choices)


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
