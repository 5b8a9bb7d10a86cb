"""A field's stored forms as plain values: which file a path names, the two field file formats
(the compact ``.nir`` file of :mod:`nir.codec.container` and ``.safetensors`` for interchange) and
the Lightning checkpoint, each read back to ``(spec, state, residual)`` and checked.

Both field files are checked on load: the compact file carries a CRC (the container's), and a
``.safetensors`` file written by nir carries ``nir_crc32`` in its metadata, a CRC-32 of its
metadata and tensor bytes, so a flipped byte is one line (:func:`read_safetensors`); files
written before the checksum load unchecked. Nothing here builds a
:class:`~nir.reuse.field.Field`: the caller builds the field from the spec and asks ``state`` for
its weights (a compact file's state is coded against the spec's fresh field).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nir.errors import NirError, require

if TYPE_CHECKING:  # torch loads where tensors are made: a network-free field decodes without it
    from torch import Tensor, nn

#: the field file formats :meth:`Field.save <nir.reuse.field.Field.save>` writes
FORMATS = ("nir", "safetensors")
#: the safetensors metadata key of the file's checksum
CHECKSUM = "nir_crc32"


@dataclass(frozen=True)
class Stored:
    """What a field file holds: the spec, ``state(field)`` (the weights for a field just built
    from the spec), the bounded residual (or None) and how to name the file in an error."""

    spec: Any
    state: Callable[[nn.Module], dict[str, Tensor]]
    residual: bytes | None
    what: str


#: a spec whose field answers exactly zero everywhere: no network (``bound.network=never``) behind
#: the identity transform; its bounded grid is the residual applied to zeros, decoded without torch
NETWORK_FREE = {"network": "nir.fields.zero.Zero", "transform": "nir.transforms.Identity"}


def grid_layout(spec: dict[str, Any]) -> tuple[tuple[int, ...], str]:
    """A field's training grid as the source held it: its shape (a trailing channel axis for
    several channels) and float dtype (``meta.dtype``: float16 / float32 / float64; float32 for
    anything else). What ``nir-decompress`` writes and the chunk codec decodes."""
    channels = int(spec["channels"])
    dtype = spec.get("meta", {}).get("dtype", "float32")
    shape = tuple(spec["shape"]) + ((channels,) if channels > 1 else ())
    return shape, dtype if dtype in ("float16", "float32", "float64") else "float32"


def plain_grid(data: bytes, what: str) -> Any:
    """The bounded training grid of a compact file whose field is :data:`NETWORK_FREE`, in the
    source's shape and dtype, decoded with numpy alone (no torch: ``nir-decompress`` of such a
    file starts in a fraction of the time); None for any other file. The same values as
    :meth:`Field.grid_array <nir.reuse.field.Field.grid_array>` (tested)."""
    import math

    import numpy as np

    from nir.codec import bound, container

    c = container.read(data, what)
    spec = c.spec
    if c.residual is None or any(spec.get(k, {}).get("target") != v for k, v in NETWORK_FREE.items()):
        return None
    n = math.prod(spec["shape"]) * int(spec["channels"])
    values = bound.apply(np.zeros(n, np.float32), bound.decode(c.residual, n))
    shape, dtype = grid_layout(spec)
    return np.asarray(values).reshape(shape).astype(dtype)


def format_of(path: Path, format: str | None) -> str:
    """``format`` checked, or the one ``path``'s suffix means (``.nir`` compact, else safetensors)."""
    if format is not None:
        require(format in FORMATS, f"field file format must be nir or safetensors, got {format!r}")
        return format
    return "nir" if path.suffix.lower() == ".nir" else "safetensors"


def run_file(p: Path) -> Path:
    """The field file of a run directory: field.nir, field.safetensors, then the last checkpoint."""
    for name in ("field.nir", "field.safetensors", "checkpoints/last.ckpt"):
        if (p / name).is_file():
            return p / name
    raise NirError(f"{str(p)!r} is not a nir run directory (no field.nir, field.safetensors or checkpoints/last.ckpt)")


def first_line(e: Exception) -> str:
    if isinstance(e, KeyError):
        return f"missing entry {e}"
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:200]


def template(fresh: nn.Module, named: nn.Module | None = None) -> Any:
    """The container's :class:`~nir.codec.container.Template`: ``fresh`` (a field just built from
    its spec, not trained) gives the state a file need not store, ``named`` (default ``fresh``)
    the parameters' names."""
    from nir.codec.container import Template

    names = fresh if named is None else named
    return Template(fresh.state_dict(), frozenset(name for name, _ in names.named_parameters()))


def _crc(meta: dict[str, str], payload: bytes) -> str:
    head = json.dumps({k: v for k, v in meta.items() if k != CHECKSUM}, sort_keys=True).encode()
    return f"{zlib.crc32(payload, zlib.crc32(head)):08x}"


def _split(data: bytes) -> tuple[dict[str, str], bytes]:
    """A safetensors file's metadata and tensor bytes."""
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + n]).get("__metadata__") or {}, data[8 + n :]


def safetensors_bytes(tensors: dict[str, Tensor], meta: dict[str, str]) -> bytes:
    """A ``.safetensors`` file of ``tensors`` with ``meta`` and its checksum in the metadata."""
    from safetensors.torch import save

    _, payload = _split(save(tensors, meta))
    return save(tensors, {**meta, CHECKSUM: _crc(meta, payload)})


def read_safetensors(p: Path) -> Stored:
    """A ``.safetensors`` field file written by :meth:`Field.save`, its checksum verified."""
    from safetensors.torch import load

    from nir.checkpoint import check_format
    from nir.codec.storage import decode

    what = f"field file {str(p)!r}"
    data = p.read_bytes()
    try:
        meta, payload = _split(data)
        require(isinstance(meta, dict), "its metadata is not a table")
    except Exception as e:
        raise NirError(
            f"{str(p)!r} is not a nir field file (neither the compact format nor safetensors: {first_line(e)})"
        ) from None
    require("nir_spec" in meta, f"{str(p)!r} has no nir spec in its header; it was not written by Field.save")
    check_format(meta.get("nir_format"), what)
    try:
        spec = json.loads(meta["nir_spec"])
    except ValueError:
        raise NirError(f"{what} is corrupt: its spec is not valid JSON; save the field again") from None
    if CHECKSUM in meta:
        require(
            meta[CHECKSUM] == _crc(meta, payload),
            f"{what} is corrupt (its checksum does not match); save the field again",
        )
    return Stored(spec, lambda field: decode(load(data)), None, what)


def read_compact(data: bytes, what: str) -> Stored:
    """A compact file's bytes (:mod:`nir.codec.container`, its CRC checked)."""
    from nir.codec import container

    c = container.read(data, what)
    return Stored(c.spec, lambda field: c.state(template(field)), c.residual, what)


def read_checkpoint(p: Path) -> Stored:
    """The field of a Lightning checkpoint nir wrote (read with ``weights_only=True``)."""
    from nir.checkpoint import load_checkpoint

    ckpt = load_checkpoint(p)
    require("nir_spec" in ckpt, f"checkpoint {str(p)!r} has no nir spec; it was not written by nir")
    states = ckpt.get("state_dict")
    prefix = "field."
    state = {k[len(prefix) :]: v for k, v in states.items() if k.startswith(prefix)} if isinstance(states, dict) else {}
    return Stored(ckpt["nir_spec"], lambda field: state, None, f"checkpoint {str(p)!r}")


def read(path: str | Path) -> Stored:
    """What the field file, run directory or checkpoint at ``path`` holds (the format told by
    the first bytes, not the suffix)."""
    from nir.codec import container

    p = Path(path).expanduser()
    require(
        p.exists(),
        f"field path {str(p)!r} does not exist; pass a run directory, field.nir, field.safetensors or a .ckpt",
    )
    if p.is_dir():
        p = run_file(p)
    if p.suffix == ".ckpt":
        return read_checkpoint(p)
    if container.is_compact(p):
        return read_compact(p.read_bytes(), f"field file {str(p)!r}")
    return read_safetensors(p)
