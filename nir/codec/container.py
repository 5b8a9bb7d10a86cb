"""The compact field file (``.nir``): a few bytes of header, then the coded parameters.

A run's ``bytes`` is this file's size. Layout (integers little-endian, ``varint`` = LEB128)::

    magic b"NIRf" | version (1 byte) | store (1 byte) | varint n | spec (n bytes)
    | [varint r | residual (r bytes)] | buffer mask | tensors | integer stream | CRC-32 (4 bytes)

- **spec**: the field's spec as canonical JSON (sorted keys; a source path cut to its file name),
  compressed by zstd against the version's dictionary (``nir/data/spec-dictionary-V.json``, the
  spec of every shipped model preset on every shipped data preset, written once by
  ``scripts/make_spec_dictionary.py``): a spec built from the shipped configs codes as a few
  references into it, a few tens of bytes instead of ~1 kB of JSON.
- **store**: bits 0-3 the stored precision (0 float32, 1 float16, N = 2..8 for ``intN``), bit 4
  one scale per tensor (``int8_scale=tensor``), bits 5-6 the integer coder (0 fixed-length, 1 ANS,
  2 zstd), bit 7 an error-bounded field's residual follows the spec (:mod:`nir.codec.bound`).
- **buffer mask**: one bit per buffer (state-dict order): 1 = stored (raw, its own dtype), 0 = as
  the spec builds it (the box, a Fourier matrix drawn from its seed, a grid's index tables).
- **tensors**: per parameter in state-dict order: float32 raw; float16 as a one-byte power-of-two
  exponent and the halves (:mod:`nir.codec.storage`); ``intN`` as its bfloat16 scales (under ANS the
  integer stream starts with each tensor's model).
- **integer stream**: the quantised integers of every ``intN`` tensor, packed at N bits each, or
  entropy coded: constriction's ANS coder under a model per tensor (a quantised Gaussian, or the
  tensor's own histogram where that codes smaller), or zstd of one byte per integer. ``coder=auto`` keeps the smallest of the three for each file, so
  the coded size never exceeds N bits per integer (docs/compression.md measures them).

The header (what is not coded parameters) is magic, version, store byte, the spec and its length,
the buffer mask and the CRC: :func:`header_bytes`. Nothing is unpickled; a foreign, truncated,
corrupted or newer file is one line (:class:`~nir.errors.NirError`).
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nir.codec import ints
from nir.codec.ints import CODERS
from nir.errors import NirError, require

if TYPE_CHECKING:  # torch (and the stored precision, nir.codec.storage) load where tensors are made:
    # reading a file's head, spec and residual needs neither (a network-free field decodes without torch)
    import torch
    from torch import Tensor

MAGIC = b"NIRf"
VERSION = 1


# ----------------------------------------------------------------------------- the spec
def spec_text(spec: dict[str, Any]) -> str:
    """The canonical JSON of a spec as the compact file stores it: sorted keys, no spaces, a
    source path cut to its file name (a field file travels; the run's config.yaml keeps the path)."""
    meta = spec.get("meta") or {}
    if isinstance(meta.get("path"), str):
        spec = {**spec, "meta": {**meta, "path": Path(meta["path"]).name}}
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))


@cache
def _dictionary(version: int) -> Any:
    import zstandard as zstd

    data = resources.files("nir").joinpath("data", f"spec-dictionary-{version}.json").read_bytes()
    return zstd.ZstdCompressionDict(data, dict_type=zstd.DICT_TYPE_RAWCONTENT)


def _zstd_params() -> Any:
    import zstandard as zstd

    return zstd.ZstdCompressionParameters.from_level(
        19, format=zstd.FORMAT_ZSTD1_MAGICLESS, write_checksum=0, write_dict_id=0, write_content_size=1
    )


def pack_spec(spec: dict[str, Any], version: int = VERSION) -> bytes:
    import zstandard as zstd

    cctx = zstd.ZstdCompressor(dict_data=_dictionary(version), compression_params=_zstd_params())
    return cctx.compress(spec_text(spec).encode())


def unpack_spec(data: bytes, version: int) -> dict[str, Any]:
    import zstandard as zstd

    dctx = zstd.ZstdDecompressor(dict_data=_dictionary(version), format=zstd.FORMAT_ZSTD1_MAGICLESS)
    return json.loads(dctx.decompress(data, max_output_size=1 << 24))


# ----------------------------------------------------------------------------- the file
def _store_byte(dtype: str, int8_scale: str, coder: int) -> int:
    from nir.codec import storage

    bits = storage.bits_of(dtype)
    code = {"float32": 0, "float16": 1}.get(dtype, bits)
    return code | (16 if int8_scale == "tensor" else 0) | (coder << 5)


def _split_store(b: int) -> tuple[int, bool]:
    return b & 0x7F, bool(b & 0x80)


def _parse_store(b: int) -> tuple[str, str, int]:
    code, scale, coder = b & 15, "tensor" if b & 16 else "row", (b >> 5) & 3  # bit 7: _split_store
    require(code in (0, 1, *range(2, 9)) and coder < len(CODERS), "unknown store byte")
    return {0: "float32", 1: "float16"}.get(code, f"int{code}"), scale, coder


@dataclass(frozen=True)
class Template:
    """What the container needs of a field's structure, as the spec builds it: the fresh state
    dict (names, shapes, dtypes, and the buffers a file need not store) and the parameters' names."""

    state: dict[str, Tensor]
    params: frozenset[str]

    @property
    def buffers(self) -> list[str]:
        return [n for n in self.state if n not in self.params]


def encode(
    spec: dict[str, Any],
    state: dict[str, Tensor],
    template: Template,
    dtype: str = "float32",
    int8_scale: str = "row",
    coder: str = "auto",
    residual: bytes | None = None,
) -> bytes:
    """The compact file of a field's ``spec`` and ``state`` at ``dtype`` (:mod:`nir.codec.storage`'s
    rounding); ``template``: the spec's fresh field (:class:`Template`); ``coder``: ``raw`` (N bits
    per integer), ``ans``, ``zstd``, or ``auto`` (the smallest); ``residual``: a bounded field's."""
    import torch

    from nir.codec import storage

    storage.check(dtype, int8_scale)
    require(coder in ("auto", *CODERS), f"store.coder must be auto, raw, ans or zstd, got {coder!r}")
    params, fresh = template.params, template.state
    # the template's order, which the reader walks (a state read back from a file lists its
    # integer tensors last: re-encoding it in its own order scrambled the body)
    state = {n: state[n] for n in [*fresh, *(k for k in state if k not in fresh)] if n in state}
    tensors = storage.encode(state, params, dtype, int8_scale)
    buffers = [n for n in state if n not in params]
    mask = [not (n in fresh and fresh[n].shape == state[n].shape and torch.equal(fresh[n].cpu(), state[n].cpu()))
            for n in buffers]  # fmt: skip
    body = bytearray(np.packbits(np.array(mask, bool), bitorder="little").tobytes())
    streams = []
    for name in state:
        t = tensors[name]
        if name not in params:
            if mask[buffers.index(name)]:
                body += t.contiguous().numpy().tobytes()
        elif name + storage.SCALE_SUFFIX in tensors:
            body += tensors[name + storage.SCALE_SUFFIX].contiguous().view(torch.int16).numpy().tobytes()
            streams.append(t.numpy().reshape(-1))
        elif name + storage.F16_SUFFIX in tensors:
            body += struct.pack("<b", round(math.log2(float(tensors[name + storage.F16_SUFFIX]))))
            body += t.contiguous().view(torch.int16).numpy().tobytes()
        else:
            body += t.float().contiguous().numpy().tobytes()
    choice, tail = 0, b""
    if streams:
        family = ints.field_coders(storage.bits_of(dtype))
        chosen, tail = ints.smallest(family if coder == "auto" else [family[CODERS.index(coder)]], streams)
        choice = chosen.id
    spec_bytes = pack_spec(spec)
    store = _store_byte(dtype, int8_scale, choice) | (0x80 if residual is not None else 0)
    head = MAGIC + bytes([VERSION, store]) + ints.varint(len(spec_bytes)) + spec_bytes
    if residual is not None:
        head += ints.varint(len(residual)) + residual
    out = head + bytes(body) + tail
    return out + struct.pack("<I", zlib.crc32(out))


def header_bytes(data: bytes, buffers: int) -> int:
    """Bytes of ``data`` (a compact file) that are not coded parameters: magic, version, store
    byte, the spec and its length, the buffer mask (``buffers``: the field's buffer count) and the CRC."""
    n, pos = ints.read_varint(data, 6)
    header = pos + n
    if _split_store(data[5])[1]:  # the residual is coded data; its length field is header
        _, after = ints.read_varint(data, pos + n)
        header += after - (pos + n)
    return header + (buffers + 7) // 8 + 4


def is_compact(path: str | Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == MAGIC


@dataclass(frozen=True)
class Compact:
    """A compact file's bytes, checked and its head read: the store settings, the spec, the
    residual (or None) and where the tensors start."""

    data: bytes
    dtype: str
    int8_scale: str
    coder: int
    spec: dict[str, Any]
    residual: bytes | None
    at: int

    def state(self, template: Template) -> dict[str, Tensor]:
        """The state dict of the file's tensors (``template``: the spec's fresh field, for names,
        shapes and the buffers that are not stored)."""
        return _state(self, template)


def read(data: bytes, what: str) -> Compact:
    """The head of a compact file's bytes; anything wrong is one line naming ``what``."""
    if data[:4] != MAGIC:
        raise NirError(f"{what} is not a nir field file (no nir magic number); pass a .nir or .safetensors field file")
    if len(data) < 10:
        raise NirError(f"{what} is truncated ({len(data)} bytes); save the field again")
    if data[4] > VERSION:
        raise NirError(f"{what} was written by a newer nir (field format {data[4]}, this nir reads up to {VERSION}); "
                       "upgrade nir to read it")  # fmt: skip
    if zlib.crc32(data[:-4]) != struct.unpack("<I", data[-4:])[0]:
        raise NirError(f"{what} is corrupt or truncated (its checksum does not match); save the field again")
    try:
        byte, has_residual = _split_store(data[5])
        dtype, int8_scale, coder = _parse_store(byte)
        n, pos = ints.read_varint(data, 6)
        spec = unpack_spec(data[pos : pos + n], data[4])
        at, residual = pos + n, None
        if has_residual:
            r, at = ints.read_varint(data, at)
            require(at + r <= len(data) - 4, "residual longer than the file")
            residual, at = bytes(data[at : at + r]), at + r
    except Exception as e:
        raise NirError(f"{what} is corrupt ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__}); "
                       "save the field again") from None  # fmt: skip
    return Compact(data, dtype, int8_scale, coder, spec, residual, at)


class _Reader:
    """Consecutive raw tensors from ``data[at:end]``."""

    def __init__(self, data: bytes, at: int, end: int) -> None:
        self.data, self.at, self.end = data, at, end

    def take(self, count: int, dtype: torch.dtype) -> Tensor:
        import torch

        size = count * torch.empty(0, dtype=dtype).element_size()
        require(self.at + size <= self.end, "tensor section shorter than the spec says")
        raw = bytearray(self.data[self.at : self.at + size])
        self.at += size
        return torch.frombuffer(raw, dtype=dtype) if size else torch.zeros(0, dtype=dtype)


def _state(c: Compact, template: Template) -> dict[str, Tensor]:
    import torch

    from nir.codec import storage

    data, dtype, int8_scale = c.data, c.dtype, c.int8_scale
    fresh, params, buffers = template.state, template.params, template.buffers
    nmask = (len(buffers) + 7) // 8
    mask = np.unpackbits(np.frombuffer(data[c.at : c.at + nmask], np.uint8), count=len(buffers), bitorder="little")
    read = _Reader(data, c.at + nmask, len(data) - 4)
    tensors: dict[str, Tensor] = {}
    quantized: list[tuple[str, torch.Size]] = []
    for name, ref in fresh.items():
        if name not in params:
            stored = mask[buffers.index(name)]
            tensors[name] = read.take(ref.numel(), ref.dtype).reshape(ref.shape).clone() if stored else ref
        elif dtype.startswith("int") and storage.quantized(name, ref):
            rows = ref.shape[0]
            count = (
                1 if int8_scale == "tensor" else rows if name.endswith("weight") else -(-rows // storage.TABLE_BLOCK)
            )
            tensors[name + storage.SCALE_SUFFIX] = read.take(count, torch.int16).view(torch.bfloat16).reshape(-1, 1)
            quantized.append((name, ref.shape))
        elif dtype != "float32":
            exponent = int(read.take(1, torch.int8)[0])
            tensors[name] = read.take(ref.numel(), torch.int16).view(torch.float16).reshape(ref.shape)
            tensors[name + storage.F16_SUFFIX] = torch.tensor([2.0**exponent])
        else:
            tensors[name] = read.take(ref.numel(), torch.float32).reshape(ref.shape)
    sizes = [math.prod(shape) for _, shape in quantized]
    coder = ints.coder_of(ints.field_coders(storage.bits_of(dtype)), c.coder, "integer")
    streams = coder.decode(data[read.at : read.end], sizes)
    for (name, shape), q in zip(quantized, streams):
        tensors[name] = torch.from_numpy(np.ascontiguousarray(q)).reshape(shape)
    return storage.decode(tensors)
