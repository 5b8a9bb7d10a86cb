"""Sweeps: a per-job results table (``nir-summarize``) and the multirun report that sets the exit status.

A sweep directory holds one run directory per job (Hydra's ``hydra.sweep.dir``), each with
``.hydra/overrides.yaml`` and ``metrics.json`` (status ``ok``, ``diverged``, ``interrupted`` or
``failed``). A corrupt or foreign record is one line naming it.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import yaml

from nir.errors import require

#: failed jobs of the last multirun in this process (read by ``nir-train`` for its exit status)
LAST_FAILED = 0
LOWER_IS_BETTER = {
    "worst_decade_median",
    "heldout_worst_decade_median",
    "wall_time_s",
    "fit_time_s",
    "num_params",
    "bytes",
    "bits_per_sample",
    "bits_per_parameter",
}
COLUMNS = [
    "job",
    "overrides",
    "status",
    "psnr",
    "psnr_heldout",
    "ssim",
    "psnr_log",
    "worst_decade_median",
    "heldout_worst_decade_median",
    "wall_time_s",
    "num_params",
    "bytes",
    "bits_per_sample",
    "bits_per_parameter",
    "compression_ratio",
    "error",
]


def collect(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One row per job directory below ``sweep_dir`` that Hydra created (``.hydra/overrides.yaml``)."""
    sweep_dir = Path(sweep_dir)
    rows = []
    from nir.run.records import read_json

    for ov in sorted(sweep_dir.glob("**/.hydra/overrides.yaml")):
        job = ov.parent.parent
        try:
            overrides = yaml.safe_load(ov.read_text()) or []
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            overrides = None
        require(
            isinstance(overrides, list),
            f"sweep record {str(ov)!r} is corrupt (not a YAML list of overrides); remove the job directory or re-run it",
        )
        mfile = job / "metrics.json"
        m = (
            read_json(mfile, "metrics file")
            if mfile.is_file()
            else {"status": "failed", "error": "no metrics.json (killed?)"}
        )
        row = {"job": str(job.relative_to(sweep_dir)), "overrides": overrides, **m}
        rows.append(row)
    # show only what differs between jobs (overrides shared by every job are the sweep's setting)
    common = set.intersection(*(set(r["overrides"]) for r in rows)) if len(rows) > 1 else set()
    for r in rows:
        r["overrides"] = " ".join(o for o in r["overrides"] if o not in common)
    return rows


def sort_rows(rows: list[dict[str, Any]], by: str = "psnr") -> list[dict[str, Any]]:
    """Best first by ``by`` (higher is better unless the metric is an error or a cost); jobs
    without a finite value last."""
    sign = 1 if by in LOWER_IS_BETTER else -1

    def key(r: dict[str, Any]) -> tuple[int, float]:
        v = r.get(by)
        ok = isinstance(v, (int, float)) and math.isfinite(v)
        return (0, sign * v) if ok else (1, 0.0)

    return sorted(rows, key=key)


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v).replace("|", "\\|")


def write_summary(sweep_dir: str | Path, by: str = "psnr") -> tuple[list[dict[str, Any]], str]:
    """Write ``summary.csv`` and ``summary.md`` into the sweep directory; return rows and the table."""
    from nir.checkpoint import atomic_write_text

    sweep_dir = Path(sweep_dir)
    rows = sort_rows(collect(sweep_dir), by)
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k) for k in COLUMNS})
    atomic_write_text(sweep_dir / "summary.csv", buf.getvalue())
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(r.get(k)) for k in COLUMNS) + " |" for r in rows]
    table = "\n".join(lines) + "\n"
    note = "Relative errors (worst_decade_median) are fractions: 0.05 = 5 %. PSNR in dB, times in seconds.\n"
    atomic_write_text(sweep_dir / "summary.md", f"# Sweep summary: {sweep_dir}\n\nSorted by {by}. {note}\n" + table)
    return rows, table


def counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        out[r.get("status", "failed")] = out.get(r.get("status", "failed"), 0) + 1
    return out


try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover
    _HydraCallback = object


SWEPT_FILE = ".nir-swept.json"


def swept_keys(task_overrides: list[str], sweeper_params: Any = None) -> list[str]:
    """The keys a sweep varies: command-line sweep overrides (``a=1,2``, ``interval(...)``,
    ``range(...)``) and the sweeper's configured search space (``hydra.sweeper.params``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(task_overrides))
    sweeps = [o.get_key_element().lstrip("+~") for o in parsed if o.is_sweep_override()]
    for k in list(sweeper_params or {}):
        if str(k) not in sweeps:
            sweeps.append(str(k))
    return sweeps


def read_swept(sweep_dir: str | Path) -> list[str]:
    """The swept keys :class:`SweepReport` wrote for this sweep ([] outside a sweep)."""
    f = Path(sweep_dir) / SWEPT_FILE
    if not f.is_file():
        return []
    try:
        keys = json.loads(f.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        keys = None
    require(
        isinstance(keys, list) and all(isinstance(k, str) for k in keys),
        f"sweep record {str(f)!r} is corrupt (not a JSON list of keys); remove it and start the sweep again",
    )
    return keys


class SweepReport(_HydraCallback):
    """Hydra callback: before a multirun, record which keys it sweeps (every job reads them, in
    any launcher, to name its TensorBoard run and order its HPARAMS columns); after it, write
    the summary and remember how many jobs failed."""

    def __init__(self, sort_by: str = "psnr") -> None:
        self.sort_by = sort_by

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        keys = swept_keys(list(config.hydra.overrides.task), config.hydra.sweeper.get("params"))
        from nir.checkpoint import atomic_write_text

        atomic_write_text(sweep_dir / SWEPT_FILE, json.dumps(keys))

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        global LAST_FAILED
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        rows, _ = write_summary(sweep_dir, self.sort_by)
        c = counts(rows)
        LAST_FAILED = c.get("failed", 0) + c.get("diverged", 0)
        parts = ", ".join(f"{n} {s}" for s, n in sorted(c.items()))
        print(f"sweep: {len(rows)} jobs ({parts}); table: {sweep_dir / 'summary.md'}", flush=True)
