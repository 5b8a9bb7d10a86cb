"""Integers to bytes: LEB128 varints, N-bit packing, and the integer coders behind one front end.

A coder is a small class with an ``id`` (the number a file stores to name it), a ``name``,
``encode(streams) -> bytes`` (``None`` where it does not apply) and
``decode(data, sizes) -> streams``. Two families use them:

- the field's parameters (:data:`field_coders`, ids 0-2 in the store byte, :mod:`nir.codec.container`):
  :class:`Packed` (N bits per integer), :class:`TensorAns` (ANS under a model per tensor),
  :class:`ByteZstd` (one byte per integer, zstd);
- a bounded field's residual (:data:`RESIDUAL_CODERS`, ids 1-3 in its first byte,
  :mod:`nir.codec.bound`): :class:`ZigzagZstd`, :class:`BlockedLaplaceAns` (and the one-stream
  :class:`LaplaceAns` of older files); the context coder (id 4) needs the grid and lives in
  :mod:`nir.codec.context`.

:func:`smallest` codes with each and keeps the smallest (the first on a tie, so the order of a
family is part of the format); :func:`coder_of` finds a coder by its id, and an unknown id is one
line. Nothing here knows a field: streams are numpy integer arrays.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from nir.errors import require


# ----------------------------------------------------------------------------- varints and bits
def varint(n: int) -> bytes:
    """``n >= 0`` as LEB128 (7 bits a byte, the high bit set on all but the last)."""
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """The varint at ``data[pos:]`` and the position after it."""
    n = shift = 0
    while True:
        require(pos < len(data) and shift < 35, "truncated header")
        b = data[pos]
        n |= (b & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not b & 0x80:
            return n, pos


def pack_bits(q: np.ndarray, bits: int) -> bytes:
    """Integers in [-Q, Q] (``Q = 2^(bits-1) - 1``), ``bits`` bits each, little-endian bit order."""
    u = (q.astype(np.int32) + (2 ** (bits - 1) - 1)).astype(np.uint16)
    planes = ((u[:, None] >> np.arange(bits, dtype=np.uint16)) & 1).astype(np.uint8)
    return np.packbits(planes.reshape(-1), bitorder="little").tobytes()


def unpack_bits(data: bytes, n: int, bits: int) -> np.ndarray:
    planes = np.unpackbits(np.frombuffer(data, np.uint8), count=n * bits, bitorder="little").reshape(n, bits)
    u = (planes.astype(np.int32) << np.arange(bits, dtype=np.int32)).sum(axis=1)
    return (u - (2 ** (bits - 1) - 1)).astype(np.int8)


def bf16_bits(x: float) -> int:
    """The bfloat16 nearest ``x``, as its 16 bits."""
    import torch

    return int(torch.tensor(x).bfloat16().view(torch.int16)) & 0xFFFF


def from_bf16_bits(b: int) -> float:
    import torch

    return float(torch.tensor(b if b < 32768 else b - 65536, dtype=torch.int16).view(torch.bfloat16).float())


# ----------------------------------------------------------------------------- the front end
class Coder(Protocol):
    id: int
    name: str

    def encode(self, streams: Sequence[np.ndarray]) -> bytes | None: ...

    def decode(self, data: bytes, sizes: Sequence[int]) -> list[np.ndarray]: ...


def smallest(coders: Sequence[Coder], streams: Sequence[np.ndarray]) -> tuple[Coder, bytes] | None:
    """The coder of ``coders`` that codes ``streams`` smallest (the first of equals), and its
    bytes; None where none applies (a coder may not, e.g. ANS to a single symbol)."""
    options = [(c, b) for c in coders if (b := c.encode(streams)) is not None]
    return min(options, key=lambda cb: len(cb[1])) if options else None


def coder_of(coders: Sequence[Coder], id: int, what: str) -> Coder:
    found = [c for c in coders if c.id == id]
    require(bool(found), f"unknown {what} coder {id}")
    return found[0]


def _split(flat: np.ndarray, sizes: Sequence[int]) -> list[np.ndarray]:
    return np.split(flat, np.cumsum(sizes)[:-1]) if len(sizes) else []


# ----------------------------------------------------------------------------- the field's integers
class Packed:
    """``bits`` bits per integer, the streams one after another (never larger than N bits each)."""

    id, name = 0, "raw"

    def __init__(self, bits: int) -> None:
        self.bits = bits

    def encode(self, streams: Sequence[np.ndarray]) -> bytes:
        return pack_bits(np.concatenate(streams), self.bits)

    def decode(self, data: bytes, sizes: Sequence[int]) -> list[np.ndarray]:
        if not sizes:
            require(not data, "bytes after the last tensor")
            return []
        require(len(data) == -(-sum(sizes) * self.bits // 8), "integer section has the wrong length")
        return _split(unpack_bits(data, sum(sizes), self.bits), sizes)


class ByteZstd:
    """One byte per integer, zstd (magicless frame): level 19, level 9 above a million integers
    (on a 4M-integer table level 19 took 3.4 s for 11 % fewer bytes than 9's 0.12 s, and ANS under
    the table's histogram was smaller than both in 0.14 s)."""

    id, name = 2, "zstd"

    def encode(self, streams: Sequence[np.ndarray]) -> bytes:
        import zstandard as zstd

        q = np.concatenate(streams)
        level = 19 if q.size <= 1_000_000 else 9
        params = zstd.ZstdCompressionParameters.from_level(level, format=zstd.FORMAT_ZSTD1_MAGICLESS, write_checksum=0)
        return zstd.ZstdCompressor(compression_params=params).compress(q.astype(np.int8).tobytes())

    def decode(self, data: bytes, sizes: Sequence[int]) -> list[np.ndarray]:
        import zstandard as zstd

        dctx = zstd.ZstdDecompressor(format=zstd.FORMAT_ZSTD1_MAGICLESS)
        flat = np.frombuffer(dctx.decompress(data, max_output_size=sum(sizes)), np.int8).copy()
        require(flat.size == sum(sizes), "integer section has the wrong length")
        return _split(flat, sizes)


class TensorAns:
    """ANS (constriction), each stream under its own model, the models first: a quantised
    Gaussian (a zero byte and the bfloat16 standard deviation) or, where it codes smaller, the
    stream's own histogram (a one, then the count of each of the 2Q + 1 integers as varints; the
    costlier model pays on large, heavy-tailed tensors, where the Gaussian misjudges the tails)."""

    id, name = 1, "ans"

    def __init__(self, bits: int) -> None:
        self.bits, self.qmax = bits, 2 ** (bits - 1) - 1

    def models(self, streams: Sequence[np.ndarray]) -> tuple[bytes, list[tuple[str, Any]]]:
        side, models = bytearray(), []
        for q in streams:
            rms = math.sqrt(float(np.mean(q.astype(np.float64) ** 2))) if q.size else 1.0
            std = from_bf16_bits(bf16_bits(max(rms, 0.25)))  # as stored
            counts = np.bincount(q.astype(np.int64) + self.qmax, minlength=2 * self.qmax + 1)
            histogram = b"".join(varint(int(c)) for c in counts)
            p = counts[counts > 0] / max(q.size, 1)
            entropy = -float((p * np.log2(p)).sum()) * q.size / 8  # bytes the histogram codes to
            x = np.arange(-self.qmax, self.qmax + 1)
            g = np.exp(-0.5 * (x / std) ** 2)
            g = np.maximum(g / g.sum(), 1e-12)
            gaussian = -float((counts * np.log2(g)).sum()) / 8
            if q.size and entropy + len(histogram) < gaussian + 2:
                side += b"\x01" + histogram
                models.append(("histogram", counts))
            else:
                side += b"\x00" + struct.pack("<H", bf16_bits(std))
                models.append(("gaussian", std))
        return bytes(side), models

    def _model(self, kind_and_value: tuple[str, Any]) -> Any:
        import constriction

        kind, value = kind_and_value
        if kind == "gaussian":
            return constriction.stream.model.QuantizedGaussian(-self.qmax, self.qmax, 0.0, value)
        return constriction.stream.model.Categorical(value / value.sum(), perfect=False)

    def encode(self, streams: Sequence[np.ndarray]) -> bytes:
        import constriction

        side, models = self.models(streams)
        coder = constriction.stream.stack.AnsCoder()
        for q, m in zip(reversed(streams), reversed(models)):  # a stack: the last encoded decodes first
            if q.size:
                coder.encode_reverse(q.astype(np.int32) + (self.qmax if m[0] == "histogram" else 0), self._model(m))
        return side + coder.get_compressed().astype("<u4").tobytes()

    def _read_models(self, data: bytes, count: int) -> tuple[list[tuple[str, Any]], int]:
        pos, models = 0, []
        for _ in range(count):
            require(pos < len(data), "ANS model section is short")
            kind, pos = data[pos], pos + 1
            if kind == 0:
                models.append(("gaussian", from_bf16_bits(struct.unpack_from("<H", data, pos)[0])))
                pos += 2
            else:
                require(kind == 1, "unknown ANS model")
                counts = []
                for _ in range(2 * self.qmax + 1):
                    c, pos = read_varint(data, pos)
                    counts.append(c)
                models.append(("histogram", np.array(counts, np.int64)))
        return models, pos

    def decode(self, data: bytes, sizes: Sequence[int]) -> list[np.ndarray]:
        import constriction

        models, used = self._read_models(data, len(sizes))
        words = data[used:]
        require(len(words) % 4 == 0, "ANS stream is not whole 32-bit words")
        coder = constriction.stream.stack.AnsCoder(np.frombuffer(words, "<u4").astype(np.uint32))
        out = []
        for n, m in zip(sizes, models):
            if not n:
                out.append(np.zeros(0, np.int8))
                continue
            out.append((coder.decode(self._model(m), n) - (self.qmax if m[0] == "histogram" else 0)).astype(np.int8))
        return out


def field_coders(bits: int | None) -> tuple[Coder, ...]:
    """The parameters' integer coders in store-byte order (``bits``: the stored width)."""
    return (Packed(bits or 8), TensorAns(bits or 8), ByteZstd())


CODERS = tuple(c.name for c in field_coders(8))  # "raw", "ans", "zstd": the store byte's ids in order


# ----------------------------------------------------------------------------- a residual's integers
class ZigzagZstd:
    """One stream of int64: zigzag codes (small magnitudes -> small codes) at the narrowest width
    that holds them (one byte names it), zstd (level 19, 9 above a million integers)."""

    id, name = 2, "zstd"

    def encode(self, streams: Sequence[np.ndarray]) -> bytes:
        import zstandard as zstd

        (k,) = streams
        zz = ((k << 1) ^ (k >> 63)).astype(np.uint64)
        top = int(zz.max()) if zz.size else 0
        width = next(w for w in (1, 2, 4, 8) if top < 256**w)
        level = 19 if k.size <= 1_000_000 else 9
        return bytes([width]) + zstd.ZstdCompressor(level=level).compress(zz.astype(f"<u{width}").tobytes())

    def decode(self, data: bytes, sizes: Sequence[int], wanted: np.ndarray | None = None) -> list[np.ndarray]:
        import zstandard as zstd

        (n,) = sizes  # ``wanted``: one zstd frame, decoded whole
        width = data[0]
        raw = zstd.ZstdDecompressor().decompress(data[1:], max_output_size=width * n)
        zz = np.frombuffer(raw, f"<u{width}")
        require(zz.size == n, "residual has the wrong number of samples")
        if wanted is None:
            return [_unzigzag(zz)]
        k = np.zeros(n, np.int64)  # calloc'd: the pages not written stay unmapped
        k[wanted] = _unzigzag(zz[wanted])
        return [k]


def _unzigzag(zz: np.ndarray) -> np.ndarray:
    """Zigzag codes (unsigned) -> int64, in place after one widening copy."""
    z = zz.astype(np.uint64)
    sign = (z & np.uint64(1)).view(np.int64)
    np.negative(sign, out=sign)
    z >>= np.uint64(1)
    out = z.view(np.int64)
    out ^= sign
    return out


class LaplaceAns:
    """One stream of int64 under a quantised Laplace fitted to it (its support and scale first);
    only where the support is two or more integers and below 2^20. Read only (files before
    :class:`BlockedLaplaceAns`)."""

    id, name = 1, "ans"

    def encode(self, streams: Sequence[np.ndarray]) -> bytes | None:
        (k,) = streams
        model = _laplace_of(k)
        if model is None:
            return None
        return model[0] + _ans(k, model[1]).tobytes()

    def decode(self, data: bytes, sizes: Sequence[int], wanted: np.ndarray | None = None) -> list[np.ndarray]:
        import constriction

        (n,) = sizes
        model = _laplace_model(*struct.unpack_from("<If", data, 0))
        coder = constriction.stream.stack.AnsCoder(np.frombuffer(data[8:], "<u4").astype(np.uint32))
        return [coder.decode(model, n).astype(np.int64)]


#: samples per independently decodable stretch of a residual's integers: a read of part of a grid
#: (the Zarr codec's partial decode, the xarray backend) decodes only the stretches it touches
RESIDUAL_BLOCK = 4096


class BlockedLaplaceAns:
    """A residual's int64 under one quantised Laplace fitted to them all (its support and scale
    first), coded in stretches of :data:`RESIDUAL_BLOCK` samples, each its own ANS stream (their
    lengths in words as varints, then the words), so that a part decodes alone; the applicability
    of :class:`LaplaceAns`."""

    id, name = 3, "ans-blocks"

    def encode(self, streams: Sequence[np.ndarray]) -> bytes | None:
        (k,) = streams
        model = _laplace_of(k)
        if model is None:
            return None
        words = [_ans(k[s : s + RESIDUAL_BLOCK], model[1]) for s in range(0, k.size, RESIDUAL_BLOCK)]
        head = model[0] + struct.pack("<I", RESIDUAL_BLOCK) + b"".join(varint(w.size) for w in words)
        return head + b"".join(w.tobytes() for w in words)

    def decode(self, data: bytes, sizes: Sequence[int], wanted: np.ndarray | None = None) -> list[np.ndarray]:
        """The integers; with ``wanted`` (flat indices) only the stretches holding them are
        decoded, the others left zero."""
        import constriction

        (n,) = sizes
        top, scale, block = struct.unpack_from("<IfI", data, 0)
        model, pos, lengths = _laplace_model(top, scale), 12, []
        for _ in range(-(-n // block)):
            size, pos = read_varint(data, pos)
            lengths.append(size)
        starts = pos + 4 * np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        require(int(starts[-1]) == len(data), "the residual's integers are truncated or damaged")
        k = np.zeros(n, np.int64)
        stretches = range(len(lengths)) if wanted is None else np.unique(np.asarray(wanted, np.int64) // block)
        for b in stretches:
            words = np.frombuffer(data[starts[b] : starts[b + 1]], "<u4").astype(np.uint32)
            m = min(block, n - b * block)
            k[b * block : b * block + m] = constriction.stream.stack.AnsCoder(words).decode(model, m)
        return [k]


def _laplace_of(k: np.ndarray) -> tuple[bytes, Any] | None:
    """The quantised Laplace fitted to ``k`` (its header bytes and the model); None where ANS
    does not apply (a single symbol, or a support of 2^20 or more)."""
    top = int(np.abs(k).max()) if k.size else 0
    if not 0 < top < (1 << 20):
        return None
    scale = float(np.float32(max(float(np.abs(k).mean()), 0.05)))
    return struct.pack("<If", top, scale), _laplace_model(top, scale)


def _laplace_model(top: int, scale: float) -> Any:
    import constriction

    return constriction.stream.model.QuantizedLaplace(-top, top, 0.0, scale)


def _ans(k: np.ndarray, model: Any) -> np.ndarray:
    import constriction

    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(k.astype(np.int32), model)
    return coder.get_compressed().astype("<u4")


RESIDUAL_CODERS: tuple[Coder, ...] = (ZigzagZstd(), BlockedLaplaceAns())  # zstd first: it wins a tie
#: every residual coder a file may name (LaplaceAns: files written before the blocked form)
RESIDUAL_DECODERS: tuple[Coder, ...] = (*RESIDUAL_CODERS, LaplaceAns())
