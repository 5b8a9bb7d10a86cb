"""Field: a trained network plus everything it needs to answer in the signal's own units."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from nir.components import build_component
from nir.data.signal import Grid, positions_of
from nir.errors import NirError, require
from nir.reuse import stored, writers


class Field(nn.Module):
    """Network + value transform + box: coordinates in, values in signal units out.

    Everything inference needs is a parameter or a buffer, plus ``spec`` (plain values naming the
    classes and their constructor arguments), so a field is rebuilt from weights and spec alone.

    Args:
        network: maps ``(N, d)`` coordinates to ``(N, channels)`` in transformed units.
        transform: value transform with ``inverse`` (see :mod:`nir.transforms`).
        spec: plain-value description: ``network``/``transform`` component specs, ``bounds``,
            ``shape`` (training grid), ``channels`` and ``meta``.
    """

    def __init__(self, network: nn.Module, transform: nn.Module, spec: dict[str, Any]) -> None:
        super().__init__()
        self.network = network
        self.transform = transform
        self.spec = spec
        self.register_buffer("bounds", torch.tensor(spec["bounds"], dtype=torch.float32))
        #: the coded residual of an error-bounded field (``bound.rel`` / ``bound.abs``; nir.codec.bound):
        #: :meth:`sample` on the training grid applies it, so every sample meets the bound
        self.residual: bytes | None = None

    @property
    def in_dim(self) -> int:
        return len(self.spec["bounds"])

    @property
    def channels(self) -> int:
        return int(self.spec["channels"])

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.network.parameters())

    def forward(self, coords: Tensor | Any) -> Tensor:
        """Values at coordinates.

        Args:
            coords: ``Float[Tensor, "N d"]`` in the box's units (``spec["bounds"]``); a numpy
                array or a float64 tensor is converted to float32 on the field's device.

        Returns:
            ``Float[Tensor, "N channels"]`` in signal units. Autograd records the call only when
            ``coords`` requires grad or the field is in training mode (``field.train()``, for
            fine-tuning); otherwise the answer is a plain tensor (``.numpy()`` works).
        """
        if not torch.is_tensor(coords) and hasattr(coords, "__array__"):
            import numpy as np

            coords = torch.from_numpy(np.asarray(coords, dtype=np.float32))
        require(
            torch.is_tensor(coords) and coords.is_floating_point(),
            "field coordinates must be a floating-point tensor or numpy array of shape (N, d)",
        )
        require(
            coords.shape[-1] == self.in_dim,
            f"field expects coordinates with {self.in_dim} columns, got shape {tuple(coords.shape)}",
        )
        if coords.dtype == torch.float64 or coords.device != self.bounds.device:
            coords = coords.to(self.bounds.device, torch.float32)
        with torch.set_grad_enabled(torch.is_grad_enabled() and (coords.requires_grad or self.training)):
            return self.transform.inverse(self.network(coords))

    def gradient(self, coords: Tensor) -> Tensor:
        """Spatial derivatives d value / d coordinate through autograd.

        Args:
            coords: ``Float[Tensor, "N d"]``.

        Returns:
            ``Float[Tensor, "N channels d"]``, in signal units per coordinate unit.
        """
        x = coords.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            y = self(x)
            rows = [
                torch.autograd.grad(y[:, c].sum(), x, retain_graph=c + 1 < y.shape[1])[0] for c in range(y.shape[1])
            ]
        return torch.stack(rows, dim=1)

    @torch.no_grad()
    def sample(
        self,
        shape: Sequence[int] | None = None,
        bounds: Sequence[Sequence[float]] | None = None,
        chunk: int = 65536,
        out: str | Path | None = None,
        positions: Sequence[Any] | None = None,
    ) -> Tensor:
        """Evaluate on a grid -> ``Float[Tensor, "*shape channels"]`` on CPU.

        Defaults: the training grid (its shape, box and, for a file with non-uniform
        coordinates, the file's sample positions). Given ``shape`` / ``bounds``, a regular grid
        of cell centres (``bounds`` may be any sub- or super-box); ``positions`` places the
        samples of chosen axes (per axis an ascending sequence, or ``None`` for cell centres).
        An error-bounded field (one with a residual, docs/bounded.md) meets its bound on the
        training grid (the default shape and box) only; elsewhere it answers with the network.
        Evaluated in chunks of ``chunk`` points, so memory beyond the output array is bounded
        (a few ``chunk x hidden_dim`` activations) whatever the resolution. With ``out`` the
        result is also written: ``.npy`` (any dimension; written through a memory map) or
        ``.png`` / ``.tif`` / ``.tiff`` (2-D fields, 1 or 3 channels; PNG spans the training
        value range, 16-bit for gray and 8-bit for RGB; TIFF is float32 in signal units).
        """
        if shape is None and bounds is None and positions is None:
            positions = self.training_positions()
        shape = tuple(int(v) for v in (self.spec["shape"] if shape is None else shape))
        bounds = self.spec["bounds"] if bounds is None else [list(map(float, b)) for b in bounds]
        suffix = self._check_sample(shape, out)
        grid = Grid(shape, bounds, positions).to(self.bounds.device)
        n = math.prod(shape)
        if suffix == ".npy":
            import numpy as np

            arr = np.lib.format.open_memmap(str(out), mode="w+", dtype=np.float32, shape=(*shape, self.channels))
            result = torch.from_numpy(arr.reshape(n, self.channels))
        else:
            result = torch.empty(n, self.channels, dtype=torch.float32)
        for start, stop, coords in grid.chunks(chunk):
            result[start:stop] = self(coords).float().cpu()
        if self.residual is not None and self.on_training_grid(shape, bounds, positions):
            result.view(-1).copy_(torch.from_numpy(self.bounded_values(result.numpy()).astype("float32")))
        result = result.reshape(*shape, self.channels)
        if suffix == ".npy":
            arr.flush()
        elif suffix is not None:
            writers.write_grid(result, Path(out), self.spec, bounds, positions)
        return result

    def _check_sample(self, shape: tuple[int, ...], out: str | Path | None) -> str | None:
        """The output's suffix, after one line for a wrong shape or file type."""
        require(
            len(shape) == self.in_dim,
            f"sample shape {shape} must have {self.in_dim} axes for this {self.in_dim}-D field",
        )
        require(all(v >= 1 for v in shape), f"sample shape {shape} must be positive")
        return writers.check_output(out)

    def training_positions(self) -> tuple[Any, ...] | None:
        """Per axis the training samples' positions where the source's coordinate is not
        uniform (else ``None``); ``None`` for a field trained on a uniform grid."""
        return positions_of(self.spec.get("meta", {}))

    def on_training_grid(
        self, shape: Sequence[int], bounds: Sequence[Sequence[float]], positions: Sequence[Any] | None = None
    ) -> bool:
        def plain(p: Sequence[Any] | None) -> list:
            return [None if a is None else [float(v) for v in a] for a in (p or [None] * self.in_dim)]

        return (
            tuple(shape) == tuple(self.spec["shape"])
            and [list(map(float, b)) for b in bounds] == [list(map(float, b)) for b in self.spec["bounds"]]
            and plain(positions) == plain(self.training_positions())
        )

    def bounded_values(self, pred: Any = None) -> Any:
        """The error-bounded answer on the training grid as a flat numpy array in the source's
        dtype (``nir-decompress`` writes it): the network's answer (``pred``, computed when
        None) corrected by the residual."""
        from nir.codec import bound

        require(self.residual is not None, "this field has no residual: train it with bound.rel or bound.abs")
        if pred is None:
            pred = self._network_grid()
        n = math.prod(self.spec["shape"]) * self.channels
        return bound.apply(pred.reshape(-1), bound.decode(self.residual, n))

    def _network_grid(self) -> Any:
        residual, self.residual = self.residual, None
        try:
            return self.sample().numpy()
        finally:
            self.residual = residual

    @property
    def source_dtype(self) -> str:
        """The source's float dtype (``meta.dtype``: float16 / float32 / float64; float32 for
        anything else): what :meth:`grid_array` and a bounded answer are given in."""
        return stored.grid_layout(self.spec)[1]

    def grid_array(self) -> Any:
        """The field on its training grid as a numpy array in the source's shape (a trailing
        channel axis for several channels) and :attr:`source_dtype`, bounded where the field has
        a residual: what ``nir-decompress`` writes and the chunk codec decodes."""
        import numpy as np

        shape, dtype = stored.grid_layout(self.spec)
        values = self.bounded_values() if self.residual is not None else self.sample().numpy()
        return np.asarray(values).reshape(shape).astype(dtype)

    def grid_values(self, index: Any, chunk: int = 65536) -> Any:
        """The field at flat indices of its training grid (row-major over the axes, as
        :meth:`sample`'s rows): a numpy array ``(len(index), channels)``, at the training
        coordinates themselves, so a bounded field meets its bound there (in the source's
        dtype; float32 otherwise). What the xarray backend (:mod:`nir.interop.backend`) and the Zarr
        codec's partial decode read a selection with: only the asked samples are evaluated (a
        context-coded residual, since issue 37, is decoded whole; an older blocked one only in
        the stretches that hold them)."""
        import numpy as np

        from nir.codec import bound

        idx = torch.as_tensor(np.asarray(index, dtype=np.int64).reshape(-1))
        grid = Grid(self.spec["shape"], self.spec["bounds"], self.training_positions()).to(self.bounds.device)
        out = np.empty((idx.numel(), self.channels), np.float32)
        with torch.no_grad():
            for start in range(0, idx.numel(), chunk):
                coords = grid.coords(idx[start : start + chunk].to(self.bounds.device))
                out[start : start + chunk] = self(coords).float().cpu().numpy()
        if self.residual is None:
            return out
        flat = (idx.numpy()[:, None] * self.channels + np.arange(self.channels)).reshape(-1)
        residual = bound.decode(self.residual, math.prod(self.spec["shape"]) * self.channels, flat)
        return bound.apply(out.reshape(-1), residual, flat).reshape(out.shape)

    def to_xarray(self, **coords: Any) -> Any:
        """The field on a grid as an ``xarray.DataArray`` with the source's dimension names,
        coordinates and attributes (a field trained on a NetCDF / HDF5 / Zarr variable; any
        other field gets dimensions ``dim_0 ..`` and no coordinates).

        Args:
            coords: per dimension name, the grid to sample: nothing (the training grid), an
                integer (that many samples over the training box), or uniform coordinate values
                in the file's units (datetimes for a time axis), e.g.
                ``field.to_xarray(lat=np.arange(-89.5, 90, 1.0), time=12)``.

        The coordinates are the cell centres (nir's convention), so on the training grid they
        equal the source file's. Needs xarray (``pip install 'nir[sci]'``).
        """
        from nir.data.readers.datasets import as_dataarray, grid_of, xarray

        xarray()
        shape, box, positions = grid_of(self.spec, coords)
        return as_dataarray(self.spec, self.sample(shape, box, positions=positions).numpy(), box, positions)

    @property
    def is_image(self) -> bool:
        """Whether the field was trained on an image (its spec's ``is_image``, from the signal)."""
        return bool(self.spec.get("is_image", False)) and self.in_dim == 2

    def sample_image(self, shape: Sequence[int] | None = None, bounds: Sequence[Sequence[float]] | None = None) -> Any:
        """A field trained on an image, sampled and returned as that image: a numpy array of
        shape ``(H, W)`` (gray) or ``(H, W, 3)`` in the file's own range and type (``uint8`` for
        8-bit files, ``uint16`` for 16-bit ones, ``float32`` in [0, 1] for float images).
        :meth:`sample` gives the raw values (the training range, [-1, 1] by default)."""
        import numpy as np

        meta = self.spec.get("meta", {})
        require(self.is_image, "sample_image needs a field trained on an image; use sample() for other signals")
        lo, hi = meta["value_range"]
        u = np.clip((self.sample(shape, bounds).numpy() - lo) / max(hi - lo, 1e-30), 0, 1)
        u = u[..., 0] if u.shape[-1] == 1 else u
        bits = int(meta.get("bit_depth", 8))
        if bits in (8, 16):
            dtype = np.uint8 if bits == 8 else np.uint16
            return (u * np.iinfo(dtype).max).round().astype(dtype)
        return u.astype(np.float32)

    def export(self, path: str | Path, batch: int = 1024) -> Path:
        """Export the field (coordinates in, signal units out) with a dynamic batch dimension:
        ``.pt2`` through ``torch.export`` or ``.onnx`` (needs the ``onnx`` extra)."""
        return writers.export(self, self.in_dim, path, batch)

    def save(
        self,
        path: str | Path,
        dtype: str = "float32",
        int8_scale: str = "row",
        format: str | None = None,
        coder: str = "auto",
    ) -> Path:
        """Write a portable field file.

        ``format``: ``nir`` (the compact file, :mod:`nir.codec.container`: a few bytes of header, then
        the coded parameters) or ``safetensors`` (for interchange: safetensors weights, the spec
        as JSON in its header); by default from the suffix (``.nir`` compact, otherwise
        safetensors). ``dtype``: the parameters' stored precision, ``float32``, ``float16`` or
        ``int2`` .. ``int8`` (with one scale per weight row, or per tensor with
        ``int8_scale="tensor"``); buffers stay float32 (:mod:`nir.codec.storage`). ``coder``: how the
        compact file codes the integers (``auto``, ``raw``, ``ans``, ``zstd``). :func:`load_field`
        reads both formats and dequantises, so the loaded field answers exactly what the file holds."""
        from nir.checkpoint import atomic_write_bytes

        path = Path(path)
        data = self.to_bytes(dtype, int8_scale, stored.format_of(path, format), coder)
        atomic_write_bytes(path, lambda f: f.write(data))  # tmp, fsync, rename: never half a field
        return path

    def to_bytes(
        self, dtype: str = "float32", int8_scale: str = "row", format: str = "nir", coder: str = "auto"
    ) -> bytes:
        """The bytes :meth:`save` writes (``format`` ``nir`` or ``safetensors``)."""
        if stored.format_of(Path(), format) == "nir":
            from nir.codec import container

            residual = self.residual
            return container.encode(self.spec, self.state_dict(), self.template(), dtype, int8_scale, coder, residual)
        from nir.checkpoint import FORMAT
        from nir.codec import storage

        params = [name for name, _ in self.named_parameters()]
        tensors = storage.encode(self.state_dict(), params, dtype, int8_scale)
        meta = {"nir_format": str(FORMAT), "nir_spec": json.dumps(self.spec), "nir_dtype": dtype}
        return stored.safetensors_bytes(tensors, meta)

    def stored_bytes(
        self, dtype: str = "float32", int8_scale: str = "row", format: str = "nir", coder: str = "auto"
    ) -> int:
        """The size in bytes of the file :meth:`save` writes with these arguments (by default the
        compact file, the size a run reports as ``bytes``)."""
        return len(self.to_bytes(dtype, int8_scale, format, coder))

    def round_to_storage(self, dtype: str = "float32", int8_scale: str = "row") -> Field:
        """Put the stored values into the field in place (what :meth:`save` then
        :func:`load_field` would give), so it is evaluated as the file will answer."""
        from nir.codec import storage

        params = [name for name, _ in self.named_parameters()]
        self.load_state_dict(storage.round_trip(self.state_dict(), params, dtype, int8_scale))
        return self

    def template(self) -> Any:
        """What the compact file needs of this field's structure: the state its spec builds (the
        buffers a file need not store) and the parameters' names (:class:`nir.codec.container.Template`)."""
        return stored.template(Field.from_spec(self.spec), self)

    @classmethod
    def from_spec(cls, spec: dict[str, Any], trusted: Iterable[str] = ()) -> Field:
        """An untrained field from its spec; ``trusted``: more module prefixes its classes may come from."""
        return cls(build_component(spec["network"], trusted), build_component(spec["transform"], trusted), spec)


def load_field(path: str | Path, device: str | torch.device = "cpu", trusted: Iterable[str] = ()) -> Field:
    """Load a field from a field file (compact ``.nir`` or ``.safetensors``, told apart by their
    first bytes, each checked: the compact file's CRC, the safetensors file's checksum), a run
    directory, or a Lightning ``.ckpt``.

    Nothing is unpickled: field files are the compact format or safetensors with a JSON spec; checkpoints are read
    with ``weights_only=True``. A spec may name nir's own classes, and classes from the module
    prefixes in ``trusted`` (e.g. ``["mylab"]`` for ``mylab.nets.MyNet``) or in the
    comma-separated environment variable ``NIR_TRUSTED_MODULES``.
    """
    return rebuild(stored.read(path), trusted).to(device).eval()


def rebuild(s: stored.Stored, trusted: Iterable[str] = ()) -> Field:
    """The field a stored form holds: built from its spec, given its weights and residual;
    anything that does not fit (a spec that is not a nir spec, tensors missing, of the wrong
    shape or unreadable) is one line naming the file."""
    spec, what = s.spec, s.what
    if not (isinstance(spec, dict) and {"network", "transform", "bounds"} <= set(spec)):
        raise NirError(f"{what} is corrupt: its spec is not a nir field spec; save the field again")
    if "is_image" not in spec:  # written before the spec carried the capability (issue 27): the reader's label said it
        spec = {**spec, "is_image": spec.get("meta", {}).get("kind") == "image"}
    try:
        field = Field.from_spec(spec, trusted)
        field.load_state_dict(s.state(field))
    except NirError:
        raise
    except Exception as e:  # a damaged spec or tensor section, a truncated file
        raise NirError(f"{what} is corrupt or truncated ({stored.first_line(e)}); save the field again") from None
    field.residual = s.residual
    return field
