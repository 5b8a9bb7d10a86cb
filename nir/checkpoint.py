"""Crash-safe file writes and safe checkpoint loading (no Lightning needed: the reuse API uses them)."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any

from nir.errors import NirError

#: the version of the files nir writes (field files' ``nir_format`` metadata, checkpoints'
#: ``nir_format`` key); a reader refuses a higher one in one line
FORMAT = 1


def atomic_write_bytes(path: Path, write: Any) -> None:
    """Write through ``write(file)`` into ``path.tmp``, fsync, then rename over ``path``.

    A process killed at any instant leaves either the old complete file or the new one.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise WriteError(path, e) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


class WriteError(NirError):
    """A file could not be written (no space left, an I/O error, no permission): one line with
    the file, the reason and the free space where it was going. The earlier file is intact."""

    exit_status = 74  # sysexits.h EX_IOERR

    def __init__(self, path: Path, error: OSError) -> None:
        self.path = Path(path)
        reason = error.strerror or type(error).__name__
        super().__init__(
            f"could not write {str(path)!r}: {reason} ({free_space(path)} free there); "
            "the earlier file, if any, is unchanged: free some space or choose another output directory"
        )


def free_space(path: Path) -> str:
    """Free space on the filesystem that holds ``path`` (its nearest existing parent), for messages."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        free = shutil.disk_usage(p).free
    except OSError:
        return "unknown"
    if free < 1024:
        return f"{free} bytes"
    for unit in ("KB", "MB", "GB"):
        free /= 1024
        if free < 1024 or unit == "GB":
            break
    return f"{free:.1f} {unit}"


def atomic_write_text(path: Path, text: str) -> None:
    """:func:`atomic_write_bytes` of ``text`` (UTF-8)."""
    data = text.encode()
    atomic_write_bytes(path, lambda f: f.write(data))


def check_format(found: Any, what: str) -> None:
    """Refuse a file written by a newer nir (its ``nir_format`` above :data:`FORMAT`); files
    without the key are format 1 (written before it existed)."""
    try:
        version = int(found if found is not None else 1)
    except (TypeError, ValueError):
        raise NirError(f"{what} has an unreadable format version {found!r}; it is corrupt or not nir's") from None
    if version > FORMAT:
        raise NirError(
            f"{what} was written by a newer nir (file format {version}, this nir reads up to {FORMAT}); upgrade nir"
        )


def load_checkpoint(path: Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``: plain containers and tensors only; anything
    else (a pickled object, code) is refused before it runs."""
    import torch  # here, not at the top: an atomic write (a decoded grid) needs no torch

    try:
        ckpt = torch.load(str(path), map_location=map_location or "cpu", weights_only=True)
    except FileNotFoundError:
        raise NirError(f"checkpoint {str(path)!r} does not exist") from None
    except Exception as e:  # UnpicklingError, truncated files, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise NirError(
            f"checkpoint {str(path)!r} refused: not a complete plain-data checkpoint ({first[:160]})"
        ) from None
    if not isinstance(ckpt, dict):
        raise NirError(f"checkpoint {str(path)!r} refused: it holds a {type(ckpt).__name__}, not a checkpoint")
    check_format(ckpt.get("nir_format"), f"checkpoint {str(path)!r}")
    return ckpt
