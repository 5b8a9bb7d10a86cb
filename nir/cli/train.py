"""``nir-train``: the Hydra entry point. Thin: it checks argv, sets up the process, and hands the
composed config to :func:`nir.run.run.train`. Exit statuses (:mod:`nir.training.faults`): 2 bad input or a
corrupt file, 74 a failed write, 128 + N interrupted by signal N, and after a multirun the
number of failed or diverged jobs."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from nir.errors import NirError, cli_errors
from nir.run.config import CONF_DIR


def _objective(metrics: dict[str, Any], cfg: DictConfig) -> float:
    """The value a sweeper optimises: ``metrics[cfg.objective]`` (NaN if absent)."""
    v = metrics.get(str(cfg.objective))
    return float(v) if isinstance(v, (int, float)) else float("nan")


def _record_failed_job(run_dir: Path, cfg: DictConfig, hc: Any, e: Exception) -> None:
    """In a sweep a failed job writes status ``failed`` (unless it recorded ``diverged`` or
    ``interrupted`` itself), and its ``.hydra`` record if it failed before writing one, so
    ``nir-summarize`` lists it; the sweep goes on."""
    from nir.run.records import read_json, write_hydra_record, write_json

    msg = str(e).replace("\n", " ") if isinstance(e, NirError) else f"{type(e).__name__}: {e}".replace("\n", " ")
    mfile = run_dir / "metrics.json"
    try:
        status = read_json(mfile, "metrics file").get("status") if mfile.is_file() else None
    except NirError:  # a corrupt record is replaced by this one
        status = None
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / ".hydra" / "overrides.yaml").is_file():
        write_hydra_record(run_dir, cfg, list(hc.overrides.task), hc)
    if status not in ("diverged", "interrupted"):
        write_json(mfile, {"status": "failed", "error": msg[:2000]})
    print(f"error: job {hc.job.num} {status or 'failed'}: {msg[:500]}", file=sys.stderr, flush=True)


def _hydra_app() -> Any:
    import hydra

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
    def app(cfg: DictConfig) -> float:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        from nir.run.run import train
        from nir.training.faults import Interrupted

        hc = HydraConfig.get()
        if hc.mode != RunMode.MULTIRUN:
            with cli_errors():
                return _objective(train(cfg), cfg)
        try:
            return _objective(train(cfg), cfg)
        except Exception as e:
            with cli_errors():
                _record_failed_job(Path(hc.runtime.output_dir), cfg, hc, e)
                if isinstance(e, Interrupted):  # the signal was for the whole process: the sweep stops here
                    raise
            return float("nan")

    return app


def main() -> None:
    """Console script ``nir-train``."""
    from nir.allocator import tune_allocator
    from nir.cli.precheck import help_text, output_dir, precheck

    if any(a in ("-h", "--help") for a in sys.argv[1:]):
        print(help_text())
        return
    with cli_errors():
        precheck(sys.argv[1:])
    tune_allocator()  # this process only: library calls never change the allocator
    import logging
    import os

    from nir.checkpoint import WriteError
    from nir.run import sweep

    # Hydra's job log is a copy of the console: lines it cannot write (a full disk) are dropped
    # quietly instead of a "Logging error" traceback each
    logging.raiseExceptions = False
    # errors from Hydra's own steps (its sweep records, a callback) reach us instead of being
    # printed by Hydra as a traceback, so a failed write is one line here too
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    with cli_errors():
        try:
            _hydra_app()()
        except OSError as e:  # Hydra's own writes (multirun.yaml, its job log) do not name their file
            raise WriteError(
                Path(e.filename) if e.filename else output_dir(sys.argv[1:])[2] / "(a file Hydra writes)", e
            ) from None
    if sweep.LAST_FAILED:
        raise SystemExit(min(sweep.LAST_FAILED, 125))  # the exit status is the number of failed jobs


if __name__ == "__main__":
    main()
