"""The suffixes each reader reads and the checks every reader makes of a path."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from nir.errors import require

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
ARRAY_EXTENSIONS = (".npy", ".npz")
DATASET_EXTENSIONS = (".nc", ".nc4", ".h5", ".hdf5", ".zarr")  # through xarray (nir.data.readers.datasets)


def reads(*suffixes: str) -> Callable:
    """Mark a reader function ``read(path, **options) -> Signal`` with the file suffixes it
    reads; :func:`nir.run.config.readers` builds the suffix table from the data options' readers."""

    def mark(fn: Callable) -> Callable:
        fn.suffixes = tuple(s.lower() for s in suffixes)
        return fn

    return mark


def check_file(path: str | os.PathLike, what: str, extensions: Sequence[str]) -> Path:
    p = Path(path).expanduser()
    require(p.exists(), f"data.path {str(p)!r} does not exist; pass an existing {what} file")
    require(p.is_file(), f"data.path {str(p)!r} is a directory; pass the {what} file inside it")
    require(
        p.suffix.lower() in extensions,
        f"data.path {str(p)!r} has unsupported extension {p.suffix!r}; use one of {', '.join(extensions)}",
    )
    return p
