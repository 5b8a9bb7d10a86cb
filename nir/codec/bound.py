"""Error-bounded fields: a coded residual that makes the field meet a point-wise bound on its
training grid (``bound.rel`` / ``bound.abs``; docs/bounded.md).

The field carries the smooth structure; the residual carries the guarantee. With ``pred`` the
stored field's answer on the grid (after its own quantisation) and ``y`` the signal, both are
mapped by ``g`` and the difference is quantised on a grid of step ``2 * margin * D``:

- absolute bound ``delta``: ``g(y) = y``, ``D = delta``;
- relative bound ``eps`` (< 1) with floor ``f``: ``g(y) = y / f`` for ``|y| <= f`` and
  ``sign(y) (1 + log(|y| / f))`` above, so ``g' = 1 / max(|y|, f)``; ``D = log(1 + eps)``. If
  ``|g(y') - g(y)| <= D`` then ``|y' - y| <= eps * max(|y|, f)``: the relative bound above the
  floor and ``eps * f`` below it, zeros and signs included (docs/bounded.md has the proof).

``k = round((g(y) - g(pred)) / (2 margin D))`` is coded (ANS under a quantised Laplace, or zstd;
the smaller), and the decoder answers ``g^-1(g(pred) + 2 margin D k)``. ``margin = 0.99`` leaves
1 % of the bound for the rounding of another machine's float32 evaluation of the network (about
1e-7 relative); every sample is then checked at compression, in the output dtype, and any that
misses (none, in practice) is stored exactly as an exception. The check's result is reported.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nir.codec import context, ints
from nir.codec.ints import RESIDUAL_CODERS, RESIDUAL_DECODERS
from nir.errors import NirError, require

#: samples per slice of the compression's final check
CHECK = 1 << 20
#: the residual coder id of :mod:`nir.codec.context` (ids 1-3: the plain integer coders of
#: :mod:`nir.codec.ints`, what files before it hold, and what a residual too wide for it uses;
#: 4: the context coder under constriction's ANS, files written before issue 46)
CONTEXT = 5
CONTEXT_BEFORE = 4

MARGIN = 0.99
#: ``none``: no correction, only the missing samples (a field under a byte budget that keeps NaN
#: where its source had them: the chunk codec, :mod:`nir.interop.chunks`)
KINDS = ("abs", "rel", "none")
DTYPES = ("float32", "float64", "float16")


@dataclass(frozen=True)
class Bound:
    """A point-wise bound: ``kind`` ``abs`` (``value`` = delta), ``rel`` (``value`` = eps, with
    ``floor`` f > 0), or ``none`` (no bound: a residual that only marks missing samples)."""

    kind: str
    value: float
    floor: float = 0.0

    @property
    def step(self) -> float:
        """The half-width D of the quantisation cell in g-space."""
        return math.log1p(self.value) if self.kind == "rel" else self.value

    def g(self, y: np.ndarray) -> np.ndarray:
        """Linear below the floor, logarithmic above: ``g' = 1 / max(|y|, floor)``."""
        if self.kind != "rel":
            return y
        a = np.abs(y) / self.floor
        return np.sign(y) * np.where(a <= 1, a, 1 + np.log(np.maximum(a, 1)))

    def g_inv(self, z: np.ndarray) -> np.ndarray:
        if self.kind != "rel":
            return z
        a = np.abs(z)
        return np.sign(z) * self.floor * np.where(a <= 1, a, np.exp(np.maximum(a, 1) - 1))

    def allowed(self, y: np.ndarray) -> np.ndarray:
        """The largest error each sample may have."""
        if self.kind == "none":
            return np.full(y.shape, np.inf)
        if self.kind == "abs":
            return np.full(y.shape, self.value)
        return self.value * np.maximum(np.abs(y), self.floor)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "value": self.value}
        if self.kind == "rel":
            out["floor"] = self.floor
        return out


def bound_of(node: Any, default_floor: float | None) -> Bound | None:
    """The bound from a config node or dict with ``rel``, ``abs`` and ``floor`` (None: no bound);
    every wrong value is one line. ``default_floor``: a relative bound's floor when ``floor`` is
    not given (the run passes the smallest non-zero magnitude of the data, so the relative bound
    holds for every non-zero value: :func:`relative_floor`)."""
    if not node:
        return None
    rel, ab, floor = node.get("rel"), node.get("abs"), node.get("floor")
    if rel is None and ab is None:
        require(floor is None, "bound.floor is set but neither bound.rel nor bound.abs")
        return None
    require(rel is None or ab is None, "set bound.rel or bound.abs, not both")
    value = rel if rel is not None else ab
    name = "bound.rel" if rel is not None else "bound.abs"
    require(_positive(value), f"{name} must be a number > 0, got {value!r}")
    require(ab is not None or value < 1, f"bound.rel must be below 1 (a relative error under 100 %), got {value!r}")
    if rel is None:
        return Bound("abs", float(ab))
    if floor is None:
        require(default_floor is not None and default_floor > 0,
                "bound.rel needs a floor: set bound.floor (values below it get the error eps * floor)")  # fmt: skip
        floor = default_floor
    require(_positive(floor), f"bound.floor must be a number > 0, got {floor!r}")
    return Bound("rel", float(rel), float(floor))


def relative_floor(smallest_nonzero: float, dtype: str = "float32") -> float:
    """A relative bound's default floor: the data's smallest non-zero magnitude, so that
    ``|y' - y| <= eps |y|`` holds for every non-zero value (SZ3's point-wise relative mode);
    zeros stay within ``eps * floor`` of zero. Data that is all zeros: the dtype's smallest
    normal number."""
    tiny = float(np.finfo(dtype if dtype in DTYPES else "float32").tiny)
    s = float(smallest_nonzero)
    return s if math.isfinite(s) and s > 0 else tiny


def _positive(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


# ----------------------------------------------------------------------------- the residual
def _cell(bound: Bound) -> float:
    return 2.0 * MARGIN * bound.step


def reconstruct(pred: np.ndarray, k: np.ndarray, bound: Bound) -> np.ndarray:
    """``g^-1(g(pred) + cell * k)`` in float64 (``pred``: the network's float32 answer)."""
    return answer(pred, _cell(bound) * k, bound)


def answer(pred: np.ndarray, offset: np.ndarray, bound: Bound, on_map: np.ndarray | None = None) -> np.ndarray:
    """``g^-1(g(pred) + offset)`` in float64; where ``on_map`` is set the offset is the map
    itself: ``g^-1(offset)``, no network."""
    if on_map is not None and on_map.all():  # no network anywhere: the offset is the map itself
        base = np.zeros(offset.shape)
    else:
        base = pred.astype(np.float64)
        base = base if bound.kind != "rel" else bound.g(base)
        if on_map is not None:
            base = np.where(on_map, 0.0, base)
    z = base + offset
    return z if bound.kind != "rel" else bound.g_inv(z)


def quantize(pred: np.ndarray, y: np.ndarray, bound: Bound) -> np.ndarray:
    """The residual's integers for a chunk (int64)."""
    p, t = pred.astype(np.float64), y.astype(np.float64)
    if bound.kind == "none":
        return np.zeros(t.shape, np.int64)
    return np.rint((bound.g(t) - bound.g(p)) / _cell(bound)).astype(np.int64)


@dataclass
class Residual:
    """A residual as stored: the bound, the output dtype, the integers, exceptions (flat indices
    and their exact values) where the quantised value missed the bound, and the missing samples
    (flat indices where the signal was NaN: NaN again in the bounded answer).

    Coded with context (:mod:`nir.codec.context`, every bounded residual since issue 37 whose
    integers stay below its limit): ``k``
    the coded integers, ``offset`` the decoded offsets in the map (float64 per sample, what the
    answer adds to ``g(pred)``), ``on_map`` per sample where the offset is the map itself (a
    block coded without the network; None: nowhere) and ``coded`` the context coder's bytes.
    Otherwise (files before it): ``offset`` None, the answer adds ``cell * k``."""

    bound: Bound
    dtype: str
    k: np.ndarray
    exceptions: np.ndarray
    values: np.ndarray
    missing: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    offset: np.ndarray | None = None
    on_map: np.ndarray | None = None
    coded: bytes | None = None

    @property
    def empty(self) -> bool:
        """No correction and no exceptions (the missing samples are coded apart): the network's
        answer is the bounded one."""
        if self.exceptions.size:
            return False
        if self.offset is not None:
            return not self.offset.any() and (self.on_map is None or not self.on_map.any())
        return not self.k.any()

    def part(self, start: int, stop: int) -> Residual:
        """The residual of flat samples ``start:stop`` (indices from ``start``)."""

        def inside(where: np.ndarray) -> np.ndarray:
            return (where >= start) & (where < stop)

        cut = lambda a: None if a is None else a[start:stop]  # noqa: E731
        return Residual(self.bound, self.dtype, self.k[start:stop] if self.k.size else self.k,
                        self.exceptions[inside(self.exceptions)] - start, self.values[inside(self.exceptions)],
                        self.missing[inside(self.missing)] - start, cut(self.offset), cut(self.on_map))  # fmt: skip


def build_residual(
    chunks, bound: Bound, dtype: str = "float32", n: int | None = None, shape: tuple[int, ...] | None = None
) -> tuple[Residual, float]:
    """The residual over ``chunks`` (an iterable of ``(pred, y)`` float arrays in grid order) and
    the largest error of the bounded reconstruction, measured in the output ``dtype`` (relative
    to each sample's allowance, so <= 1 is the guarantee). A NaN in ``y`` is a missing sample:
    no integer, NaN in the answer. ``n``: the total sample count, when known. ``shape``: the
    grid's (row-major, a channel axis last; None: one axis): the context coder predicts each
    sample from its decoded neighbours on it, and each block of it codes the network's residual
    or the signal's own map, whichever is cheaper (:mod:`nir.codec.context`)."""
    require(dtype in DTYPES, f"bounded output dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    pred, y = _gather(chunks, n)
    start = y.size
    shape = tuple(shape) if shape is not None else (start,)
    require(math.prod(shape) == start, f"the grid {shape} holds {math.prod(shape)} samples, the residual {start}")
    nan = np.isnan(y)
    missing = np.flatnonzero(nan)
    y[nan] = 0.0
    offset = on_map = coded = None
    k = np.zeros(start, np.int64)
    if bound.kind != "none" and start:
        cell = _cell(bound)
        own = bound.g(y)
        net = own - (bound.g(pred.astype(np.float64)) if bound.kind == "rel" else pred.astype(np.float64))
        done = context.code(net, own, shape, cell)
        del net, own
        if done is not None:
            coded, offset, k, modes = done
            on_map = context.map_mask(modes, shape)
            on_map = on_map if on_map.any() else None
        else:  # too wide for the context coder: the plain integers
            k = quantize(pred, y, bound)
    bad, worst = _check(pred, y, nan, bound, dtype, k, offset, on_map)
    if offset is None:
        k[bad | nan] = 0
    idx = np.flatnonzero(bad)
    y_out = y[idx].astype(dtype).astype(np.float64)
    return Residual(bound, dtype, k, idx, y_out, missing, offset, on_map, coded), worst


def _gather(chunks, n: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The network's answers (float32) and the signal (float64) of ``chunks`` as two flat arrays,
    written into place when the count ``n`` is known (no join's copy); infinite values: one line."""
    preds, ys, start = [], [], 0
    whole = (np.empty(n, np.float32), np.empty(n, np.float64)) if n is not None else None
    for pred, y in chunks:
        y = np.asarray(y, np.float64).reshape(-1)
        nan = np.isnan(y)
        require(np.isfinite(y[~nan]).all(), "a bound needs finite values: the signal has infinite samples")
        pred = np.asarray(pred, np.float32).reshape(-1)
        if whole is not None:
            require(start + y.size <= n, f"the residual covers more than {n} samples")
            whole[0][start : start + y.size], whole[1][start : start + y.size] = pred, y
        else:
            preds.append(pred)
            ys.append(y)
        start += y.size
    require(n is None or start == n, f"the residual covers {start} samples, expected {n}")
    if whole is not None:
        return whole
    return (np.concatenate(preds) if preds else np.zeros(0, np.float32)), (np.concatenate(ys) if ys else np.zeros(0))


def _check(pred, y, nan, bound: Bound, dtype: str, k, offset, on_map) -> tuple[np.ndarray, float]:
    """Every sample's bounded answer against the signal in the output ``dtype``, in slices of
    :data:`CHECK` (a 256^3 grid's float64 temporaries are 134 MB each): which miss the bound, and
    the largest error relative to its allowance among the others."""
    bad, worst = np.zeros(y.size, bool), 0.0
    for lo in range(0, y.size, CHECK):
        sl = slice(lo, lo + CHECK)
        if offset is not None:
            back = answer(pred[sl], offset[sl], bound, None if on_map is None else on_map[sl])
        else:
            back = reconstruct(pred[sl], k[sl], bound) if bound.kind != "none" else pred[sl].astype(np.float64)
        y_out = y[sl].astype(dtype).astype(np.float64)  # the value the output dtype can hold
        err = np.abs(back.astype(dtype).astype(np.float64) - y_out)
        allowed = bound.allowed(y_out)
        bad[sl] = ~(err <= allowed) & ~nan[sl]
        ok = ~bad[sl] & ~nan[sl]
        if bound.kind != "none":
            worst = max(worst, float((err[ok] / allowed[ok]).max(initial=0.0)))
    return bad, worst


def apply(pred: np.ndarray, residual: Residual, index: np.ndarray | None = None) -> np.ndarray:
    """The bounded values: the network's ``pred`` (flat, grid order) corrected by the residual,
    in the residual's output dtype (NaN at the missing samples). ``index``: the flat grid indices
    ``pred`` answers (a selection, as the xarray backend reads it); None: the whole grid."""
    pred = np.asarray(pred).reshape(-1)
    pick = (lambda a: a) if index is None else (lambda a: a[index])
    if residual.offset is not None:
        on_map = None if residual.on_map is None else pick(residual.on_map)
        out = answer(pred, pick(residual.offset), residual.bound, on_map).astype(residual.dtype)
    else:
        out = reconstruct(pred, pick(residual.k), residual.bound).astype(residual.dtype)
    for where, value in ((residual.exceptions, residual.values), (residual.missing, np.nan)):
        if not where.size:
            continue
        if index is None:
            out[where] = value if np.isscalar(value) else value.astype(residual.dtype)
            continue
        at = np.minimum(np.searchsorted(where, index), where.size - 1)  # ``where`` is sorted
        hit = where[at] == index
        out[hit] = value if np.isscalar(value) else value[at[hit]].astype(residual.dtype)
    return out


# ----------------------------------------------------------------------------- coding
def code_ints(k: np.ndarray, only: int | None = None) -> bytes:
    """The integers behind one byte naming their coder (:data:`nir.codec.ints.RESIDUAL_CODERS`:
    ANS under a quantised Laplace fitted to them, or zstd of their zigzag codes; the smaller);
    ``only``: that coder's id, where it applies. (A residual too wide for the context coder.)"""
    asked = [c for c in RESIDUAL_CODERS if c.id == only]
    coder, data = ints.smallest(asked, [k]) or ints.smallest(RESIDUAL_CODERS, [k])
    return bytes([coder.id]) + data


def decode_ints(data: bytes, n: int, wanted: np.ndarray | None = None) -> np.ndarray:
    """The ``n`` integers; ``wanted`` (flat indices): only they need to be right (a blocked coder
    decodes only the stretches holding them)."""
    (k,) = ints.coder_of(RESIDUAL_DECODERS, data[0], "residual").decode(data[1:], [n], wanted)
    return k


def encode(residual: Residual) -> bytes:
    """The residual as bytes: kind, dtype, value, floor, flags (bit 0: integers follow, bit 1: the
    missing samples follow), [the missing samples' mask], [exceptions, integers]."""
    b = residual.bound
    head = struct.pack("<BBdd", KINDS.index(b.kind), DTYPES.index(residual.dtype), b.value, b.floor)
    flags = (0 if residual.empty else 1) | (2 if residual.missing.size else 0)
    out = head + bytes([flags])
    if residual.missing.size:
        mask = _mask_bytes(residual.missing, residual.k.size)
        out += ints.varint(len(mask)) + mask
    if residual.empty:
        return out
    coded = bytes([CONTEXT]) + residual.coded if residual.coded is not None else code_ints(residual.k)
    exc = residual.exceptions
    gaps = np.diff(np.concatenate([[-1], exc])).astype(np.uint64) if exc.size else np.zeros(0, np.uint64)
    body = (
        struct.pack("<QI", residual.k.size, exc.size)
        + b"".join(ints.varint(int(g)) for g in gaps)
        + residual.values.astype("<f8").tobytes()
    )
    return out + body + coded


def _mask_bytes(missing: np.ndarray, n: int) -> bytes:
    """The missing samples as one bit each, zstd-coded (a land mask or a chunk's padding codes
    to a few bytes)."""
    import zstandard as zstd

    mask = np.zeros(n, bool)
    mask[missing] = True
    return zstd.ZstdCompressor(level=19).compress(np.packbits(mask).tobytes())


def _mask_of(data: bytes, n: int) -> np.ndarray:
    import zstandard as zstd

    bits = np.frombuffer(zstd.ZstdDecompressor().decompress(data, max_output_size=(n + 7) // 8), np.uint8)
    require(bits.size == (n + 7) // 8, f"the missing samples' mask covers {8 * bits.size} samples, the grid has {n}")
    return np.flatnonzero(np.unpackbits(bits, count=n))


def decode(data: bytes, n: int, wanted: np.ndarray | None = None) -> Residual:
    """The residual of ``n`` samples from :func:`encode`'s bytes; with ``wanted`` (flat indices)
    its integers are right at those samples only (what :func:`apply` with ``index`` reads)."""
    try:
        kind, dt, value, floor = struct.unpack_from("<BBdd", data, 0)
        bound, flags, pos = Bound(KINDS[kind], value, floor), data[18], 19
        require(flags < 4, f"unknown residual flags {flags}")
        missing = np.zeros(0, np.int64)
        if flags & 2:
            size, pos = ints.read_varint(data, pos)
            missing, pos = _mask_of(data[pos : pos + size], n), pos + size
        if not flags & 1:
            return Residual(bound, DTYPES[dt], np.zeros(n, np.int64), np.zeros(0, np.int64), np.zeros(0), missing)
        count, nexc = struct.unpack_from("<QI", data, pos)
        require(count == n, f"residual covers {count} samples, the grid has {n}")
        pos, gaps = pos + 12, []
        for _ in range(nexc):
            gap, pos = ints.read_varint(data, pos)
            gaps.append(gap)
        exc = np.cumsum(np.array(gaps, np.int64)) - 1 if nexc else np.zeros(0, np.int64)
        values = np.frombuffer(data[pos : pos + 8 * nexc], "<f8").copy()
        pos += 8 * nexc
        if data[pos] in (CONTEXT, CONTEXT_BEFORE):
            try:
                offset, on_map = context.decode(data[pos + 1 :], n, legacy=data[pos] == CONTEXT_BEFORE)
            except NirError as e:  # a varint's "truncated header" says too little here
                raise NirError(
                    str(e) if "residual" in str(e) else f"the residual is damaged ({e}); compress again"
                ) from None
            return Residual(bound, DTYPES[dt], np.zeros(0, np.int64), exc, values, missing, offset,
                            on_map if on_map.any() else None)  # fmt: skip
        k = decode_ints(data[pos:], n, wanted)
    except NirError:
        raise
    except Exception as e:
        raise NirError(f"the residual is corrupt ({type(e).__name__}); compress again") from None
    return Residual(bound, DTYPES[dt], k, exc, values, missing)
