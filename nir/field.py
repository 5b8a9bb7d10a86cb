"""Field: a trained network plus everything it needs to answer in the signal's own units."""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from nir.errors import NirError, require
from nir.signal import Grid


def _import_nir_class(target: str) -> type:
    """Import ``target`` ("nir.fields.siren.Siren"), refusing anything outside nir."""
    module, _, name = target.rpartition(".")
    require(
        module == "nir" or module.startswith("nir."),
        f"field spec names class {target!r}, which is not part of nir; refusing to load it",
    )
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise NirError(f"field spec names unknown class {target!r}; was it saved by a newer nir?") from None
    require(isinstance(cls, type) and issubclass(cls, nn.Module), f"field spec: {target!r} is not a module class")
    return cls


def build_component(spec: dict[str, Any]) -> nn.Module:
    """Build ``{"target": "nir....Class", "kwargs": {...}}`` (plain values only)."""
    return _import_nir_class(spec["target"])(**spec.get("kwargs", {}))


def component_spec(obj: nn.Module, kwargs: dict[str, Any]) -> dict[str, Any]:
    cls = type(obj)
    return {"target": f"{cls.__module__}.{cls.__qualname__}", "kwargs": dict(kwargs)}


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

    @property
    def in_dim(self) -> int:
        return len(self.spec["bounds"])

    @property
    def channels(self) -> int:
        return int(self.spec["channels"])

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.network.parameters())

    def forward(self, coords: Tensor) -> Tensor:
        """``(N, d)`` coordinates (in the box's units) -> ``(N, channels)`` values in signal units."""
        require(
            torch.is_tensor(coords) and coords.is_floating_point(),
            "field coordinates must be a floating-point tensor of shape (N, d)",
        )
        require(
            coords.shape[-1] == self.in_dim,
            f"field expects coordinates with {self.in_dim} columns, got shape {tuple(coords.shape)}",
        )
        return self.transform.inverse(self.network(coords))

    @torch.no_grad()
    def sample(
        self,
        shape: Sequence[int] | None = None,
        bounds: Sequence[Sequence[float]] | None = None,
        chunk: int = 65536,
    ) -> Tensor:
        """Evaluate on a regular grid (cell centres) -> ``(*shape, channels)`` on CPU.

        Defaults: the training grid's shape and box. Evaluated in chunks of ``chunk`` points, so
        memory beyond the output is bounded whatever the resolution.
        """
        shape = tuple(self.spec["shape"] if shape is None else shape)
        bounds = self.spec["bounds"] if bounds is None else bounds
        require(len(shape) == self.in_dim, f"sample shape {shape} must have {self.in_dim} axes")
        grid = Grid(shape, bounds).to(self.bounds.device)
        n = math.prod(shape)
        out = torch.empty(n, self.channels, dtype=torch.float32)
        for s in range(0, n, chunk):
            idx = torch.arange(s, min(s + chunk, n), device=self.bounds.device)
            out[s : s + len(idx)] = self(grid.coords(idx)).float().cpu()
        return out.reshape(*shape, self.channels)

    def save(self, path: str | Path) -> Path:
        """Write a portable field file: safetensors weights, the spec as JSON in its header."""
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata={"nir_spec": json.dumps(self.spec)})
        tmp.replace(path)
        return path

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "Field":
        return cls(build_component(spec["network"]), build_component(spec["transform"]), spec)


def load_field(path: str | Path, device: str | torch.device = "cpu") -> Field:
    """Load a field from a ``.safetensors`` field file or a run directory holding ``field.safetensors``.

    Nothing is unpickled: weights come from safetensors, the spec is JSON and may only name
    nir's own classes.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    p = Path(path).expanduser()
    if p.is_dir():
        require((p / "field.safetensors").is_file(), f"{str(p)!r} is not a nir run directory (no field.safetensors)")
        p = p / "field.safetensors"
    require(p.is_file(), f"field path {str(p)!r} does not exist")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:
        raise NirError(f"{str(p)!r} is not a safetensors field file ({e})") from None
    require("nir_spec" in meta, f"{str(p)!r} has no nir spec in its header; it was not written by Field.save")
    field = Field.from_spec(json.loads(meta["nir_spec"]))
    field.load_state_dict(load_file(str(p)))
    return field.to(device).eval()
