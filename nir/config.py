"""Configuration: where the configs live, composing them from Python, checking them, and turning
config nodes into components (Hydra ``_target_``, the one selection mechanism)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf, open_dict

from nir.errors import NirError, positive_float, positive_int, require



def _conf_dir() -> Path:
    """The config tree: ``NIR_CONFIG_DIR`` if set; ``nir/conf`` inside an installed wheel; the
    repository's top-level ``conf/`` in a source checkout (editable install)."""
    if os.environ.get("NIR_CONFIG_DIR"):
        return Path(os.environ["NIR_CONFIG_DIR"])
    here = Path(__file__).resolve().parent
    return here / "conf" if (here / "conf" / "train.yaml").is_file() else here.parent / "conf"


CONF_DIR = _conf_dir()

#: keyword shorthands of ``nir.fit``
ALIASES = {
    "steps": "trainer.max_steps",
    "lr": "optim.lr",
    "precision": "trainer.precision",
    "channel_axis": "data.channel_axis",
}


def groups() -> dict[str, list[str]]:
    """``{group: [options]}`` of the config tree."""
    return {p.name: sorted(q.stem for q in p.glob("*.yaml")) for p in CONF_DIR.iterdir() if p.is_dir()}


def compose_config(overrides: Sequence[str]) -> tuple[DictConfig, dict[str, Any]]:
    """``conf/train.yaml`` composed with ``overrides`` as ``nir-train`` would, and the chosen
    option of each group (Hydra's ``runtime.choices``)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides), return_hydra_config=True)
    choices = {k: v for k, v in cfg.hydra.runtime.choices.items() if not k.startswith("hydra")}
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, choices


def check_config(cfg: DictConfig) -> None:
    """Refuse impossible settings before anything is built (one-line errors). Component
    arguments (``model.*``, ``optim.*``, ...) are checked by the components themselves."""
    positive_int("batch_size", cfg.batch_size)
    require(
        isinstance(cfg.check_finite_every, int) and cfg.check_finite_every >= 0,
        f"check_finite_every must be an integer >= 0 (0 = off), got {cfg.check_finite_every!r}",
    )
    positive_int("trainer.max_steps", cfg.trainer.max_steps)
    positive_float("cache_mb", cfg.cache_mb)
    require(isinstance(cfg.compile, bool), f"compile must be true or false, got {cfg.compile!r}")
    vci = cfg.trainer.get("val_check_interval")
    if vci is not None:
        positive_int("trainer.val_check_interval", vci)


def build(node: DictConfig, key: str, **kwargs: Any) -> Any:
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


def kwargs_of(node: DictConfig) -> dict[str, Any]:
    """A component's constructor arguments as plain values (``_target_`` dropped)."""
    return {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k != "_target_"}


def flat(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Config as ``{"model.hidden_dim": 256, ...}`` with scalar values (for the HPARAMS tab)."""
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat(v, key + "."))
        elif isinstance(v, (list, tuple)):
            out[key] = str(v)
        elif v is None or isinstance(v, (bool, int, float, str)):
            out[key] = "null" if v is None else v
    return out


def preset_line(cfg: DictConfig, choices: dict[str, Any]) -> str | None:
    """One line saying what a data preset brought (``data=peaks1d`` replaces the model, the loss
    and several keys), with the values in effect after the command line; ``None`` for data
    options that bring nothing."""
    name = choices.get("data")
    path = CONF_DIR / "data" / f"{name}.yaml"
    if not name or not path.is_file() or "@package _global_" not in path.read_text().split("\n", 1)[0]:
        return None  # a plain data option only configures its reader
    preset = yaml.safe_load(path.read_text()) or {}
    parts = []
    for entry in preset.get("defaults", []):
        if isinstance(entry, dict):
            for key in entry:
                group = key.removeprefix("override /")
                if group != key:
                    parts.append(f"{group}={choices.get(group)}")
    for key, value in flat({k: v for k, v in preset.items() if k not in ("defaults", "data")}).items():
        parts.append(f"{key}={OmegaConf.select(cfg, key, default=value)}")
    if not parts:
        return None
    return f"data={name} brings {', '.join(parts)} (override any of them on the command line)"
