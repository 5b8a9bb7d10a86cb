"""nir: neural implicit representations (neural fields) for images and long-tailed fields."""

from nir.errors import NirError
from nir.field import Field, load_field
from nir.signal import Grid, Signal, read_image

__all__ = ["Field", "Grid", "NirError", "Signal", "load_field", "read_image"]
__version__ = "0.1.0"
