"""The readers: a file (or a bundled sample) to a :class:`~nir.data.signal.Signal`, one module per
kind of file, side by side: :mod:`nir.data.readers.images` (PNG, JPEG, BMP, 8/16-bit TIFF),
:mod:`nir.data.readers.arrays` (``.npy``, ``.npz``, and the dataset suffixes it hands on) and
:mod:`nir.data.readers.datasets` (NetCDF, HDF5, Zarr through xarray). Each reader function is marked
with the suffixes it reads (:func:`~nir.data.readers.suffixes.reads`); :func:`nir.run.config.readers`
builds the suffix table from the data options' readers. The signal knows no reader; the readers
know the signal.
"""

from nir.data.readers.arrays import read_array
from nir.data.readers.images import read_image, sample_image_path
from nir.data.readers.suffixes import ARRAY_EXTENSIONS, DATASET_EXTENSIONS, IMAGE_EXTENSIONS, reads

__all__ = ["ARRAY_EXTENSIONS", "DATASET_EXTENSIONS", "IMAGE_EXTENSIONS", "read_array", "read_image", "reads",
           "sample_image_path"]  # fmt: skip
