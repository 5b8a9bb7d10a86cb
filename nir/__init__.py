"""nir: neural implicit representations (neural fields) for images and long-tailed fields.

The public names load on first use (PEP 562), so ``import nir.run.config`` or ``nir-train --help``
costs what those need, not torch and torchmetrics (about 5 s per process on a 2-core machine).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nir.errors import NirError

if TYPE_CHECKING:
    from nir.data.readers import read_array, read_image
    from nir.data.signal import Grid, Signal
    from nir.reuse.field import Field, load_field
    from nir.training.metrics import score

#: public name -> the module that defines it
_LAZY = {
    "Field": "nir.reuse.field",
    "load_field": "nir.reuse.field",
    "score": "nir.training.metrics",
    "read_array": "nir.data.readers",
    "read_image": "nir.data.readers",
    "Grid": "nir.data.signal",
    "Signal": "nir.data.signal",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'nir' has no attribute {name!r}")


def fit(*args, **kwargs):
    """Train a field from Python with nir-train's configs; see :func:`nir.run.run.fit`."""
    from nir.run import fit as _fit

    return _fit(*args, **kwargs)


__all__ = ["Field", "Grid", "NirError", "Signal", "fit", "load_field", "read_array", "read_image", "score"]
__version__ = "0.1.0"
