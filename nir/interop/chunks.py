"""nir as a chunk codec where scientists keep their data (docs/ecosystem.md): :class:`Nir`, a
``numcodecs`` codec (``numcodecs.get_codec({"id": "nir", "rel": 0.01})``, a Zarr format 2 compressor),
registered by the ``numcodecs.codecs`` entry point; :mod:`nir.interop.zarr3` wraps it as a native
Zarr 3 codec. A store written with them reads back wherever nir is installed.

``encode`` trains a field on the chunk (a ``nir.fit`` run with ``nir-compress``'s settings,
:func:`nir.run.settings.fit_overrides`, in a temporary directory: no TensorBoard, no checkpoints,
nothing printed; seeded, so the same chunk and settings give the same bytes on a machine) and
returns the ``.nir`` file's bytes; NaN is a missing value, NaN again after ``decode``. (The bytes
depend on torch's thread count too: another count may change the training's last bits, never
the guarantee.) Every
encoded chunk is decoded and checked against the input at every sample before it is returned
(the bound, and NaN exactly where the input had them); a chunk whose training raises is tried
once more, then stored losslessly (zstd, its own small header) with one warning naming it, as is
a chunk that misses its check or is missing everywhere (no warning for that one: nothing to fit).

The codec trains a field through the run layer, so it lives in :mod:`nir.interop`, above it;
``nir.interop.Nir`` and ``nir.interop.NirZarr`` load on first use, so ``import nir.interop`` stays
free of numcodecs, zarr and Lightning.
"""

from __future__ import annotations

import contextlib
import io
import math
import struct
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nir.errors import NirError, require
from nir.run.settings import COMPRESSION_KEYS, NETWORK_CHOICES

try:
    from numcodecs.abc import Codec
except ImportError as e:  # pragma: no cover - the sci extra brings numcodecs
    raise NirError(f"nir.interop.Nir needs numcodecs ({e}); pip install 'nir[sci]'") from None

#: the first bytes of a chunk stored losslessly (a chunk stored as a field starts with the compact
#: file's own magic, :data:`nir.codec.container.MAGIC`)
LOSSLESS = b"NIRz"
DTYPES = ("float16", "float32", "float64")
#: one training at a time per process: Hydra's composition and Lightning's trainer hold global
#: state, and Zarr encodes a write's chunks on several threads (a Dask worker runs one thread)
_TRAINING = threading.Lock()


@dataclass(frozen=True)
class Report:
    """What encoding one chunk gave: its bytes, the worst error (relative to each sample's
    allowance under a bound: <= 1 is the guarantee; the largest absolute error otherwise),
    measured by decoding; whether it went lossless and why."""

    nbytes: int
    worst: float
    lossless: str | None = None


def _number(name: str, value: Any, positive: bool = True) -> float | None:
    if value is None:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    require(ok and (value > 0 or not positive), f"nir codec: {name} must be a number > 0, got {value!r}")
    return float(value)


class Nir(Codec):
    """The nir numcodecs codec: ``Nir(rel=0.01)``, ``Nir(abs=0.5)``, ``Nir(ratio=100)`` (a byte
    budget without a bound; with a bound it sizes the network), ``floor=`` (``rel``'s floor),
    ``preset=`` (a ``model`` option), ``steps=`` (training steps), ``network=`` (under a bound:
    ``auto``, the default, ``always`` or ``never``: ``bound.network``)."""

    codec_id = "nir"

    def __init__(
        self, rel=None, abs=None, ratio=None, floor=None, preset=None, steps=None, network=None, **unknown
    ) -> None:
        require(
            not unknown,
            f"nir codec: unknown argument(s) {', '.join(sorted(unknown))}; it takes {', '.join(COMPRESSION_KEYS)}",
        )
        self.rel, self.abs = _number("rel", rel), _number("abs", abs)
        self.ratio, self.floor = _number("ratio", ratio), _number("floor", floor)
        require(self.rel is None or self.rel < 1, f"nir codec: rel must be < 1 (a fraction: 0.01 is 1 %), got {rel!r}")
        require(self.rel is None or self.abs is None, "nir codec: give rel or abs, not both")
        require(self.rel is not None or self.abs is not None or self.ratio is not None,
                "nir codec: give a bound (rel= or abs=) or a byte budget (ratio=)")  # fmt: skip
        require(self.floor is None or self.rel is not None, "nir codec: floor applies to rel only")
        require(
            preset is None or isinstance(preset, str), f"nir codec: preset must be a model option name, got {preset!r}"
        )
        ok_steps = steps is None or (isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1)
        require(ok_steps, f"nir codec: steps must be an integer >= 1, got {steps!r}")
        require(network is None or network in NETWORK_CHOICES,
                f"nir codec: network must be one of {', '.join(NETWORK_CHOICES)}, got {network!r}")  # fmt: skip
        require(network != "never" or self.rel is not None or self.abs is not None,
                "nir codec: network='never' needs a bound (rel= or abs=)")  # fmt: skip
        self.preset, self.steps, self.network = preset, steps, network

    def settings(self) -> dict[str, Any]:
        """The compression's settings (:data:`nir.run.settings.COMPRESSION_KEYS`), None for unset."""
        return {k: getattr(self, k) for k in COMPRESSION_KEYS}

    def get_config(self) -> dict[str, Any]:
        return {"id": self.codec_id, **{k: v for k, v in self.settings().items() if v is not None}}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Nir:
        return cls(**{k: v for k, v in config.items() if k != "id"})

    def __repr__(self) -> str:
        return f"Nir({', '.join(f'{k}={v!r}' for k, v in self.get_config().items() if k != 'id')})"

    def encode(self, buf: Any) -> bytes:
        return encode_chunk(np.asarray(buf), self)[0]

    def decode(self, buf: Any, out: Any = None) -> np.ndarray:
        arr = decode_chunk(bytes(memoryview(buf).cast("B")) if not isinstance(buf, bytes) else buf)
        if out is not None:
            target = np.asarray(out)
            require(target.size == arr.size, f"nir codec: the chunk holds {arr.size} values, the output {target.size}")
            np.copyto(target.reshape(-1), arr.reshape(-1), casting="unsafe")
            return out
        return arr


# ----------------------------------------------------------------------------- encode / decode
def encode_chunk(arr: np.ndarray, codec: Nir, name: str = "a chunk") -> tuple[bytes, Report]:
    """A chunk's bytes (a ``.nir`` field, or the lossless form) and its :class:`Report`; ``name``
    names it in the warning of a lossless fallback."""
    require(arr.dtype.name in DTYPES,
            f"nir codec: {name} has dtype {arr.dtype}; nir codes float16/32/64 (cast it, or store it with a lossless codec)")  # fmt: skip
    require(
        1 <= arr.ndim <= 4, f"nir codec: {name} has {arr.ndim} axes (shape {arr.shape}); nir fits 1-D to 4-D chunks"
    )
    arr = np.ascontiguousarray(arr)
    if np.isnan(arr).all():
        data = _lossless(arr)
        return data, Report(len(data), 0.0, "missing everywhere")
    require(
        np.isfinite(arr[~np.isnan(arr)]).all(),
        f"nir codec: {name} has Inf values; set them to NaN (missing) or clip them",
    )
    failure = ""
    for _ in range(2):  # a training that raises is tried once more
        try:
            data = _train(arr, codec)
            worst = _check(arr, data, codec)
            if worst is not None:
                return data, Report(len(data), worst)
            failure = "its decoded values missed the bound"
            break
        except Exception as e:  # anything a training can raise: nothing is lost, the chunk is kept exactly
            failure = f"training failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    warnings.warn(f"nir codec: {name} stored losslessly (zstd): {failure}", RuntimeWarning, stacklevel=2)
    data = _lossless(arr)
    return data, Report(len(data), 0.0, failure)


def _train(arr: np.ndarray, codec: Nir) -> bytes:
    """Train a field on ``arr`` with the codec's settings; the ``.nir`` bytes."""
    from nir.run.settings import fit_overrides

    overrides = tuple(fit_overrides(quiet=True, **codec.settings()))
    with _TRAINING, tempfile.TemporaryDirectory(prefix="nir-chunk-") as tmp, warnings.catch_warnings():
        from nir.run.run import prepare  # (its libraries' first imports add warning filters: kept inside)

        path = Path(tmp) / "chunk.npy"
        np.save(path, arr)
        with contextlib.redirect_stdout(io.StringIO()):  # composed and checked once per process, not per chunk
            prepare(overrides).fit(path, Path(tmp) / "run")
        data = (Path(tmp) / "run" / "field.nir").read_bytes()
    if codec.rel is None and codec.abs is None and np.isnan(arr).any():
        data = _with_missing(data, arr)  # no bound: the missing samples alone, so they are NaN again
    return data


def _with_missing(data: bytes, arr: np.ndarray) -> bytes:
    from nir.codec import bound
    from nir.reuse.compact import with_residual

    flat = arr.reshape(-1)
    none = bound.Bound("none", 0.0)
    residual, _ = bound.build_residual([(np.zeros(flat.size, np.float32), flat)], none, arr.dtype.name, flat.size)
    return with_residual(data, bound.encode(residual), "a chunk's field")


def _check(arr: np.ndarray, data: bytes, codec: Nir) -> float | None:
    """Decode ``data`` and compare with ``arr`` at every sample: the worst error (see
    :class:`Report`), or None where the bound is missed or NaN moved."""
    from nir.codec import bound

    back = decode_chunk(data).astype(np.float64).reshape(-1)
    y = arr.astype(np.float64).reshape(-1)
    if not np.array_equal(np.isnan(back), np.isnan(y)):
        return None
    kept = ~np.isnan(y)
    err = np.abs(back[kept] - y[kept])
    if codec.rel is None and codec.abs is None:
        return float(err.max(initial=0.0))
    field_bound = bound.decode(_residual_of(data), y.size).bound
    ratio = err / field_bound.allowed(y[kept])
    worst = float(ratio.max(initial=0.0))
    return worst if worst <= 1.0 else None


def _residual_of(data: bytes) -> bytes:
    from nir.codec import container

    c = container.read(data, "a chunk")
    require(c.residual is not None, "a bounded chunk's field has no residual")
    return c.residual


def decode_chunk(data: bytes) -> np.ndarray:
    """A chunk from its bytes, in its shape and dtype (NaN where it was missing)."""
    head = bytes(data[:4])
    if head == LOSSLESS:
        return _from_lossless(data)
    from nir.codec import container

    require(head == container.MAGIC, f"not a nir chunk (it starts with {head!r}): written by another codec, or damaged")
    from nir.reuse.compact import from_compact

    return from_compact(bytes(data), "a nir chunk").grid_array()


def _lossless(arr: np.ndarray) -> bytes:
    """``NIRz`` | dtype (1 byte) | ndim (1 byte) | shape (uint32 each) | zstd of the values (little-endian)."""
    import zstandard as zstd

    head = (
        LOSSLESS + struct.pack("<BB", DTYPES.index(arr.dtype.name), arr.ndim) + struct.pack(f"<{arr.ndim}I", *arr.shape)
    )
    return head + zstd.ZstdCompressor(level=9).compress(arr.astype(arr.dtype.newbyteorder("<")).tobytes())


def _from_lossless(data: bytes) -> np.ndarray:
    import zstandard as zstd

    try:
        dt, ndim = struct.unpack_from("<BB", data, 4)
        shape = struct.unpack_from(f"<{ndim}I", data, 6)
        dtype = np.dtype(DTYPES[dt]).newbyteorder("<")
        raw = zstd.ZstdDecompressor().decompress(
            data[6 + 4 * ndim :], max_output_size=math.prod(shape) * dtype.itemsize
        )
        return np.frombuffer(raw, dtype).reshape(shape).astype(dtype.newbyteorder("="))
    except Exception as e:
        raise NirError(f"a lossless nir chunk is damaged ({type(e).__name__}); write the chunk again") from None
