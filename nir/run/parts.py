"""A run's parts, built from its resolved settings (:mod:`nir.run.resolve`): the field, the
training data, the Lightning module. :class:`Parts` holds them typed with the signal and the
settings; every later step of a run reads them from there."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from nir.run.config import build, kwargs_of
from nir.run.settings import Settings

if TYPE_CHECKING:
    from nir.codec.storage import Store
    from nir.data.signal import Signal
    from nir.reuse.field import Field
    from nir.training.batches import TrainingData
    from nir.training.module import FieldModule


@dataclass
class Parts:
    """What a run trains (the signal, its training data, the field, the Lightning module) and
    what it was told (the settings, checked once)."""

    signal: Signal
    data: TrainingData
    field: Field
    module: FieldModule
    settings: Settings

    @property
    def precision(self) -> str:
        return self.settings.precision

    @property
    def store(self) -> Store:
        return self.settings.store


def network_dims(cfg: DictConfig, signal: Any) -> dict[str, Any]:
    """The keywords a network gets from the signal: ``in_dim``, ``out_dim`` and, for a network
    that covers a box (a grid, ``bounds: null`` in its node), the signal's box."""
    dims: dict[str, Any] = {"in_dim": signal.ndim, "out_dim": signal.channels}
    if cfg.model.get("bounds", "absent") is None:
        dims["bounds"] = [list(b) for b in signal.bounds]
    return dims


def build_field(cfg: DictConfig, model: DictConfig, dims: dict[str, Any], signal: Any) -> Any:
    """The untrained field for ``model`` (a model node) on ``signal``: the network, the value
    transform and the plain-value spec a saved field carries."""
    from nir.components import component_spec
    from nir.reuse.field import Field

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


def build_parts(settings: Settings, signal: Any) -> Parts:
    """The training data (which fits the transform and the loss once), the field and the
    Lightning module, from the run's resolved ``settings`` (:func:`nir.run.resolve.resolve_settings`)
    and its ``signal``."""
    from nir.codec.storage import StoredTraining
    from nir.data.holdout import Holdout
    from nir.training.batches import TrainingData  # Lightning's import cost only once the input is known good
    from nir.training.losses import check_setup
    from nir.training.module import FieldModule

    cfg = settings.config
    field = build_field(cfg, cfg.model, network_dims(cfg, signal), signal)
    transform = field.transform
    loss = build(cfg.loss, "loss")
    optim = build(cfg.optim, "optim")
    sampling = build(cfg.sampling, "sampling")
    holdout = Holdout.of(cfg.data.get("holdout"), signal.shape, int(cfg.seed))
    data = TrainingData(
        signal, transform, loss, int(cfg.batch_size), float(cfg.cache_mb), int(cfg.seed), sampling, holdout
    )
    check_setup(loss, transform, settings.precision)
    t = cfg.trainer
    module = FieldModule(
        field, loss, data, optim, max_steps=int(t.max_steps), compile=bool(cfg.compile),
        steps_per_call=settings.steps_per_call, cuda_graph=cfg.get("cuda_graph", "auto"),
        clip=t.get("gradient_clip_val"),
        stored=StoredTraining(settings.store, int(t.max_steps), signal.numel * signal.channels, settings.bound,
                              settings.steps_per_call),
    )  # fmt: skip
    return Parts(signal, data, field, module, settings)
