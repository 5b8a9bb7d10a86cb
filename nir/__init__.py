"""nir: neural implicit representations (neural fields) for images and long-tailed fields.

The public names load on first use (PEP 562), so ``import nir.config`` or ``nir-train --help``
costs what those need, not torch and torchmetrics (about 5 s per process on a 2-core machine).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nir.errors import NirError

if TYPE_CHECKING:
    from nir.field import Field, load_field
    from nir.metrics import score
    from nir.readers import read_array, read_image
    from nir.signal import Grid, Signal

#: public name -> the module that defines it
_LAZY = {
    "Field": "nir.field",
    "load_field": "nir.field",
    "score": "nir.metrics",
    "read_array": "nir.readers",
    "read_image": "nir.readers",
    "Grid": "nir.signal",
    "Signal": "nir.signal",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'nir' has no attribute {name!r}")


def fit(*args, **kwargs):
    """Train a field from Python; see :func:`nir.run.fit`."""
    import warnings

    with warnings.catch_warnings():  # the filters as found, those of the libraries' first imports included
        from nir.run import fit as _fit

        return _fit(*args, **kwargs)


fit.__doc__ = "Train a field from Python with nir-train's configs; see nir.run.fit."

__all__ = ["Field", "Grid", "NirError", "Signal", "fit", "load_field", "read_array", "read_image", "score"]
__version__ = "0.1.0"
