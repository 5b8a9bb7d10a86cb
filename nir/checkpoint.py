"""Crash-safe file writes and safe checkpoint loading (no Lightning needed: the reuse API uses them)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from nir.errors import NirError


def atomic_write_bytes(path: Path, write: Any) -> None:
    """Write through ``write(file)`` into ``path.tmp``, fsync, then rename over ``path``.

    A process killed at any instant leaves either the old complete file or the new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_checkpoint(path: Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``: plain containers and tensors only; anything
    else (a pickled object, code) is refused before it runs."""
    try:
        return torch.load(str(path), map_location=map_location or "cpu", weights_only=True)
    except FileNotFoundError:
        raise NirError(f"checkpoint {str(path)!r} does not exist") from None
    except Exception as e:  # UnpicklingError, truncated files, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise NirError(
            f"checkpoint {str(path)!r} refused: not a complete plain-data checkpoint ({first[:160]})"
        ) from None
