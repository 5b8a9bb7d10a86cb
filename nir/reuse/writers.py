"""A field's grid written into other formats, and the field exported as a program: one writer per
kind of output, as one reader per kind of input (:mod:`nir.data.readers`).

- :func:`check_output`: the suffixes :meth:`Field.sample <nir.reuse.field.Field.sample>` writes,
  checked before anything is evaluated (``.npy`` is written by ``sample`` itself, through a
  memory map);
- :func:`write_grid`: ``.png`` / ``.tif`` / ``.tiff`` (2-D, 1 or 3 channels) and ``.nc`` / ``.h5``
  / ``.zarr`` (an xarray variable with the source's dimensions, coordinates and attributes);
- :func:`export`: ``.pt2`` (``torch.export``) or ``.onnx``, with a dynamic batch dimension.

A new output format is one writer here and its suffix in :data:`IMAGE_SUFFIXES` or the readers'
dataset suffixes. Nothing here knows the :class:`~nir.reuse.field.Field` class: a writer gets
plain values (the grid, the field's spec) or, for export, any module with ``network``,
``transform`` and ``bounds``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from nir.data.readers.suffixes import DATASET_EXTENSIONS
from nir.errors import NirError, require

#: the image files a 2-D field's grid is written to
IMAGE_SUFFIXES = (".png", ".tif", ".tiff")


def check_output(out: str | Path | None) -> str | None:
    """The output's suffix (lower case; ``None`` for no output), after one line for a file type
    nir does not write; a dataset output also checks now that xarray is installed."""
    suffix = Path(out).suffix.lower() if out is not None else None
    require(
        suffix in (None, ".npy", *IMAGE_SUFFIXES, *DATASET_EXTENSIONS),
        f"cannot write {str(out)!r}: use .npy, .png, .tif, .tiff, .nc, .h5, .hdf5 or .zarr",
    )
    if suffix in DATASET_EXTENSIONS:
        from nir.data.readers.datasets import xarray

        xarray()  # one line now if xarray is missing, not after sampling
    return suffix


def write_grid(values: Tensor, out: Path, spec: dict[str, Any], bounds: Any, positions: Any) -> None:
    """Write a sampled grid ``(*shape, channels)`` to an image or dataset file (``out``'s suffix)."""
    if out.suffix.lower() in DATASET_EXTENSIONS:
        from nir.data.readers.datasets import as_dataarray, write

        write(as_dataarray(spec, values.numpy(), bounds, positions), out)
    else:
        write_image(values, out, spec)


def write_image(values: Tensor, path: Path, spec: dict[str, Any]) -> None:
    """A 2-D grid of 1 or 3 channels as PNG (the training value range, 16-bit gray or 8-bit RGB)
    or TIFF (float32 in signal units)."""
    import imageio.v3 as iio
    import numpy as np

    channels = values.shape[-1]
    require(values.dim() == 3 and channels in (1, 3), f"{path.suffix} output needs a 2-D field with 1 or 3 channels")
    v = values.numpy()
    if path.suffix.lower() == ".png":
        lo, hi = spec.get("meta", {}).get("value_range", (float(v.min()), float(v.max())))
        u = np.clip((v - lo) / max(hi - lo, 1e-30), 0, 1)
        if channels == 1:
            iio.imwrite(path, (u[..., 0] * 65535).round().astype(np.uint16), extension=".png")
        else:  # Pillow writes no 16-bit RGB PNG
            iio.imwrite(path, (u * 255).round().astype(np.uint8), extension=".png")
    else:
        iio.imwrite(path, v[..., 0] if channels == 1 else v, extension=".tif")


class _Exportable(nn.Module):
    """The field's forward without input checks, as a plain graph for export."""

    def __init__(self, field: nn.Module) -> None:
        super().__init__()
        self.field = field

    def forward(self, coords: Tensor) -> Tensor:
        return self.field.transform.inverse(self.field.network(coords))


def export(field: nn.Module, in_dim: int, path: str | Path, batch: int = 1024) -> Path:
    """Export ``field`` (coordinates in, signal units out) with a dynamic batch dimension:
    ``.pt2`` through ``torch.export`` or ``.onnx`` (needs the ``onnx`` extra)."""
    path = Path(path)
    suffix = path.suffix.lower()
    require(suffix in (".pt2", ".onnx"), f"cannot export to {str(path)!r}: use .pt2 or .onnx")
    module = _Exportable(field).eval()
    example = (torch.zeros(batch, in_dim, device=field.bounds.device),)
    dynamic = {"coords": {0: torch.export.Dim("batch", min=1)}}
    if suffix == ".pt2":
        torch.export.save(torch.export.export(module, example, dynamic_shapes=dynamic), str(path))
        return path
    try:
        import onnxscript  # noqa: F401  (the exporter needs it; fail with one line)
    except ImportError:
        raise NirError("ONNX export needs the onnx extra: pip install 'nir[onnx]'") from None
    program = torch.onnx.export(module, example, dynamo=True, dynamic_shapes=dynamic, input_names=["coords"],
                                output_names=["values"], verbose=False)  # fmt: skip
    program.save(str(path))
    return path
