"""``nir-train``'s command line before Hydra runs: its own ``--help``, and the checks that turn
bad argv (an unknown option or key, an output directory that cannot be created, a config that
does not compose) into one line instead of a Hydra traceback."""

from __future__ import annotations

import re
from pathlib import Path

from nir.errors import NirError, require
from nir.run.config import check_config, compose_config, groups, unknown_key_message

#: the keys most runs change, shown by ``nir-train --help`` with their defaults
COMMON_KEYS = ["data.path", "trainer.max_steps", "optim.lr", "batch_size", "trainer.precision"]


def help_text() -> str:
    """``nir-train --help``: the groups and their options, the most used keys, where to read on."""
    from omegaconf import OmegaConf

    cfg, choices = compose_config([])
    lines = [
        "usage: nir-train [group=option ...] [key=value ...]        (one run)",
        "       nir-train -m key=a,b [group=x,y ...]                (a sweep: one run per combination)",
        "",
        "Fit a neural field to a signal (default: SIREN on the bundled chelsea photo). Results go to",
        "outputs/<date>/<time>/: metrics.json, field.nir, field.safetensors, checkpoints/, tb/ (tensorboard --logdir).",
        "",
        "Config groups (pick one option each; the default is marked *):",
    ]
    for group, options in sorted(groups().items()):
        if group == "hydra":
            continue
        opts = " | ".join(f"{o}*" if o == choices.get(group) else o for o in options)
        lines.append(f"  {group + '=':11s} {opts}")
    lines += ["", "Most used keys (default):"]
    for key in COMMON_KEYS:
        value = OmegaConf.select(cfg, key, default="")
        shown = (
            f"(none: the bundled photo data.sample={cfg.data.sample})"
            if key == "data.path" and value is None
            else value
        )
        lines.append(f"  {key + '=':20s} {shown}")
    lines += [
        "",
        "Every key:              nir-train --cfg job [overrides]   (the composed config, nothing is run)",
        "Hydra's own flags:      nir-train --hydra-help",
        "Examples: nir-train data=sources3d  |  nir-train data=array data.path=field.npy  |  nir-train model=hashgrid optim.lr=1e-2",
        "Docs: README.md (start here), docs/experiments.md (sweeps), docs/long-tail.md, docs/networks.md, docs/troubleshooting.md",
    ]
    return "\n".join(lines)


def overrides_of(argv: list[str]) -> list[str]:
    """The override arguments of ``argv``, parsed by Hydra's own argument parser (so flags
    with values, ``--cfg job`` or ``-p KEY``, are never taken for overrides)."""
    from hydra._internal.utils import get_args_parser

    args, _ = get_args_parser().parse_known_args(argv)
    return list(args.overrides or [])


def check_groups(overrides: list[str]) -> None:
    """One-line error for ``group=option`` naming an option that does not exist."""
    options = groups()
    for arg in overrides:
        if "=" not in arg or arg.startswith(("+", "~", "hydra")):
            continue
        key, value = arg.split("=", 1)
        if key in options and all(c.isalnum() or c in "_-," for c in value):
            for option in value.split(","):
                require(option in options[key], f"unknown {key} {option!r}; choose one of: {', '.join(options[key])}")


def output_dir(argv: list[str], overrides: list[str] | None = None) -> tuple[str, str | None, Path]:
    """Where ``nir-train``'s argv puts its output: the key (``hydra.run.dir``, or
    ``hydra.sweep.dir`` with ``-m``), the value given (None: the default), and that directory
    (``outputs/`` or ``multirun/`` for the default's dated subfolders)."""
    overrides = overrides_of(argv) if overrides is None else overrides
    multirun = any(a in ("-m", "--multirun") for a in argv)
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    value = next((a.split("=", 1)[1] for a in overrides if a.startswith(key + "=")), None)
    return (
        key,
        value,
        Path(value if value is not None else "multirun" if multirun else "outputs").expanduser().absolute(),
    )


def check_output_dir(argv: list[str], overrides: list[str]) -> None:
    """One line for an output directory that cannot be created (before Hydra tries): the
    nearest existing parent of ``hydra.run.dir`` (``hydra.sweep.dir`` with ``-m``; ``outputs/``
    or ``multirun/`` by default) must take a new directory. Tried for real, since a directory
    can look writable and refuse (``/proc``, read-only mounts, root's access checks)."""
    import tempfile

    key, value, p = output_dir(argv, overrides)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        require(p.is_dir(), "")
        Path(tempfile.mkdtemp(prefix=".nir-probe-", dir=p)).rmdir()
    except (OSError, NirError):
        shown = f"{key} {value!r}" if value is not None else f"the default run directory under {str(p)!r}"
        raise NirError(
            f"{shown} cannot be created: {str(p)!r} does not take new directories; choose another with {key}=..."
        ) from None


def check_compose(overrides: list[str]) -> None:
    """Compose the config once before Hydra runs, to turn composition errors (unknown keys,
    bad syntax) into one line. Sweep overrides (``a=1,2``) are left to Hydra."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as e:
        raise NirError(f"cannot parse overrides: {str(e).splitlines()[0]}") from None
    keep = [o.input_line for o in parsed if not o.is_sweep_override() and not o.key_or_group.startswith("hydra")]
    try:
        cfg, _ = compose_config(keep)
    except (HydraException, OmegaConfBaseException) as e:
        unknown = re.search(r"Could not override '([^']+)'|Key '([^']+)' is not in struct", str(e))
        if unknown:
            key = unknown.group(1) or unknown.group(2)
            choices = [o for o in keep if o.split("=", 1)[0] in groups()]  # the groups picked, for their keys
            picked = compose_config(choices)[0]
            if key.startswith("model.") and picked.model.get("_target_") == "nir.fields.Auto":
                raise NirError(
                    f"{key} needs a chosen network: model=auto (data=array's default) picks one when the run "
                    "starts; choose it with model=NAME (e.g. model=hashgrid_lt3d) to set its keys"
                ) from None
            raise NirError(unknown_key_message(key, picked)) from None
        lines = [l.strip() for l in str(e).splitlines() if l.strip()]
        msg = " ".join(l for l in lines[:3] if not l.startswith("full_key") and not l.startswith("object_type"))
        raise NirError(f"config: {msg}") from None
    check_config(cfg)  # keys added with +key=value, value ranges: one line now, not in every job


def precheck(argv: list[str]) -> None:
    """Every check above, on ``nir-train``'s argv (one-line :class:`NirError` on failure)."""
    overrides = overrides_of(argv)
    check_groups(overrides)
    check_output_dir(argv, overrides)
    check_compose(overrides)
