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
  2 zstd), bit 7 an error-bounded field's residual follows the spec (:mod:`nir.bound`).
- **buffer mask**: one bit per buffer (state-dict order): 1 = stored (raw, its own dtype), 0 = as
  the spec builds it (the box, a Fourier matrix drawn from its seed, a grid's index tables).
- **tensors**: per parameter in state-dict order: float32 raw; float16 as a one-byte power-of-two
  exponent and the halves (:mod:`nir.storage`); ``intN`` as its bfloat16 scales (under ANS the
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
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nir import storage
from nir.errors import NirError, require

MAGIC = b"NIRf"
VERSION = 1
CODERS = ("raw", "ans", "zstd")  # the integer stream: fixed-length or entropy coded (auto: the smallest)


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


# ----------------------------------------------------------------------------- integers
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def pack_bits(q: np.ndarray, bits: int) -> bytes:
    """Integers in [-Q, Q] (``Q = 2^(bits-1) - 1``), ``bits`` bits each, little-endian bit order."""
    u = (q.astype(np.int32) + (2 ** (bits - 1) - 1)).astype(np.uint16)
    planes = ((u[:, None] >> np.arange(bits, dtype=np.uint16)) & 1).astype(np.uint8)
    return np.packbits(planes.reshape(-1), bitorder="little").tobytes()


def unpack_bits(data: bytes, n: int, bits: int) -> np.ndarray:
    planes = np.unpackbits(np.frombuffer(data, np.uint8), count=n * bits, bitorder="little").reshape(n, bits)
    u = (planes.astype(np.int32) << np.arange(bits, dtype=np.int32)).sum(axis=1)
    return (u - (2 ** (bits - 1) - 1)).astype(np.int8)


def _std(q: np.ndarray) -> float:
    """The Gaussian's standard deviation for a tensor's integers, as stored (bfloat16)."""
    rms = math.sqrt(float(np.mean(q.astype(np.float64) ** 2))) if q.size else 1.0
    return _from_bf16_bits(_bf16_bits(max(rms, 0.25)))


def _models(streams: list[np.ndarray], bits: int) -> tuple[bytes, list[Any]]:
    """Each tensor's entropy model and its bytes: a quantised Gaussian (a zero byte and the
    bfloat16 standard deviation) or, where it codes smaller, the tensor's own histogram (a one,
    then the count of each of the 2Q + 1 integers as varints; the costlier model pays on large,
    heavy-tailed tensors, where the Gaussian misjudges the tails)."""
    qmax = 2 ** (bits - 1) - 1
    side, models = bytearray(), []
    for q in streams:
        std = _std(q)
        counts = np.bincount(q.astype(np.int64) + qmax, minlength=2 * qmax + 1)
        histogram = b"".join(_varint(int(c)) for c in counts)
        p = counts[counts > 0] / max(q.size, 1)
        entropy = -float((p * np.log2(p)).sum()) * q.size / 8  # bytes the histogram codes to
        x = np.arange(-qmax, qmax + 1)
        g = np.exp(-0.5 * (x / std) ** 2)
        g = np.maximum(g / g.sum(), 1e-12)
        gaussian = -float((counts * np.log2(g)).sum()) / 8
        if q.size and entropy + len(histogram) < gaussian + 2:
            side += b"\x01" + histogram
            models.append(("histogram", counts))
        else:
            side += b"\x00" + struct.pack("<H", _bf16_bits(std))
            models.append(("gaussian", std))
    return bytes(side), models


def _read_models(data: bytes, count: int, bits: int) -> tuple[list[Any], int]:
    qmax, pos, models = 2 ** (bits - 1) - 1, 0, []
    for _ in range(count):
        require(pos < len(data), "ANS model section is short")
        kind, pos = data[pos], pos + 1
        if kind == 0:
            models.append(("gaussian", _from_bf16_bits(struct.unpack_from("<H", data, pos)[0])))
            pos += 2
        else:
            require(kind == 1, "unknown ANS model")
            counts = []
            for _ in range(2 * qmax + 1):
                c, pos = _read_varint(data, pos)
                counts.append(c)
            models.append(("histogram", np.array(counts, np.int64)))
    return models, pos


def _model(kind_and_value: tuple[str, Any], bits: int) -> Any:
    import constriction

    qmax = 2 ** (bits - 1) - 1
    kind, value = kind_and_value
    if kind == "gaussian":
        return constriction.stream.model.QuantizedGaussian(-qmax, qmax, 0.0, value)
    return constriction.stream.model.Categorical(value / value.sum(), perfect=False)


def ans_encode(streams: list[np.ndarray], models: list[Any], bits: int) -> bytes:
    """The integer streams coded with ANS (constriction), each under its model (:func:`_models`)."""
    import constriction

    qmax = 2 ** (bits - 1) - 1
    coder = constriction.stream.stack.AnsCoder()
    for q, m in zip(reversed(streams), reversed(models)):  # a stack: the last encoded decodes first
        if q.size:
            symbols = q.astype(np.int32) + (qmax if m[0] == "histogram" else 0)
            coder.encode_reverse(symbols, _model(m, bits))
    return coder.get_compressed().astype("<u4").tobytes()


def ans_decode(data: bytes, sizes: list[int], models: list[Any], bits: int) -> list[np.ndarray]:
    import constriction

    qmax = 2 ** (bits - 1) - 1
    require(len(data) % 4 == 0, "ANS stream is not whole 32-bit words")
    coder = constriction.stream.stack.AnsCoder(np.frombuffer(data, "<u4").astype(np.uint32))
    out = []
    for n, m in zip(sizes, models):
        if not n:
            out.append(np.zeros(0, np.int8))
            continue
        symbols = coder.decode(_model(m, bits), n)
        out.append((symbols - (qmax if m[0] == "histogram" else 0)).astype(np.int8))
    return out


# ----------------------------------------------------------------------------- the file
def _store_byte(dtype: str, int8_scale: str, coder: int) -> int:
    bits = storage.bits_of(dtype)
    code = {"float32": 0, "float16": 1}.get(dtype, bits)
    return code | (16 if int8_scale == "tensor" else 0) | (coder << 5)


def _split_store(b: int) -> tuple[int, bool]:
    return b & 0x7F, bool(b & 0x80)


def _parse_store(b: int) -> tuple[str, str, int]:
    code, scale, coder = b & 15, "tensor" if b & 16 else "row", (b >> 5) & 3  # bit 7: _split_store
    require(code in (0, 1, *range(2, 9)) and coder < len(CODERS), "unknown store byte")
    return {0: "float32", 1: "float16"}.get(code, f"int{code}"), scale, coder


def encode_field(field: Any, dtype: str = "float32", int8_scale: str = "row", coder: str = "auto") -> bytes:
    """The compact file of ``field`` at ``dtype`` (:mod:`nir.storage`'s rounding); ``coder``:
    ``raw`` (N bits per integer), ``ans``, or ``auto`` (the smaller of the two)."""
    storage.check(dtype, int8_scale)
    require(coder in ("auto", *CODERS), f"store.coder must be auto, raw, ans or zstd, got {coder!r}")
    from nir.field import Field

    spec, state = field.spec, field.state_dict()
    params = {name for name, _ in field.named_parameters()}
    tensors = storage.encode(state, params, dtype, int8_scale)
    fresh = Field.from_spec(spec).state_dict()
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
    bits = storage.bits_of(dtype)
    choice, tail = 0, b""
    if streams:
        flat = np.concatenate(streams)

        def ans() -> bytes:
            side, models = _models(streams, bits)
            return side + ans_encode(streams, models, bits)

        coded = {"raw": lambda: pack_bits(flat, bits), "ans": ans, "zstd": lambda: _zstd_ints(flat)}
        options = {c: coded[c]() for c in (CODERS if coder == "auto" else (coder,))}
        best = min(options, key=lambda c: (len(options[c]), CODERS.index(c)))
        choice, tail = CODERS.index(best), options[best]
    spec_bytes = pack_spec(spec)
    residual = getattr(field, "residual", None)
    store = _store_byte(dtype, int8_scale, choice) | (0x80 if residual is not None else 0)
    head = MAGIC + bytes([VERSION, store]) + _varint(len(spec_bytes)) + spec_bytes
    if residual is not None:
        head += _varint(len(residual)) + residual
    out = head + bytes(body) + tail
    return out + struct.pack("<I", zlib.crc32(out))


def _zstd_ints(q: np.ndarray) -> bytes:
    """One byte per integer, zstd level 19; level 9 above a million integers (on a 4M-integer
    table level 19 took 3.4 s for 11 % fewer bytes than 9's 0.12 s, and ANS under the table's
    histogram was smaller than both in 0.14 s, so ``auto`` does not need 19 there)."""
    import zstandard as zstd

    level = 19 if q.size <= 1_000_000 else 9
    params = zstd.ZstdCompressionParameters.from_level(level, format=zstd.FORMAT_ZSTD1_MAGICLESS, write_checksum=0)
    return zstd.ZstdCompressor(compression_params=params).compress(q.astype(np.int8).tobytes())


def _bf16_bits(x: float) -> int:
    return int(torch.tensor(x).bfloat16().view(torch.int16)) & 0xFFFF


def _from_bf16_bits(b: int) -> float:
    return float(torch.tensor(b if b < 32768 else b - 65536, dtype=torch.int16).view(torch.bfloat16).float())


def header_bytes(data: bytes, field: Any = None) -> int:
    """Bytes of ``data`` (a compact file) that are not coded parameters: magic, version, store
    byte, the spec and its length, the buffer mask and the CRC. ``field``: the field the file
    holds, when at hand (else it is built from the spec, to count its buffers)."""
    n, pos = _read_varint(data, 6)
    spec = unpack_spec(data[pos : pos + n], data[4])
    header = pos + n
    if _split_store(data[5])[1]:  # the residual is coded data; its length field is header
        r, after = _read_varint(data, pos + n)
        header += after - (pos + n)
    from nir.field import Field

    field = Field.from_spec(spec) if field is None else field
    params = {name for name, _ in field.named_parameters()}
    buffers = sum(1 for name in field.state_dict() if name not in params)
    return header + (buffers + 7) // 8 + 4


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        require(pos < len(data) and shift < 35, "truncated header")
        b = data[pos]
        n |= (b & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not b & 0x80:
            return n, pos


def is_compact(path: str | Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == MAGIC


def decode_field(data: bytes, what: str, trusted: Any = ()) -> Any:
    """The field of a compact file's bytes; anything wrong is one line naming ``what``."""
    from nir.field import Field, _rebuild

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
        store, spec, residual, at = _head(data)
    except Exception as e:
        raise NirError(f"{what} is corrupt ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__}); "
                       "save the field again") from None  # fmt: skip
    field = _rebuild(spec, lambda: _state(data, at, Field.from_spec(spec, trusted), *store), what, trusted)
    field.residual = residual
    return field


def _head(data: bytes) -> tuple[tuple[str, str, int], dict[str, Any], bytes | None, int]:
    """The store settings, the spec, the residual (or None) and where the tensors start."""
    byte, has_residual = _split_store(data[5])
    store = _parse_store(byte)
    n, pos = _read_varint(data, 6)
    spec = unpack_spec(data[pos : pos + n], data[4])
    at, residual = pos + n, None
    if has_residual:
        r, at = _read_varint(data, at)
        require(at + r <= len(data) - 4, "residual longer than the file")
        residual, at = bytes(data[at : at + r]), at + r
    return store, spec, residual, at


class _Reader:
    """Consecutive raw tensors from ``data[at:end]``."""

    def __init__(self, data: bytes, at: int, end: int) -> None:
        self.data, self.at, self.end = data, at, end

    def take(self, count: int, dtype: torch.dtype) -> Tensor:
        size = count * torch.empty(0, dtype=dtype).element_size()
        require(self.at + size <= self.end, "tensor section shorter than the spec says")
        raw = bytearray(self.data[self.at : self.at + size])
        self.at += size
        return torch.frombuffer(raw, dtype=dtype) if size else torch.zeros(0, dtype=dtype)


def _state(data: bytes, at: int, field: Any, dtype: str, int8_scale: str, coder: int) -> dict[str, Tensor]:
    """The state dict of the file's tensors (``field``: the spec's fresh field, for names,
    shapes and the buffers that are not stored)."""
    fresh = field.state_dict()
    params = {name for name, _ in field.named_parameters()}
    buffers = [name for name in fresh if name not in params]
    nmask = (len(buffers) + 7) // 8
    mask = np.unpackbits(np.frombuffer(data[at : at + nmask], np.uint8), count=len(buffers), bitorder="little")
    read = _Reader(data, at + nmask, len(data) - 4)
    tensors: dict[str, Tensor] = {}
    ints: list[tuple[str, torch.Size]] = []
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
            ints.append((name, ref.shape))
        elif dtype != "float32":
            exponent = int(read.take(1, torch.int8)[0])
            tensors[name] = read.take(ref.numel(), torch.int16).view(torch.float16).reshape(ref.shape)
            tensors[name + storage.F16_SUFFIX] = torch.tensor([2.0**exponent])
        else:
            tensors[name] = read.take(ref.numel(), torch.float32).reshape(ref.shape)
    sizes = [math.prod(shape) for _, shape in ints]
    streams = _integers(data[read.at : read.end], sizes, storage.bits_of(dtype), coder)
    for (name, shape), q in zip(ints, streams):
        tensors[name] = torch.from_numpy(np.ascontiguousarray(q)).reshape(shape)
    return storage.decode(tensors)


def _integers(rest: bytes, sizes: list[int], bits: int | None, coder: int) -> list[np.ndarray]:
    """The integer streams of the tensors (``sizes`` integers each) from the file's last section."""
    if coder == 1:
        models, used = _read_models(rest, len(sizes), bits)
        return ans_decode(rest[used:], sizes, models, bits)
    if coder == 2:
        import zstandard as zstd

        dctx = zstd.ZstdDecompressor(format=zstd.FORMAT_ZSTD1_MAGICLESS)
        flat = np.frombuffer(dctx.decompress(rest, max_output_size=sum(sizes)), np.int8).copy()
        require(flat.size == sum(sizes), "integer section has the wrong length")
        return np.split(flat, np.cumsum(sizes)[:-1])
    if sizes:
        require(len(rest) == -(-sum(sizes) * bits // 8), "integer section has the wrong length")
        return np.split(unpack_bits(rest, sum(sizes), bits), np.cumsum(sizes)[:-1])
    require(not rest, "bytes after the last tensor")
    return []
