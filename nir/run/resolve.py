"""The run's choices, resolved once: every ``auto`` option and size rule is a function that reads
the config and the signal and returns its choice with the one line that says it; nothing writes
into the composed config. :func:`resolve_settings` calls them in order and derives from their
answers the one frozen :class:`~nir.run.settings.Settings` (its ``config``: the composed config
with the choices in place, read-only), which the parts are built from and ``config.yaml`` is
written from.

- ``model=auto`` (:func:`resolve_auto_model`) composes the config again with ``model=<choice>``
  as an override, so Hydra's precedence rule holds; it runs first, before the run directory;
- ``loss=auto`` (:func:`choose_loss`), then ``sampling=auto`` (:func:`choose_sampling`, which
  reads the transform the loss brought);
- ``size.share`` under a bound (:func:`choose_share`): the network's budget in bytes;
- ``size.bytes`` / ``size.ratio`` / a share (:func:`nir.run.budget.fit_to_budget`): the model's
  size knob and the stored bits;
- the precision, the stored form, the bound and the optimizer steps per call.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from nir.errors import NirError, require
from nir.run.budget import budget_bytes, fit_to_budget
from nir.run.config import build, compose_config, option_nodes, with_keys
from nir.run.console import say
from nir.run.parts import build_field, network_dims
from nir.run.settings import Job, Settings, resolve_precision, store_of

IDENTITY = "nir.transforms.Identity"


@dataclass(frozen=True)
class Choice:
    """What one rule chose: its group and option (``loss``, ``log_mse``), the config nodes it
    brings (``{group: node}``: ``loss=log_mse`` brings ``transform=log``) and the line that says so."""

    group: str
    option: str
    nodes: dict[str, Any] = field(default_factory=dict)
    line: str = ""


def choose_loss(cfg: DictConfig, signal: Any) -> Choice | None:
    """``loss=auto`` (``data=array``'s default): the loss (and its transform) from the signal's
    exact extremes (:func:`nir.training.losses.auto_choice`); None when a loss was named. An array
    that is not long-tailed enough for a log or asinh loss gets ``mse`` on standardised values
    (``transform=standardize``, issue 45: counts up to 523 fitted in their own units came back
    10x too low from a network whose first outputs are near +-1); an image is already in [-1, 1]."""
    if str(cfg.loss.get("_target_", "")) != "nir.training.losses.Auto":
        return None
    from nir.training.losses import auto_choice
    from nir.transforms import floor_from_data

    st = signal.summary()
    minimum = float(st["min"].min())
    floor = floor_from_data(signal.fit_sample(), 1e-7) if minimum <= 0 else 0.0
    choice, why = auto_choice(
        float(st["absmin"]), float(st["absmax"]), minimum, float(cfg.loss.get("min_decades", 3.0)), floor
    )
    own = str(cfg.transform.get("_target_", IDENTITY))
    if choice != "mse" and own != IDENTITY and not (choice == "log_mse" and own.endswith(".Log")):
        choice = "mse"  # a transform named on the command line wins: MSE in its space
        why += f"; transform {own.rsplit('.', 1)[-1]} as given"
    nodes = option_nodes("loss", choice)
    if own != IDENTITY:
        nodes.pop("transform", None)
    elif choice == "mse" and not signal.is_image:  # an image is read into [-1, 1]; an array keeps its units
        nodes["transform"] = ("standardize", option_nodes("transform", "standardize")["transform"][1])
        why += "; scaled into the network's range"
    brings = "".join(f", {g}={option}" for g, (option, _) in nodes.items() if g != "loss")
    line = f"loss=auto: {why} -> loss={choice}{brings}; pass loss=... to choose"
    return Choice("loss", choice, {g: node for g, (_, node) in nodes.items()}, line)


def choose_sampling(cfg: DictConfig, signal: Any, transform: str) -> Choice | None:
    """``sampling=auto`` (``data=array``'s default): the sampling from the signal and the
    transform in effect (``transform``: its ``_target_``, after ``loss=auto``); None when named."""
    if str(cfg.sampling.get("_target_", "")) != "nir.data.samplers.Auto":
        return None
    from nir.data.samplers.auto import choose_sampling as rule

    choice, why = rule(bool(signal.long_tailed), transform)
    node = option_nodes("sampling", choice)["sampling"][1]
    return Choice(
        "sampling",
        choice,
        {"sampling": node},
        f"sampling=auto: {why} -> sampling={choice}; pass sampling=... to choose",
    )


def resolve_auto_model(cfg: DictConfig, choices: dict[str, Any], task: Sequence[str] | None) -> tuple[DictConfig, Any]:
    """``model=auto``: choose the network from the signal's shape (:mod:`nir.fields.auto`), print
    the decision in one line, and compose the config again as if ``model=<choice>`` had been
    typed, so the precedence rule holds. ``task``: the run's overrides; without them (a config
    composed by hand) the chosen model's node and optimiser settings replace ``cfg``'s in a copy.
    Returns the config and the signal (read once, reused by :func:`resolve_settings`)."""
    if str(cfg.model.get("_target_", "")) != "nir.fields.Auto":
        return cfg, None
    from nir.fields.auto import choose_model

    signal = build(cfg.data, "data")
    option, why, sized = choose_model(signal.ndim, signal.numel)
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


ZERO = {"_target_": "nir.fields.zero.Zero"}


def choose_network(cfg: DictConfig) -> tuple[str, DictConfig, str | None]:
    """``bound.network`` (under a bound): ``always`` trains a network, ``never`` stores none (the
    residual carries the signal: :class:`nir.fields.zero.Zero`), ``auto`` trains one only where
    the user asked for its size or named it (``size.ratio`` / ``size.bytes``, a model other than
    ``auto``): on every field measured a trained network saved nothing under a bound, the
    residual coding no block with it (docs/bounded.md). Returns the decision, the config (with
    the zero network in place of the model for ``never``, with the identity transform, so the
    field answers exactly zero and a decode needs no torch: a copy) and the line that says so."""
    from nir.run.settings import NETWORK_CHOICES

    bound = cfg.get("bound") or {}
    asked = str(bound.get("network", "always"))
    require(asked in NETWORK_CHOICES, f"bound.network must be one of {', '.join(NETWORK_CHOICES)}, got {asked!r}")
    bounded = bound.get("rel") is not None or bound.get("abs") is not None
    if not bounded:
        require(
            asked != "never",
            "bound.network=never needs a bound (bound.rel or bound.abs): without one the network is the field",
        )
        return "always", cfg, None
    size = cfg.get("size") or {}
    sized = size.get("bytes") is not None or size.get("ratio") is not None
    named = str(cfg.model.get("_target_", "")) != "nir.fields.Auto"
    line = None
    if asked == "auto":
        asked = "always" if (sized or named) else "never"
        line = ("network: trained (bound.network=auto: a network was asked for by its size or name)" if asked == "always"
                else "network: none, the residual carries the signal (bound.network=auto: no trained network has saved "
                "bytes under a bound on the fields measured, docs/bounded.md; bound.network=always trains one)")  # fmt: skip
    if asked == "always":
        return "always", cfg, line
    new = cfg.copy()
    with open_dict(new):  # nothing is trained: no network to size, and no loss, sampling or transform to choose
        new.model = OmegaConf.create(ZERO)
        new.size = OmegaConf.create({"bytes": None, "ratio": None, "share": None})
        for group, option in (("loss", "mse"), ("transform", "identity"), ("sampling", "uniform")):
            new[group] = option_nodes(group, option)[group][1]
    return "never", new, line


def compose_again(overrides: Sequence[str]) -> DictConfig:
    """``conf/train.yaml`` with ``overrides``, inside a running Hydra app (its search path) or not."""
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        from hydra import compose

        return compose(config_name="train", overrides=list(overrides))
    return compose_config(overrides)[0]


def measured_bound(cfg: DictConfig, signal: Any) -> Any:
    """The run's error bound (:func:`nir.codec.bound.bound_of`). A relative bound without
    ``bound.floor`` gets the data's smallest non-zero magnitude as its floor
    (:func:`nir.codec.bound.relative_floor`): the promise holds for every non-zero value. A floor
    above it is the user's choice, and the values below it are counted in the run's summary."""
    from nir.codec.bound import bound_of, relative_floor

    node = cfg.get("bound")
    if not node or node.get("rel") is None:
        return bound_of(node, None)
    return bound_of(node, relative_floor(signal.smallest_nonzero(), str(signal.meta.get("dtype", "float32"))))


def choose_share(cfg: DictConfig, signal: Any, bound: Any) -> tuple[int, str] | None:
    """``size.share`` (under a bound): the network's budget as that share of the bytes the bound
    needs without a network, estimated by the context coder on the signal's own map (seconds:
    no training), at least :data:`nir.run.settings.MIN_NETWORK_BYTES`. Returns the budget in
    bytes and the one line that says so (None without ``size.share``)."""
    import numpy as np

    from nir.codec import bound as bounds
    from nir.codec import context
    from nir.run.settings import MIN_NETWORK_BYTES

    size = cfg.get("size") or {}
    share = size.get("share")
    if share is None:
        return None
    require(isinstance(share, (int, float)) and 0 < share < 1, f"size.share must be a number in (0, 1), got {share!r}")
    require(size.get("bytes") is None and size.get("ratio") is None, "set one of size.bytes, size.ratio, size.share")
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
    return budget, (
        f"size: the bound needs about {estimate:,} bytes without a network -> network budget {budget:,} bytes "
        f"({share:g} of it, at least {MIN_NETWORK_BYTES:,}; size.share)"
    )


def steps_per_call(cfg: DictConfig) -> tuple[int, str | None]:
    """Optimizer steps per training call (``steps_per_call``, :mod:`nir.training.steps`): the requested
    (or the device's ``auto``) value, reduced so that every call ends on the last step, each
    validation and each scalar log; with the line that says so when it was reduced."""
    from nir.training.steps import effective_steps_per_call, resolve_steps_per_call

    t = cfg.trainer
    try:
        asked = resolve_steps_per_call(cfg.get("steps_per_call", 1), str(t.get("accelerator", "cpu")))
    except ValueError as e:
        raise NirError(str(e)) from None
    events = [int(t.max_steps), int(t.get("val_check_interval") or 0), int(t.get("log_every_n_steps", 50) or 0)]
    k = effective_steps_per_call(asked, *events)
    if k == asked:
        return k, None
    return k, (
        f"nir: steps_per_call {asked} -> {k}, so that every call ends on the last step, each validation "
        f"and each log (trainer.max_steps, val_check_interval, log_every_n_steps: {', '.join(map(str, events))})"
    )


def candidate_bytes(cfg: DictConfig, model: DictConfig, signal: Any, dtype: str, int8_scale: str) -> int:
    """The field file's size for a candidate model node at ``dtype`` with its integers at N bits
    each: the entropy coder only makes the file smaller (for :func:`nir.run.budget.fit_to_budget`)."""
    with contextlib.redirect_stdout(io.StringIO()):  # a candidate's own start lines (e.g. a grid's)
        field = build_field(cfg, model, network_dims(cfg, signal), signal)
    return field.stored_bytes(dtype, int8_scale, coder="raw")


def resolve_settings(cfg: DictConfig, signal: Any, job: Job | None = None, network: str = "always") -> Settings:
    """Every choice of the run, once, in order (each printed in its line), into one frozen
    :class:`~nir.run.settings.Settings`; ``cfg`` itself is left as composed. ``network``: what
    :func:`choose_network` decided (``never``: no network to size)."""
    chosen: dict[str, str] = {}
    updates: dict[str, Any] = {}
    lines: list[str] = []

    def said(line: str | None) -> None:
        if line:
            say(line)
            lines.append(line)

    loss = choose_loss(cfg, signal)
    resolved = with_keys(cfg, loss.nodes) if loss else cfg
    sampling = choose_sampling(resolved, signal, str(resolved.transform.get("_target_", "")))
    for choice in (loss, sampling):
        if choice is not None:
            said(choice.line)
            chosen[choice.group] = choice.option
            updates.update(choice.nodes)
    resolved = with_keys(cfg, updates)
    bound = measured_bound(resolved, signal)
    store = store_of(resolved)
    shared = choose_share(resolved, signal, bound)
    budget = shared[0] if shared else budget_bytes(resolved, signal)
    if shared:
        said(shared[1])
        updates.update({"size.bytes": budget, "size.share": None})
    sized = fit_to_budget(resolved, budget, store.dtype,
                          lambda node, dtype: candidate_bytes(resolved, node, signal, dtype, store.int8_scale))  # fmt: skip
    if sized is not None:
        said(sized.line)
        updates.update({f"model.{k}": v for k, v in sized.model.items()})
        if sized.bits is not None:
            updates["store.bits"] = sized.bits
    resolved = with_keys(cfg, updates)
    k, line = steps_per_call(resolved)
    said(line)
    t = resolved.trainer
    precision = resolve_precision(t.get("precision", "32"), t.get("accelerator", "auto"))
    OmegaConf.set_readonly(resolved, True)
    return Settings(resolved, store_of(resolved), precision, bound, job or Job(), chosen, k, tuple(lines), network)
