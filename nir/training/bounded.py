"""A field measured as it will be stored, without Lightning: the bounded residual built and checked
at every sample (:func:`bound_residual`), and the stored sizes (:func:`stored_sizes`). The
training module's final evaluation uses both; a bounded run with no network
(``bound.network=never``) uses them alone, with no Trainer and no Lightning import."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from nir.errors import require
from nir.reuse.field import Field


def stored_sizes(field: Field, signal: Any, store: Any) -> dict[str, Any]:
    """The compact file's ``bytes`` (``bytes_header`` of them not coded parameters,
    ``bytes_network`` beside a residual), ``compression_ratio`` (the signal's float32 bytes over
    them), ``bits_per_sample`` (per value: grid sample and channel) and ``bits_per_parameter``."""
    from nir.reuse.compact import compact_header_bytes

    values = math.prod(signal.shape) * signal.channels
    data = field.to_bytes(store.dtype, store.int8_scale, "nir", store.coder)
    nbytes = len(data)
    out: dict[str, Any] = {}
    if field.residual is not None:
        out["bytes_network"] = nbytes - len(field.residual)
    lossless = (
        None if field.residual is not None else lossless_bytes(signal, nbytes)
    )  # a bound: the residual is the coder
    if lossless is not None:
        out["lossless_bytes"] = lossless
    out.update(
        store_dtype=store.dtype,
        bytes=nbytes,
        bytes_header=compact_header_bytes(data, field),
        compression_ratio=4.0 * values / nbytes,
        bits_per_sample=8.0 * nbytes / values,
        bits_per_parameter=8.0 * nbytes / max(field.num_parameters(), 1),
    )
    return out


#: the data's float32 bytes up to which the run measures what a lossless coder gives it (zstd
#: level 19 up to :data:`LOSSLESS_19`, level 3 above: seconds, not minutes); a field below 1/64 of
#: the data's bytes is not compared (no lossless coder comes near)
LOSSLESS_LIMIT, LOSSLESS_19 = 256 << 20, 4 << 20


def lossless_bytes(signal: Any, field_bytes: int) -> int | None:
    """The zstd-coded size of the signal's values (float32, as read), where it could matter: the
    signal in memory, at most :data:`LOSSLESS_LIMIT` bytes, and the field above 1/64 of them
    (issue 45: a field larger than the losslessly coded data earns no bytes, and the run says so)."""
    import zstandard as zstd

    size = 4 * signal.numel * signal.channels
    if size > LOSSLESS_LIMIT or field_bytes * 64 < size:  # decided before reading anything
        return None
    coder = zstd.ZstdCompressor(level=19 if size <= LOSSLESS_19 else 3).compressobj()
    out, step = 0, max(1, (1 << 20) // signal.channels)  # in slices: a mapped file is never copied whole
    for start in range(0, signal.numel, step):
        out += len(coder.compress(signal.read(start, min(start + step, signal.numel)).float().numpy().tobytes()))
    return out + len(coder.flush())


def predictions_and_values(field: Field, signal: Any, chunk: int = 65536):
    """``(pred, y)`` numpy chunks over the signal's grid in flat order (rows x channels): the
    field's fp32 answer and the signal's values."""
    grid = signal.grid().to(field.bounds.device)
    with torch.no_grad():
        for start, stop, coords in grid.chunks(chunk):
            yield field(coords).float().cpu().numpy(), signal.read(start, stop).float().numpy()


def bound_residual(field: Field, signal: Any, bound: Any, metrics: Any = None) -> dict[str, Any]:
    """Build the residual that makes ``field`` meet ``bound`` on the signal's grid, attach it
    (``field.residual``), then measure the bounded answer independently: decode the residual's
    bytes, apply them to a fresh evaluation, and compare every sample with the signal.
    ``metrics``: a :class:`~nir.training.metrics.GridMetrics` to score that bounded answer with
    in the same pass (a field with no network: its metrics are the bounded answer's)."""
    from nir.codec import bound as bounds

    dtype = str(signal.meta.get("dtype", "float32"))
    dtype = dtype if dtype in bounds.DTYPES else "float32"
    n = signal.numel * signal.channels
    shape = tuple(signal.shape) + ((signal.channels,) if signal.channels > 1 else ())
    residual, _ = bounds.build_residual(predictions_and_values(field, signal), bound, dtype, n, shape)
    exceptions = int(residual.exceptions.size)
    field.residual = bounds.encode(residual)
    del residual  # one copy of the residual at a time (compressing a 256^3 array: docs/bounded.md)
    back = bounds.decode(field.residual, n)
    worst, start, below = 0.0, 0, 0
    for pred, y in predictions_and_values(field, signal):
        n = pred.size
        sub = back.part(start, start + n)
        rows = y
        y = y.reshape(-1).astype(np.float64)
        got = bounds.apply(pred, sub).astype(np.float64)
        if metrics is not None:  # what Field.sample answers on the grid: float32
            metrics.update(torch.from_numpy(got.astype(np.float32)).reshape(rows.shape), torch.from_numpy(rows))
        kept = ~np.isnan(y)  # a missing sample is NaN in the answer, and nowhere else
        require(np.array_equal(np.isnan(got), ~kept), "the bounded answer's NaN are not the signal's missing samples")
        err = np.abs(got[kept] - y[kept])
        scale = np.maximum(np.abs(y[kept]), bound.floor) if bound.kind == "rel" else 1.0
        worst = max(worst, float((err / scale).max(initial=0.0)))
        if bound.kind == "rel":  # non-zero values under a floor the user set above them: bounded absolutely
            a = np.abs(y[kept])
            below += int(((a > 0) & (a < bound.floor)).sum())
        start += n
    key = "max_rel_error" if bound.kind == "rel" else "max_abs_error"
    out = {"bound": bound.describe(), key: worst, "bytes_residual": len(field.residual),
           "residual_exceptions": exceptions}  # fmt: skip
    if bound.kind == "rel":
        out["below_floor_values"] = below
        if below:  # written into the file too, so `nir-compress --info` says it
            field.spec.setdefault("meta", {})["below_floor_values"] = below
    return out
