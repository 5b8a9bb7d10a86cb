"""nir: neural implicit representations (neural fields) for images and long-tailed fields."""

from nir.errors import NirError
from nir.field import Field, load_field
from nir.metrics import score
from nir.readers import read_array, read_image
from nir.signal import Grid, Signal


def fit(*args, **kwargs):
    """Train a field from Python; see :func:`nir.run.fit`."""
    from nir.run import fit as _fit

    return _fit(*args, **kwargs)


fit.__doc__ = "Train a field from Python with nir-train's configs; see nir.run.fit."

__all__ = ["Field", "Grid", "NirError", "Signal", "fit", "load_field", "read_array", "read_image", "score"]
__version__ = "0.1.0"
