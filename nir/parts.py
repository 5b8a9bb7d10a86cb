"""A run's parts, built from its config: the signal, the ``auto`` choices resolved (loss,
sampling, model, each printed in one line), the field sized to its byte budget, the training data,
the Lightning module, and the settings checked once (:class:`~nir.settings.Settings`).
:class:`Parts` holds them typed; every later step of a run reads them from there."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from nir.codec.budget import fit_to_budget
from nir.config import build, compose_config, kwargs_of
from nir.console import announce_signal, say
from nir.errors import NirError, require
from nir.settings import Job, Settings, resolve_precision, store_of

if TYPE_CHECKING:
    from nir.batches import TrainingData
    from nir.codec.storage import Store
    from nir.field import Field
    from nir.module import FieldModule
    from nir.signal import Signal


@dataclass
class Parts:
    """What a run trains (the signal, its training data, the field, the Lightning module) and
    what it was told (the settings, checked once)."""

    signal: Signal
    data: TrainingData
    field: Field
    module: FieldModule
    settings: Settings
    loss_option: str | None = None  # what loss=auto chose (None: the loss was named)

    @property
    def precision(self) -> str:
        return self.settings.precision

    @property
    def store(self) -> Store:
        return self.settings.store


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
    say(f"loss=auto: {why} -> loss={choice}{brings}; pass loss=... to choose")
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
    say(f"sampling=auto: {why} -> sampling={choice}; pass sampling=... to choose")
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
    say(f"model=auto: {why} -> model={option}{''.join(', ' + o for o in sized)}; pass model=... to choose")
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
    cfg: DictConfig, model: DictConfig, dims: dict[str, Any], signal: Any, store: Store, dtype: str | None = None
) -> int:
    """The field file's size for a candidate model node at ``dtype`` (default: the run's store)
    with its integers at N bits each: the entropy coder only makes the file smaller
    (for :func:`nir.codec.budget.fit_to_budget`)."""
    with contextlib.redirect_stdout(io.StringIO()):  # a candidate's own start lines (e.g. a grid's)
        field = build_field(cfg, model, dims, signal)
    return field.stored_bytes(dtype or store.dtype, store.int8_scale, coder="raw")


def build_parts(cfg: DictConfig, signal: Any = None, job: Job | None = None) -> Parts:
    """Signal (``signal``: already read, e.g. by ``model=auto``), network, transform and loss from
    the config; the training data (which fits the transform and the loss once); the field; the
    Lightning module; the settings (``job``: the Hydra job the run is, :func:`nir.settings.job_of`)."""
    from nir.losses import check_setup

    store = store_of(cfg)
    signal = build(cfg.data, "data") if signal is None else signal
    announce_signal(signal)
    loss_option = resolve_auto_loss(cfg, signal) if str(cfg.loss.get("_target_", "")) == "nir.losses.Auto" else None
    resolve_auto_sampling(cfg, signal)
    dims = {"in_dim": signal.ndim, "out_dim": signal.channels}
    if cfg.model.get("bounds", "absent") is None:  # networks that cover a box (grids) get the signal's
        dims["bounds"] = [list(b) for b in signal.bounds]
    shared = resolve_share(cfg, signal)
    if shared:
        say(shared)
    sized = fit_to_budget(
        cfg, signal, dims, store.dtype, lambda node, dtype: _candidate_bytes(cfg, node, dims, signal, store, dtype)
    )
    if sized:
        say(sized)
        store = store_of(cfg)  # the budget's ladder may have chosen the stored bits
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
    from nir.codec.bound import bound_of
    from nir.codec.storage import StoredTraining

    bound = bound_of(cfg.get("bound"), float(data.stats.floor) or None)
    module = FieldModule(
        field, loss, data, optim, max_steps=int(trainer_cfg.max_steps), compile=bool(cfg.compile),
        steps_per_call=steps_per_call(cfg), cuda_graph=cfg.get("cuda_graph", "auto"),
        clip=trainer_cfg.get("gradient_clip_val"),
        stored=StoredTraining(store, int(trainer_cfg.max_steps), signal.numel * signal.channels, bound),
    )  # fmt: skip
    return Parts(signal, data, field, module, Settings(store, precision, bound, job or Job()), loss_option)


def resolve_share(cfg: DictConfig, signal: Any) -> str | None:
    """``size.share`` (under a bound): the network's budget as that share of the bytes the bound
    needs without a network, estimated by the context coder on the signal's own map (seconds:
    no training), at least :data:`nir.settings.MIN_NETWORK_BYTES`; set as ``size.bytes``. The
    one line that says so (None without ``size.share``)."""
    import numpy as np
    from omegaconf import open_dict

    from nir.codec import bound as bounds
    from nir.codec import context
    from nir.metrics import SignalStats
    from nir.settings import MIN_NETWORK_BYTES

    size = cfg.get("size") or {}
    share = size.get("share")
    if share is None:
        return None
    require(isinstance(share, (int, float)) and 0 < share < 1, f"size.share must be a number in (0, 1), got {share!r}")
    require(size.get("bytes") is None and size.get("ratio") is None, "set one of size.bytes, size.ratio, size.share")
    bound = bounds.bound_of(cfg.get("bound"), float(SignalStats.measure(signal).floor) or None)
    require(
        bound is not None, "size.share needs a bound (bound.rel or bound.abs): it is a share of what the bound costs"
    )
    y = signal.flat().double().numpy().reshape(-1)
    own = bound.g(np.nan_to_num(y, nan=0.0))
    shape = tuple(signal.shape) + ((signal.channels,) if signal.channels > 1 else ())
    modes = np.full(context.block_count(shape), context.MAP, np.uint8)
    coded = context.encode(own, own, modes, shape, 2 * bounds.MARGIN * bound.step)
    estimate = len(coded[0]) if coded is not None else 4 * y.size
    budget = max(MIN_NETWORK_BYTES, int(share * estimate))
    with open_dict(cfg):
        cfg.size.bytes, cfg.size.share = budget, None
    return f"size: the bound needs about {estimate:,} bytes without a network -> network budget {budget:,} bytes ({share:g} of it, at least {MIN_NETWORK_BYTES:,}; size.share)"


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
    if k != asked:
        say(
            f"nir: steps_per_call {asked} -> {k}, so that every call ends on the last step, each validation "
            f"and each log (trainer.max_steps, val_check_interval, log_every_n_steps: {', '.join(map(str, events))})"
        )
    return k
