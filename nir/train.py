"""``nir-train``: the Hydra entry point. Thin: it checks argv, sets up the process, and hands the
composed config to :func:`nir.run.train`; its exit status is 2 for bad input and, after a
multirun, the number of failed or diverged jobs."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from nir.config import CONF_DIR, compose_config, groups
from nir.errors import NirError, cli_errors, require


def _overrides(argv: list[str]) -> list[str]:
    """The override arguments of ``argv``, parsed by Hydra's own argument parser (so flags
    with values, ``--cfg job`` or ``-p KEY``, are never taken for overrides)."""
    from hydra._internal.utils import get_args_parser

    args, _ = get_args_parser().parse_known_args(argv)
    return list(args.overrides or [])


def _precheck_groups(overrides: list[str]) -> None:
    """One-line error for ``group=option`` naming an option that does not exist."""
    options = groups()
    for arg in overrides:
        if "=" not in arg or arg.startswith(("+", "~", "hydra")):
            continue
        key, value = arg.split("=", 1)
        if key in options and all(c.isalnum() or c in "_-," for c in value):
            for option in value.split(","):
                require(option in options[key], f"unknown {key} {option!r}; choose one of: {', '.join(options[key])}")


def _precheck_output_dir(overrides: list[str]) -> None:
    """One line for an output directory that cannot be created (before Hydra tries)."""
    for arg in overrides:
        if arg.startswith(("hydra.run.dir=", "hydra.sweep.dir=")):
            key, value = arg.split("=", 1)
            p = Path(value).expanduser().absolute()
            while not p.exists():
                p = p.parent
            require(
                p.is_dir() and os.access(p, os.W_OK),
                f"{key} {value!r} cannot be created: {str(p)!r} is not a writable directory; choose another {key}",
            )


def _precheck_compose(overrides: list[str]) -> None:
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
        compose_config(keep)
    except (HydraException, OmegaConfBaseException) as e:
        lines = [l.strip() for l in str(e).splitlines() if l.strip()]
        msg = " ".join(l for l in lines[:3] if not l.startswith("full_key") and not l.startswith("object_type"))
        raise NirError(f"config: {msg}") from None


def _objective(metrics: dict[str, Any], cfg: DictConfig) -> float:
    """The value a sweeper optimises: ``metrics[cfg.objective]`` (NaN if absent)."""
    v = metrics.get(str(cfg.objective))
    return float(v) if isinstance(v, (int, float)) else float("nan")


def _record_failed_job(run_dir: Path, job: int, e: Exception) -> None:
    """In a sweep a failed job writes status ``failed`` (unless it diverged) and the sweep goes on."""
    from nir.run import write_json

    msg = str(e).replace("\n", " ") if isinstance(e, NirError) else f"{type(e).__name__}: {e}".replace("\n", " ")
    mfile = run_dir / "metrics.json"
    if not (mfile.is_file() and json.loads(mfile.read_text()).get("status") == "diverged"):
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(mfile, {"status": "failed", "error": msg[:2000]})
    print(f"error: job {job} failed: {msg[:500]}", file=sys.stderr, flush=True)


def _hydra_app() -> Any:
    import hydra

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
    def app(cfg: DictConfig) -> float:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        from nir.run import train

        if HydraConfig.get().mode != RunMode.MULTIRUN:
            with cli_errors():
                return _objective(train(cfg), cfg)
        try:
            return _objective(train(cfg), cfg)
        except Exception as e:
            _record_failed_job(Path(HydraConfig.get().runtime.output_dir), HydraConfig.get().job.num, e)
            return float("nan")

    return app


def main() -> None:
    """Console script ``nir-train``."""
    from nir.allocator import tune_allocator

    with cli_errors():
        overrides = _overrides(sys.argv[1:])
        _precheck_groups(overrides)
        _precheck_output_dir(overrides)
        _precheck_compose(overrides)
    tune_allocator()  # this process only: library calls never change the allocator
    from nir import sweep

    _hydra_app()()
    if sweep.LAST_FAILED:
        raise SystemExit(min(sweep.LAST_FAILED, 125))  # the exit status is the number of failed jobs


if __name__ == "__main__":
    main()
