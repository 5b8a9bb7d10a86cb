"""What a run writes besides its field: strict JSON (``metrics.json``, a sweep's record) written
atomically and read back with one line for a file that is not nir's, and the ``.hydra/`` record of
a job. Nothing here imports Lightning or Hydra."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from nir.errors import NirError, require


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float (an empty bin's NaN, an infinite PSNR) as ``None``, so
    it is strict JSON (``null``), and tensors / numpy scalars as plain numbers."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # torch / numpy scalar
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: Path, obj: Any) -> None:
    """Strict JSON (``allow_nan=False``: non-finite numbers are written as ``null``), atomically."""
    from nir.checkpoint import atomic_write_text

    atomic_write_text(path, json.dumps(json_safe(obj), indent=2, allow_nan=False) + "\n")


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object nir wrote (``metrics.json``, a sweep record); a file that is not one
    (truncated, corrupt, foreign) is one line naming it."""
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise NirError(
            f"{what} {str(path)!r} cannot be read ({type(e).__name__}); it is corrupt or truncated: remove it or re-run"
        ) from None
    require(isinstance(obj, dict), f"{what} {str(path)!r} is not a JSON object; it was not written by nir")
    return obj


def write_hydra_record(run_dir: Path, cfg: DictConfig, overrides: Sequence[str], hydra_cfg: Any = None) -> None:
    """``.hydra/config.yaml``, ``overrides.yaml`` (and ``hydra.yaml`` under Hydra): the record
    Hydra keeps of a job, written by nir (``hydra.output_subdir: null``) once the run holds its
    directory's lock, atomically, so a refused second run or a full disk leaves the first intact."""
    from nir.checkpoint import atomic_write_text

    record = run_dir / ".hydra"
    atomic_write_text(record / "config.yaml", OmegaConf.to_yaml(cfg))
    atomic_write_text(record / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(list(overrides))))
    if hydra_cfg is not None:
        atomic_write_text(record / "hydra.yaml", OmegaConf.to_yaml(OmegaConf.create({"hydra": hydra_cfg})))
