"""Configuration: where the configs live, composing them from Python, checking them, and turning
config nodes into components (Hydra ``_target_``, the one selection mechanism)."""

from __future__ import annotations

import functools
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
    package = Path(__file__).resolve().parent.parent
    return package / "conf" if (package / "conf" / "train.yaml").is_file() else package.parent / "conf"


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


@functools.cache
def readers() -> dict[str, str]:
    """The readers, one table keyed by file suffix: suffix -> the ``data=`` option that reads it.
    Built from the options themselves: each ``conf/data/<option>.yaml`` names its reader in
    ``_target_``, and a reader lists its suffixes (:func:`nir.data.readers.reads`). A new format is one
    reader function and one YAML (docs/architecture.md)."""
    from hydra.utils import get_method

    table: dict[str, str] = {}
    for option in groups()["data"]:
        node = yaml.safe_load((CONF_DIR / "data" / f"{option}.yaml").read_text()) or {}
        target = (node.get("data") or {}).get("_target_") or node.get("_target_")  # a _global_ preset or a plain one
        try:
            suffixes = getattr(get_method(target), "suffixes", ()) if target else ()
        except Exception:  # a reader that does not import here reads nothing here
            suffixes = ()
        for suffix in suffixes:
            table.setdefault(suffix, option)
    return table


def reader_option(path: str | Path) -> str:
    """The ``data=`` option that reads ``path`` (by its suffix, :func:`readers`); one line otherwise."""
    suffix, table = Path(path).suffix.lower(), readers()
    require(
        suffix in table,
        f"data.path {str(path)!r}: no reader for {suffix or 'a file without a suffix'!r}; nir reads {', '.join(table)}",
    )
    return table[suffix]


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


def config_keys(cfg: Any, prefix: str = "") -> list[str]:
    """Every dotted key of a config (nodes and leaves)."""
    out = []
    for k, v in cfg.items():
        out.append(f"{prefix}{k}")
        if isinstance(v, (dict, DictConfig)):
            out += config_keys(v, f"{prefix}{k}.")
    return out


def unknown_key_message(key: str, cfg: Any, candidates: Sequence[str] | None = None) -> str:
    """One line for a key that does not exist, with the closest valid keys."""
    import difflib

    candidates = list(candidates) if candidates is not None else config_keys(cfg)
    close = difflib.get_close_matches(key, candidates, n=2, cutoff=0.6)
    if not close:  # the same last part under another node (a key put in the wrong group)
        close = [c for c in candidates if c.rsplit(".", 1)[-1] == key.rsplit(".", 1)[-1]][:2]
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    return f"unknown config key {key!r}; {hint}(nir-train --cfg job lists every key)"


def _accepted(target: str) -> set[str] | None:
    """Keyword arguments of a ``_target_`` (None: it takes any, or it cannot be imported here)."""
    import inspect

    from hydra.utils import get_method

    try:
        params = inspect.signature(get_method(target)).parameters.values()
    except Exception:
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind is not inspect.Parameter.VAR_POSITIONAL}


@functools.cache
def trainer_arguments() -> frozenset[str]:
    """The keyword arguments of Lightning's ``Trainer``, read from its source file without
    importing Lightning (7 s of a process's start on a 2-core machine, for a key check that a
    refused command line or ``--cfg job`` need not pay); imported where the file cannot be read."""
    import ast
    import importlib.util
    import inspect

    spec = importlib.util.find_spec("pytorch_lightning")
    try:
        source = Path(spec.submodule_search_locations[0]) / "trainer" / "trainer.py"
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.ClassDef) and node.name == "Trainer":
                (init,) = [f for f in node.body if isinstance(f, ast.FunctionDef) and f.name == "__init__"]
                a = init.args
                return frozenset(x.arg for x in [*a.posonlyargs, *a.args, *a.kwonlyargs] if x.arg != "self")
    except (AttributeError, IndexError, OSError, SyntaxError, TypeError, ValueError):
        pass
    import pytorch_lightning as pl

    return frozenset(inspect.signature(pl.Trainer.__init__).parameters) - {"self"}


def check_keys(cfg: DictConfig) -> None:
    """Refuse keys nothing reads (``+trainer.max_step=5``, ``+lr=1``): top-level keys must be
    ``train.yaml``'s, ``trainer.*`` must be Lightning Trainer arguments and a component's keys
    its constructor's arguments. One line with the closest valid keys."""

    base = yaml.safe_load((CONF_DIR / "train.yaml").read_text())
    known_top = (set(base) - {"defaults", "hydra"}) | set(groups()) - {"hydra"}
    for key in cfg:
        valid = sorted(known_top) + [k for k in config_keys(cfg) if k.split(".", 1)[0] in known_top]
        require(key in known_top, unknown_key_message(str(key), cfg, valid))
    if "trainer" in cfg:
        accepted = trainer_arguments()
        for key in cfg.trainer:
            require(key in accepted, unknown_key_message(f"trainer.{key}", cfg, [f"trainer.{a}" for a in accepted]))
    for group in groups():
        node = cfg.get(group)
        if not isinstance(node, DictConfig) or "_target_" not in node:
            continue
        accepted = _accepted(str(node._target_))
        if accepted is None:
            continue
        for key in node:
            if key != "_target_" and (group, key) != ("data", "holdout"):
                valid = [f"{group}.{a}" for a in sorted(accepted)]
                require(key in accepted, unknown_key_message(f"{group}.{key}", cfg, valid))
        sub = node.get("encoding")  # an encoding's own node (tiny-cuda-nn's split): its class's arguments
        if isinstance(sub, DictConfig) and isinstance(sub.get("otype"), str):
            inner = _accepted(str(sub.otype))
            for key in sub if inner is not None else ():
                valid = [f"{group}.encoding.{a}" for a in sorted(inner | {"otype"}) if a != "in_dim"]
                require(key in inner | {"otype"}, unknown_key_message(f"{group}.encoding.{key}", cfg, valid))


def check_config(cfg: DictConfig) -> None:
    """Refuse impossible settings before anything is built (one-line errors): unknown keys
    (:func:`check_keys`) and the top-level values. Component argument values (``model.*``,
    ``optim.*``, ...) are checked by the components themselves."""
    check_keys(cfg)
    positive_int("batch_size", cfg.batch_size)
    require(
        isinstance(cfg.check_finite_every, int) and cfg.check_finite_every >= 0,
        f"check_finite_every must be an integer >= 0 (0 = off), got {cfg.check_finite_every!r}",
    )
    positive_int("trainer.max_steps", cfg.trainer.max_steps)
    positive_float("cache_mb", cfg.cache_mb)
    require(isinstance(cfg.compile, bool), f"compile must be true or false, got {cfg.compile!r}")
    graph = cfg.get("cuda_graph", "auto")
    require(
        graph is True or graph is False or graph == "auto", f"cuda_graph must be auto, true or false, got {graph!r}"
    )
    if "store" in cfg:
        from nir.run.settings import store_of

        store_of(cfg)  # one line for a stored precision, coder or QAT setting that is not one
    vci = cfg.trainer.get("val_check_interval")
    if vci is not None:
        positive_int("trainer.val_check_interval", vci)


#: ``_target_`` paths moved when the package's folders became its layers (issue 44), old -> new,
#: the first matching prefix wins: a config written before (a run directory's ``config.yaml``)
#: still names them at their old paths
MOVED = {
    "nir.callbacks.DivergenceGuard": "nir.training.guards.DivergenceGuard",
    "nir.callbacks.": "nir.training.callbacks.",
    "nir.losses.": "nir.training.losses.",
    "nir.optim.": "nir.training.optim.",
    "nir.samplers.": "nir.data.samplers.",
    "nir.readers.": "nir.data.readers.",
    "nir.synthetic.": "nir.data.synthetic.",
}


def moved_target(target: str) -> str | None:
    """Where an old ``_target_`` lives now (None: it did not move)."""
    old = next((o for o in MOVED if target.startswith(o)), None)
    return None if old is None else MOVED[old] + target[len(old) :]


def upgrade_targets(cfg: DictConfig) -> DictConfig:
    """``cfg`` with every moved ``_target_`` at its new path (a copy; ``cfg`` itself when nothing
    moved), and one line naming what was read at its new path, so the file can be updated."""
    found: dict[str, str] = {}

    def walk(node: Any) -> None:
        for key, value in node.items() if isinstance(node, DictConfig) else []:
            if key == "_target_" and isinstance(value, str) and moved_target(value):
                found[value] = moved_target(value)
            elif isinstance(value, DictConfig):
                walk(value)

    walk(cfg)
    if not found:
        return cfg
    new = cfg.copy()

    def fix(node: Any) -> None:
        with open_dict(node):
            for key, value in node.items():
                if key == "_target_" and value in found:
                    node[key] = found[value]
                elif isinstance(value, DictConfig):
                    fix(value)

    fix(new)
    pairs = ", ".join(f"{o} -> {n}" for o, n in sorted(found.items()))
    print(f"nir: this config names classes at their paths before nir's layers moved; read at the new ones ({pairs}); "
          "update the file to silence this line", flush=True)  # fmt: skip
    return new


def build(node: DictConfig, key: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` with errors turned into one-line :class:`NirError`."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    if key == "data" and "holdout" in node:  # nir's own key of the data group (nir.data.holdout), no reader's argument
        node = OmegaConf.create({k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k != "holdout"})
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, NirError):
            raise cause from None
        raise NirError(f"{key}: {cause or e}".replace("\n", " ")) from None


def with_keys(node: DictConfig, updates: dict[str, Any]) -> DictConfig:
    """A copy of ``node`` with dotted keys set, added where missing (a choice put in place: a
    whole config node, a model's size knob, the stored bits); ``node`` itself is left as it is."""
    new = node.copy()
    with open_dict(new):
        for key, value in updates.items():
            OmegaConf.update(new, key, value, force_add=True, merge=False)
    return new


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


def option_nodes(group: str, option: str) -> dict[str, tuple[str, Any]]:
    """The config nodes an option brings, read from its file: ``{group: (option, node)}`` for
    the group and for those its defaults list overrides (``loss=log_mse`` brings
    ``transform=log``). For choosing an option after composition (``loss=auto``), where Hydra's
    compose cannot be called again."""
    path = CONF_DIR / group / f"{option}.yaml"
    text = yaml.safe_load(path.read_text()) or {}
    out: dict[str, tuple[str, Any]] = {}
    for entry in text.pop("defaults", []) or []:
        for key, value in entry.items() if isinstance(entry, dict) else []:
            other = key.removeprefix("override /")
            if other != key:
                out.update(option_nodes(other, value))
    out[group] = (option, text[group] if "@package _global_" in path.read_text().split("\n", 1)[0] else text)
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
