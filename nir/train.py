"""``nir-train``: the Hydra entry point. Thin: it checks argv, sets up the process, and hands the
composed config to :func:`nir.run.train`; its exit status is 2 for bad input and, after a
multirun, the number of failed or diverged jobs."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from nir.config import CONF_DIR
from nir.errors import NirError, cli_errors


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
    from nir.cli import help_text, precheck

    if any(a in ("-h", "--help") for a in sys.argv[1:]):
        print(help_text())
        return
    with cli_errors():
        precheck(sys.argv[1:])
    tune_allocator()  # this process only: library calls never change the allocator
    from nir import sweep

    _hydra_app()()
    if sweep.LAST_FAILED:
        raise SystemExit(min(sweep.LAST_FAILED, 125))  # the exit status is the number of failed jobs


if __name__ == "__main__":
    main()
