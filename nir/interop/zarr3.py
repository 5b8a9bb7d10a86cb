"""nir's chunk codec as a native Zarr 3 codec, :class:`NirZarr` (``name: nir``; registered by
the ``zarr.codecs`` entry point). Zarr 3 does not wrap numcodecs codecs by itself and its docs ask
third-party codecs for a class of their own. nir's codec turns an array chunk into bytes (it
needs the chunk's shape and dtype), which is what Zarr calls a serializer (an array-to-bytes
codec): ``serializer=NirZarr(rel=0.01), compressors=None`` (docs/ecosystem.md; the bytes of a
field are already entropy coded, so no compressor follows it).

As a serializer it decodes partially: a read of part of a chunk (an 8^3 window of a 64^3 chunk)
evaluates the chunk's field at the selected samples only (:meth:`~nir.reuse.field.Field.grid_values`),
bounded there as everywhere on the chunk's grid, where SZ3 or ZFP decode the whole chunk. Needs
zarr >= 3.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from nir.codec.container import MAGIC
from nir.errors import NirError
from nir.interop.chunks import Nir, decode_chunk

try:
    from zarr.abc.codec import ArrayBytesCodec, ArrayBytesCodecPartialDecodeMixin
except ImportError as e:  # pragma: no cover - the sci extra brings zarr 3 (Python >= 3.11)
    raise NirError(f"nir.interop.NirZarr needs zarr >= 3 ({e}); pip install 'nir[sci]'") from None


@dataclass(frozen=True)
class NirZarr(ArrayBytesCodec, ArrayBytesCodecPartialDecodeMixin):
    """:class:`~nir.interop.chunks.Nir` as a Zarr 3 serializer: ``NirZarr(rel=0.01)``; metadata
    ``{"name": "nir", "configuration": {...}}``."""

    is_fixed_size = False
    configuration: tuple = ()

    def __init__(self, **configuration: Any) -> None:
        config = Nir(**configuration).get_config()
        object.__setattr__(self, "configuration", tuple((k, v) for k, v in config.items() if k != "id"))

    @property
    def codec(self) -> Nir:
        return Nir(**dict(self.configuration))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NirZarr:
        from zarr.core.common import parse_named_configuration

        _, configuration = parse_named_configuration(data, "nir", require_configuration=False)
        return cls(**(configuration or {}))

    def to_dict(self) -> dict[str, Any]:
        return {"name": "nir", "configuration": dict(self.configuration)}

    def _encode_sync(self, chunk_array: Any, chunk_spec: Any) -> Any:
        data = self.codec.encode(np.asarray(chunk_array.as_numpy_array()))
        return chunk_spec.prototype.buffer.from_bytes(data)

    def _decode_sync(self, chunk_bytes: Any, chunk_spec: Any) -> Any:
        arr = decode_chunk(chunk_bytes.to_bytes()).reshape(chunk_spec.shape)
        return chunk_spec.prototype.nd_buffer.from_numpy_array(arr.astype(_dtype(chunk_spec), copy=False))

    def _decode_part(self, data: bytes, selection: Any, chunk_spec: Any) -> Any:
        """The samples ``selection`` picks from the chunk (any numpy index: Zarr's basic,
        orthogonal and coordinate selections), evaluated at those samples only."""
        from nir.reuse.compact import from_compact

        flat = np.arange(math.prod(chunk_spec.shape)).reshape(chunk_spec.shape)[selection]
        if data[:4] != MAGIC:
            part = decode_chunk(data).reshape(-1)[flat]
        else:
            part = from_compact(data, "a nir chunk").grid_values(np.reshape(flat, -1))[:, 0].reshape(np.shape(flat))
        return chunk_spec.prototype.nd_buffer.from_numpy_array(np.asarray(part).astype(_dtype(chunk_spec), copy=False))

    async def _encode_single(self, chunk_array: Any, chunk_spec: Any) -> Any:
        return await asyncio.to_thread(self._encode_sync, chunk_array, chunk_spec)

    async def _decode_single(self, chunk_bytes: Any, chunk_spec: Any) -> Any:
        return await asyncio.to_thread(self._decode_sync, chunk_bytes, chunk_spec)

    async def _decode_partial_single(self, byte_getter: Any, selection: Any, chunk_spec: Any) -> Any:
        data = await byte_getter.get(prototype=chunk_spec.prototype)
        if data is None:
            return None  # a chunk never written: Zarr fills it
        return await asyncio.to_thread(self._decode_part, data.to_bytes(), selection, chunk_spec)

    def compute_encoded_size(self, input_byte_length: int, chunk_spec: Any) -> int:
        raise NotImplementedError  # variable: a field's bytes


def _dtype(chunk_spec: Any) -> np.dtype:
    return np.dtype(chunk_spec.dtype.to_native_dtype())
