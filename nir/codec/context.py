"""A bounded residual coded with context (issue 37; docs/bounded.md).

The grid is cut into blocks of about 4,096 samples (16^3 in 3-D, 64^2 in 2-D, 4,096 in 1-D).
Each block codes one of two things, by its mode:

- the network's residual in the map, ``r = g(y) - g(p)``, as it is (:data:`RAW`: the integers
  are ``round(r / cell)``) or after the interpolation predictor (:data:`NET`); the decoder
  answers ``g^-1(g(p) + offset)``;
- the signal's own map ``g(y)`` after the predictor, without the network (:data:`MAP`); the
  decoder answers ``g^-1(offset)``.

**The predictor** is SZ3's interpolation run as a closed loop over the whole grid: the first
sample is the anchor; then for strides ``s`` from the largest power of two below the longest
axis down to 1, and for each axis in turn, the samples at odd multiples of ``s`` along it (at
multiples of ``s`` on the axes before, of ``2s`` on those after) are predicted from the
*decoded* ones at ``i +- s`` and ``i +- 3s`` that lie in the grid and in a block of the same kind
(cubic, quadratic, linear or a copy, by which are there; each step cubic or linear, whichever
codes smaller), and decode to ``prediction + cell * q`` with ``q = round((value - prediction) /
cell)``: within half a cell of the value in every mode, so the bound holds. A step at level
``l`` (``s = 2^l``) may use a tighter cell, ``cell / min(alpha^l, beta)`` (level-wise bounds:
:func:`level_cell`, chosen by :func:`tune_levels`). Compiled: :mod:`nir.codec.loop`. Float64 additions,
multiplications and divisions by powers of two only, and comparisons for the contexts: every
machine decodes the same bits. A :data:`RAW` block codes ``round(value / cell)``.

**The context** of each coded integer comes from decoded samples only: the spread of its
neighbours (predicted) or their magnitudes (raw) in log2 buckets of a quarter cell, the
integers coded at its inner neighbours, the mode, and the finest stride or not. Each context
(or, where few integers share it, its group) has a model chosen by its coded size: a geometric
law over binned zigzag values, a histogram of the bins or of the values, or its one value. One
rANS stream (:mod:`nir.codec.rans`; streams before issue 46 used constriction's ANS and still
decode): a read of part of the grid decodes all of it.

:func:`code` chooses the modes (:func:`choose`'s estimate, or every block on the map, whichever
codes smaller) and codes; :func:`decode` answers the offsets. Nothing here knows a network: the
values are arrays on a grid.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from nir.codec import loop, rans
from nir.codec.ints import read_varint, varint

# block modes (RAW, NET, MAP): the network's residual as it is, after the predictor, the
# signal's map after it; BUCKETS: log2 buckets of a neighbour activity; Q_BUCKETS: buckets of
# the coded integers' magnitudes at the inner neighbours (0, 1-2, 3 or more); TOP: the largest
# magnitude the coder takes (beyond it, the plain coders of nir.codec.ints)
from nir.codec.loop import BUCKETS, MAP, NET, Q_BUCKETS, RAW, TOP
from nir.errors import require

MODES = (RAW, NET, MAP)
#: the level-wise bounds (alpha, beta) the encoder tries (a step at level l quantises on
#: ``cell / min(alpha^l, beta)``): measured on sources3d / lognormal3d 128^3, (1.5, 2) takes
#: 7-17 % off at 10 % and (1, 1) is best at 1 % (docs/bounded.md); chosen per field on a crop
LEVEL_CHOICES = ((1.0, 1.0), (1.25, 2.0), (1.5, 2.0))
#: grids of at least this many samples choose their level-wise bounds on the central crop of half
#: of each axis (an eighth of a volume: the choice matched the whole grid's on every field tried)
CROP_FROM = 1 << 15
#: the encoder's choice of cubic or linear interpolation looks at every SAMPLE-th line of a step
SAMPLE = 4
#: samples per block (about)
BLOCK_SAMPLES = 4096
#: a block codes the network's residual only where its estimate is below (1 - LEAVE) x the map's
LEAVE = 0.1
#: contexts: the anchor, then (mode, finest stride or not, activity bucket, neighbour bucket)
N_CONTEXTS = 1 + len(MODES) * 2 * BUCKETS * Q_BUCKETS
#: a (mode, stride, activity) group with fewer integers than this shares one model over its
#: neighbour buckets (a model's bytes would cost more than the split saves)
SPLIT = 4096


def block_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """The block's side per axis: about :data:`BLOCK_SAMPLES` samples, split evenly over the
    axes longer than one sample (an axis of length 1 gets 1)."""
    long = [n for n in shape if n > 1]
    side = max(2, round(BLOCK_SAMPLES ** (1 / max(len(long), 1))))
    return tuple(min(side, n) if n > 1 else 1 for n in shape)


def block_count(shape: Sequence[int]) -> int:
    return math.prod(-(-n // b) for n, b in zip(shape, block_shape(shape)))


def per_sample(modes: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Each sample's block mode (the grid's shape; blocks in C order over the grid of blocks)."""
    block = block_shape(shape)
    out = modes.reshape([-(-n // b) for n, b in zip(shape, block)])
    for axis, b in enumerate(block):
        out = np.repeat(out, b, axis=axis)
    return out[tuple(slice(0, n) for n in shape)]


def per_block_sum(x: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """The sum of ``x`` (the grid's shape) over each block, in block order."""
    block = block_shape(shape)
    nb = [-(-n // b) for n, b in zip(shape, block)]
    padded = np.zeros([c * b for c, b in zip(nb, block)], x.dtype)
    padded[tuple(slice(0, n) for n in shape)] = x
    split = padded.reshape([v for c, b in zip(nb, block) for v in (c, b)])
    return split.sum(axis=tuple(range(1, 2 * len(shape), 2))).reshape(-1)


def map_mask(modes: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Per sample (flat), whether its block codes the signal's map (no network)."""
    return (per_sample(modes, shape) == MAP).reshape(-1)


# ----------------------------------------------------------------------------- the predictor
def _flat(a: np.ndarray, dtype) -> np.ndarray:
    return np.ascontiguousarray(a, dtype).reshape(-1)


def level_cell(cell: float, level: int, levels: tuple[float, float]) -> float:
    """The quantisation cell of a step at ``level`` (0: the finest stride) under level-wise
    bounds ``(alpha, beta)``: ``cell / min(alpha^level, beta)`` (SZ3's and QoZ's rule: the
    coarse samples, which predict all the others, a tighter bound). The power by repeated
    multiplication (exact for the alphas used), so every machine has the same cells."""
    alpha, beta = levels
    tighter = 1.0
    for _ in range(level):
        tighter = min(tighter * alpha, beta)
    return cell / tighter


def _walk(shape: tuple[int, ...], cell: float, levels: tuple[float, float]):
    """Each step of the loop: ``(index, level bit, bases, stride, length, stride s, targets,
    the step's cell)``."""
    for i, (level, s, axis) in enumerate(loop.steps(shape)):
        bases = loop.lines(shape, s, axis)
        n = shape[axis]
        size = bases.size * ((n - s + 2 * s - 1) // (2 * s))
        yield i, int(level > 0), bases, loop.axis_stride(shape, axis), n, s, size, level_cell(cell, level, levels)


def quantise(
    values: np.ndarray, mode: np.ndarray, cell: float, grid: bool = False, levels: tuple[float, float] = (1.0, 1.0)
) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray, list[bool], np.ndarray | None]:
    """The encoder's side of the closed loop (compiled: :mod:`nir.codec.loop`): the anchor first
    (predicted by 0), then each step's samples predicted from the decoded ones, cubic or linear
    by whichever codes the step smaller (``sum log2(1 + 2|q|)``), and decoded as ``prediction +
    cell * q`` with ``q = round((value - prediction) / cell)``. Returns the integers to code with
    their contexts, per step in decoding order (flat), the decoded values (the grid's shape,
    float64: what the decoder will answer, bit for bit), each step's interpolation (True: cubic)
    and, with ``grid``, every integer at its sample (the grid's shape; else None). ``levels``:
    the level-wise bounds (:func:`level_cell`)."""
    shape = tuple(mode.shape)
    v, m = _flat(values, np.float64), _flat(mode, np.uint8)
    x, coded = np.zeros(v.size, np.float64), np.zeros(v.size, np.uint8)
    first = int(np.clip(np.rint(v[0] / cell), -TOP, TOP))
    x[0], coded[0] = cell * first, min(abs(first), 3)
    grid_q = np.zeros(v.size if grid else 0, np.int32)
    if grid:
        grid_q[0] = first
    steps, cubic = [(np.array([first], np.int32), np.zeros(1, np.uint8))], []
    for _, bit, bases, stride, n, s, size, c in _walk(shape, cell, levels):
        # cubic or linear: measured on every SAMPLE-th line (the choice is the encoder's own)
        part = bases[:: SAMPLE if bases.size >= 16 * SAMPLE else 1]
        costs = []
        for kind in (True, False):
            pred, ctx = np.empty(size // bases.size * part.size, np.float64), np.empty(0, np.uint8)
            loop.contexts(x, m, coded, part, stride, n, s, kind, 0.25 * c, bit, pred, ctx)
            costs.append(loop.cost(v, part, stride, n, s, c, pred))
        cubic.append(bool(costs[0] <= costs[1]))
        pred, ctx = np.empty(size, np.float64), np.empty(size, np.uint8)
        loop.contexts(x, m, coded, bases, stride, n, s, cubic[-1], 0.25 * c, bit, pred, ctx)
        q = np.empty(size, np.int32)
        loop.quantise(x, v, coded, bases, stride, n, s, c, pred, q, grid_q)
        steps.append((q, ctx))
    return steps, x.reshape(shape), cubic, grid_q.reshape(shape) if grid else None


def _decode_loop(mode: np.ndarray, cell: float, cubic: list[bool], first: int, tables: tuple, words: np.ndarray,
                 levels: tuple[float, float]) -> np.ndarray:  # fmt: skip
    """The decoder's side, compiled: the anchor's integer ``first``, then each step's
    predictions and contexts (in parallel) and its integers (read from ``words`` under
    ``tables``, :mod:`nir.codec.rans`). Returns the decoded values (the grid's shape, float64)."""
    shape = tuple(mode.shape)
    m = _flat(mode, np.uint8)
    x, coded = np.zeros(m.size, np.float64), np.zeros(m.size, np.uint8)
    state, pos = rans.start_state(words)
    x[0], coded[0] = cell * first, min(abs(first), 3)
    for i, bit, bases, stride, n, s, size, c in _walk(shape, cell, levels):
        require(i < len(cubic), "the residual's interpolation choices are damaged")
        pred, ctx = np.empty(size, np.float64), np.empty(size, np.uint8)
        loop.contexts(x, m, coded, bases, stride, n, s, cubic[i], 0.25 * c, bit, pred, ctx)
        state, pos, bad = loop.decode(x, coded, bases, stride, n, s, c, pred, ctx, state, words, pos, tables)
        require(not bad, "the residual's integers are truncated or damaged")
    require(state == rans.LOW and pos == words.size, "the residual's integers are damaged")
    return x.reshape(shape)


def _decode_loop_legacy(mode: np.ndarray, cell: float, cubic: list[bool], read) -> np.ndarray:
    """The decoder's side of a stream before issue 46: ``read(contexts)`` gives each step's
    integers (the anchor's context is 0). Returns the decoded values (the grid's shape, float64)."""
    shape = tuple(mode.shape)
    m = _flat(mode, np.uint8)
    x, coded = np.zeros(m.size, np.float64), np.zeros(m.size, np.uint8)
    first = int(read(np.zeros(1, np.uint8))[0])
    x[0], coded[0] = cell * first, min(abs(first), 3)
    for i, bit, bases, stride, n, s, size, _ in _walk(shape, cell, (1.0, 1.0)):
        require(i < len(cubic), "the residual's interpolation choices are damaged")
        pred, ctx = np.empty(size, np.float64), np.empty(size, np.uint8)
        loop.contexts(x, m, coded, bases, stride, n, s, cubic[i], 0.25 * cell, bit, pred, ctx)
        loop.recover(x, coded, bases, stride, n, s, cell, pred, read(ctx))
    return x.reshape(shape)


# ----------------------------------------------------------------------------- choosing modes
def choose(net: np.ndarray, own: np.ndarray | None, shape: Sequence[int], cell: float,
           levels: tuple[float, float] = (1.0, 1.0)) -> tuple[np.ndarray, dict]:  # fmt: skip
    """Each block's mode (:data:`MODES`, blocks in C order) by an estimate of its coded size:
    the bits of its integers under that mode's histogram, each mode's integers found as if the
    whole grid had that mode, the network's modes charged :data:`LEAVE` of the map's cost;
    ``net`` the network's residual in the map, ``own`` the signal's map (None: no map to code).
    Also returns the closed loop's pass of the whole grid under the predicted mode the estimate
    ran last (``{mode: quantise's answer}``): :func:`encode` reuses it where every block has
    that mode."""
    shape = tuple(shape)
    costs, kept = {}, {}
    # no network (nir.fields.Zero behind the identity map): the network's residual is the map
    # itself, and its predicted mode codes the same integers as the map's: one pass, not two
    same = own is not None and np.array_equal(net, own)
    for x, mode in ((net, RAW), (net, NET), (own, MAP)):
        if x is None or (same and mode == NET):
            continue
        if mode == RAW:  # every prediction is 0: no loop
            q = np.clip(np.rint(x / cell), -TOP, TOP).astype(np.int32).reshape(shape)
        else:
            *done, q = quantise(x.reshape(shape), np.full(shape, mode, np.uint8), cell, True, levels)
            kept = {mode: done}  # one pass kept: a 256^3 grid's is 200 MB
        low = int(q.min())
        counts = np.bincount((q - low).reshape(-1))
        bits = (-np.log2(np.maximum(counts, 1) / q.size)).astype(np.float32)  # an integer's cost, by value
        costs[mode] = per_block_sum(bits[q - low], shape)
        del q
    if same:
        costs[NET] = costs[MAP].copy()
    costs = np.stack([costs[m] for m in MODES if m in costs])
    if own is not None:  # a block leaves the map only for a clear gain: the edges between kinds cost too
        costs[:-1] += LEAVE * costs[-1]
    return np.argmin(costs, axis=0).astype(np.uint8), kept


# ----------------------------------------------------------------------------- models
def _bits(counts: np.ndarray, freq: np.ndarray) -> float:
    """Bits of symbols with ``counts`` under frequencies ``freq`` (of :data:`rans.M`)."""
    used = counts > 0
    return float(-(counts[used] * np.log2(freq[used] / rans.M)).sum())


def _fit(r: np.ndarray) -> bytes:
    """The model of one context's integers as bytes, whichever codes smaller (:mod:`nir.codec.rans`):
    ``0`` + ratio (uint16) + bins (a geometric law of the zigzag values, binned), ``3`` + bins +
    their counts (a histogram of the bins), ``1`` + lowest (zigzag) + width + the counts (a
    histogram of the values), ``2`` + the value (zigzag) where there is only one (no bits)."""
    lo, hi = int(r.min()), int(r.max())
    if lo == hi:
        return b"\x02" + varint(_zigzag(lo))  # one value: nothing to code
    bins = rans.bins_of(r)
    counts = np.bincount(bins, minlength=int(bins.max()) + 1)
    nbins = counts.size
    raw_bits = float((counts * rans.RAW_BITS[:nbins]).sum())
    mean = float(rans.zigzag(r).mean())
    best = None
    for factor in (0.7, 0.85, 1.0, 1.2, 1.4):
        ratio = min(mean * factor / (1 + mean * factor), 65535 / 65536)
        r16 = int(min(max(round(ratio * 65536), 1), 65535))
        bits = _bits(counts, rans.normalise(rans.geometric(r16, nbins)))
        if best is None or bits < best[0]:
            best = (bits, r16)
    options = [((best[0] + raw_bits) / 8 + 4, b"\x00" + struct.pack("<H", best[1]) + varint(nbins))]
    table = b"\x03" + varint(nbins) + b"".join(varint(int(c)) for c in counts)
    options.append(((_bits(counts, rans.normalise(counts.astype(np.int64))) + raw_bits) / 8 + 0.6 * len(table), table))
    if hi - lo < rans.M:
        values = np.bincount(r - lo, minlength=hi - lo + 1)
        table = b"\x01" + varint(_zigzag(lo)) + varint(hi - lo + 1) + b"".join(varint(int(c)) for c in values)
        options.append((_bits(values, rans.normalise(values.astype(np.int64))) / 8 + 0.6 * len(table), table))
    return min(options, key=lambda o: o[0])[1]


def _zigzag(n: int) -> int:
    return 2 * n if n >= 0 else -2 * n - 1


def _unzigzag(z: int) -> int:
    return -(z >> 1) - 1 if z & 1 else z >> 1


def _tables(data: bytes, used: list[tuple[int, int]]) -> tuple[np.ndarray, ...]:
    """The coder's tables from the models' bytes and each used context's model: ``(model of each
    context, kind, lowest, size, offset, frequency, start, symbol of each slot)``, int32 (what
    :func:`nir.codec.loop.decode` reads). A damaged model is one line."""
    damaged = "the residual's context model is damaged"
    kinds, los, freqs, pos = [], [], [], 0
    while pos < len(data):
        kind, pos = data[pos], pos + 1
        lo, binned = 0, kind in (0, 3)
        if kind == 2:
            z, pos = read_varint(data, pos)
            lo, f = _unzigzag(z), np.array([rans.M], np.int64)
        elif kind == 0:
            require(pos + 2 <= len(data), damaged)
            (r16,) = struct.unpack_from("<H", data, pos)
            nbins, pos = read_varint(data, pos + 2)
            require(1 <= r16 <= 65535 and 1 <= nbins <= rans.BINS, damaged)
            f = rans.normalise(rans.geometric(r16, nbins))
        else:
            require(kind in (1, 3), damaged)
            if kind == 1:
                z, pos = read_varint(data, pos)
                lo = _unzigzag(z)
            width, pos = read_varint(data, pos)
            require(1 <= width <= (rans.BINS if binned else rans.M), damaged)
            c = np.empty(width, np.int64)
            for i in range(width):
                c[i], pos = read_varint(data, pos)
            require(0 < int(c.sum()) < 1 << 40, damaged)
            f = rans.normalise(c)
        require(abs(lo) < TOP, damaged)
        kinds.append(rans.BINNED if binned else rans.SHIFTED)
        los.append(lo)
        freqs.append(f)
    model_of = np.full(N_CONTEXTS, -1, np.int32)
    for ctx, i in used:
        require(ctx < N_CONTEXTS and i < len(kinds), damaged)
        model_of[ctx] = i
    sizes = np.array([f.size for f in freqs], np.int32)
    offs = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int32)
    freq = np.concatenate(freqs).astype(np.int32) if freqs else np.zeros(0, np.int32)
    start = (
        np.concatenate([np.concatenate([[0], np.cumsum(f)[:-1]]) for f in freqs]).astype(np.int32) if freqs else freq
    )
    sym = rans.slots(freq, start, offs, sizes)
    return model_of, np.array(kinds, np.int32), np.array(los, np.int32), sizes, offs, freq, start, sym


# ----------------------------------------------------------------------------- the coder before issue 46
# (constriction's ANS, one call per context and step: the streams of residual coder id 4 decode here)
class _Model:
    def __init__(self, data: bytes, pos: int) -> None:
        import constriction

        kind, pos = data[pos], pos + 1
        self.model = None
        if kind == 2:
            z, pos = read_varint(data, pos)
            self.offset = -(z >> 1) - 1 if z & 1 else z >> 1
        elif kind == 0:
            self.top, pos = read_varint(data, pos)
            (self.scale,) = struct.unpack_from("<f", data, pos)
            require(self.top < TOP and self.scale > 0, "the residual's context model is damaged")
            self.model, self.offset = (
                constriction.stream.model.QuantizedLaplace(-self.top, self.top, 0.0, self.scale),
                0,
            )
            pos += 4
        else:
            require(kind == 1, "the residual's context model is damaged")
            z, pos = read_varint(data, pos)
            width, pos = read_varint(data, pos)
            require(width <= 4096, "the residual's context model is damaged")
            counts = []
            for _ in range(width):
                c, pos = read_varint(data, pos)
                counts.append(c)
            counts = np.array(counts, np.float64)
            require(counts.sum() > 0, "the residual's context model is damaged")
            self.offset = -(z >> 1) - 1 if z & 1 else z >> 1
            self.model = constriction.stream.model.Categorical(counts / counts.sum(), perfect=False)
        self.end = pos


# ----------------------------------------------------------------------------- the coder
def _models(q: np.ndarray, ctx: np.ndarray) -> tuple[bytes, dict[int, int]]:
    """The models of the integers ``q`` under their contexts ``ctx`` (:func:`_fit`, in order) and
    each used context's model: a context of a (mode, stride, activity) group with fewer than
    :data:`SPLIT` integers shares the group's model."""
    order = np.argsort(ctx, kind="stable")
    edges = np.searchsorted(ctx[order], np.arange(N_CONTEXTS + 1))
    counts = np.diff(edges)
    group_total = np.bincount(np.maximum(np.arange(N_CONTEXTS) - 1, 0) // Q_BUCKETS, weights=counts)
    keys: dict[Any, list[int]] = {}  # a model's key -> its contexts
    for c in np.flatnonzero(counts):
        group = (int(c) - 1) // Q_BUCKETS
        keys.setdefault(("group", group) if group_total[group] < SPLIT else ("context", int(c)), []).append(int(c))
    side, index = bytearray(), {}
    for i, members in enumerate(keys.values()):
        side += _fit(np.concatenate([q[order[edges[c] : edges[c + 1]]] for c in members]))
        for c in members:
            index[c] = i
    return bytes(side), index


def encode(net: np.ndarray, own: np.ndarray | None, modes: np.ndarray, shape: Sequence[int], cell: float,
           passed: list | None = None, levels: tuple[float, float] = (1.0, 1.0)
           ) -> tuple[bytes, np.ndarray, np.ndarray] | None:  # fmt: skip
    """The residual coded with context: ``net`` (flat) the network's residual in the map,
    ``own`` the signal's map (None: every block is the network's), ``modes`` per block, ``cell``
    the quantisation step. Returns the bytes, the decoded offsets (flat: what :func:`decode`
    will answer, to add to ``g(pred)`` where the map mask is False and to 0 where it is
    True) and the coded integers; None where an integer reaches :data:`TOP`. ``passed``: the
    closed loop's answer for these modes already (:func:`choose`'s pass of a grid of one mode)."""
    import zstandard as zstd

    shape = tuple(int(n) for n in shape)
    require(
        math.prod(shape) == net.size and modes.size == block_count(shape), "the context coder needs the grid's shape"
    )
    if passed is None:
        mode = per_sample(modes, shape)
        if own is None or not (modes == MAP).any():
            values = net.reshape(shape)
        elif (modes == MAP).all():  # the common case: no copy
            values = own.reshape(shape)
        else:
            values = np.where(mode == MAP, own.reshape(shape), net.reshape(shape))
        passed = quantise(values, mode, cell, False, levels)[:3]
    steps, decoded, cubic = passed
    all_q = np.concatenate([q for q, _ in steps])
    if all_q.size and int(np.abs(all_q).max()) >= TOP:
        return None
    all_c = np.concatenate([c for _, c in steps[1:]])  # the anchor (context 0) is in the header
    rest = all_q[1:]
    side, index = _models(rest, all_c)
    used = sorted(index)
    head = bytearray(struct.pack("<d", cell) + varint(len(shape)))
    for n in shape:
        head += varint(n)
    head += (
        struct.pack("<ff", *levels)
        + varint(_zigzag(int(all_q[0])))
        + varint(len(used))
        + b"".join(varint(c) + varint(index[c]) for c in used)
    )
    for part in (modes.astype(np.uint8).tobytes(), bytes(side), bytes(cubic)):
        packed = zstd.ZstdCompressor(level=19).compress(part)
        head += varint(len(packed)) + packed
    model_of, kind, lo, size, offs, freq, start, _ = _tables(bytes(side), [(c, index[c]) for c in used])
    words, status = rans.encode(rest, all_c, model_of, kind, lo, size, offs, freq, start)
    require(status == 0, "the context coder's models do not cover its integers (a bug: please report it)")
    return bytes(head) + words.astype("<u2").tobytes(), decoded.reshape(-1), all_q


def code(net: np.ndarray, own: np.ndarray | None, shape: Sequence[int], cell: float,
         levels: tuple[float, float] | None = None) -> tuple[bytes, np.ndarray, np.ndarray, np.ndarray] | None:  # fmt: skip
    """The smallest coding the encoder finds: the modes :func:`choose` estimates, and every block
    on the map (the estimate misjudges the edges between kinds and the contexts; measured on
    sources3d 128^3 at 10 %, its modes coded to 79,166 B against 71,781 for the map alone).
    Returns :func:`encode`'s bytes, offsets and integers, and the modes; None where an integer
    reaches :data:`TOP`."""
    levels = tune_levels(net if own is None else own, shape, cell) if levels is None else levels
    chosen, kept = choose(net, own, shape, cell, levels)
    options = [chosen]
    if own is not None and (chosen != MAP).any():
        options.append(np.full(block_count(shape), MAP, np.uint8))
    best = None
    for modes in options:
        uniform = int(modes[0]) if (modes == modes[0]).all() else None
        done = encode(net, own, modes, shape, cell, kept.get(uniform), levels)
        if done is not None and (best is None or len(done[0]) < len(best[0])):
            best = (*done, modes)
    return best


def tune_levels(values: np.ndarray, shape: Sequence[int], cell: float) -> tuple[float, float]:
    """The level-wise bounds of :data:`LEVEL_CHOICES` that code ``values`` (flat, the grid's
    map) smallest on the map alone: on the central crop of half of each axis where the grid has
    :data:`CROP_FROM` samples or more, else on the whole grid (QoZ tunes on samples too)."""
    shape = tuple(int(n) for n in shape)
    grid = values.reshape(shape)
    if grid.size >= CROP_FROM:
        grid = np.ascontiguousarray(grid[tuple(slice(n // 4, n // 4 + max(n // 2, 1)) for n in shape)])
    mode = np.full(grid.shape, MAP, np.uint8)
    sizes = []
    for levels in LEVEL_CHOICES:
        steps = quantise(grid, mode, cell, False, levels)[0]
        sizes.append(_estimate(np.concatenate([q for q, _ in steps[1:]]), np.concatenate([c for _, c in steps[1:]])))
    return LEVEL_CHOICES[int(np.argmin(sizes))]


def _estimate(q: np.ndarray, ctx: np.ndarray) -> float:
    """The bits of integers ``q`` under their contexts ``ctx``: each context's empirical entropy of
    the binned zigzag values (:mod:`nir.codec.rans`) plus the raw bits; the models' own bytes and
    the coder's rounding left out (what :func:`tune_levels` compares: measured to rank as the
    coding does, at a fifth of its time)."""
    bins = rans.bins_of(q)
    counts = np.bincount(ctx.astype(np.int64) * rans.BINS + bins, minlength=N_CONTEXTS * rans.BINS)
    counts = counts.reshape(N_CONTEXTS, rans.BINS).astype(np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    used = counts > 0
    return float(-(counts[used] * np.log2((counts / np.maximum(totals, 1))[used])).sum() + rans.RAW_BITS[bins].sum())


def decode(data: bytes, n: int, legacy: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The decoded offsets (flat, float64) and the map mask (per sample: True where the
    offset is the map itself, no network) from :func:`encode`'s bytes; a grid of ``n`` samples.
    ``legacy``: a stream written before issue 46 (constriction's ANS; residual coder id 4)."""
    import zstandard as zstd

    (cell,) = struct.unpack_from("<d", data, 0)
    require(math.isfinite(cell) and cell > 0, "the residual's cell is damaged")
    ndim, pos = read_varint(data, 8)
    require(1 <= ndim <= 8, "the residual's grid is damaged")
    shape = []
    for _ in range(ndim):
        m, pos = read_varint(data, pos)
        shape.append(m)
    require(math.prod(shape) == n, f"the residual's grid holds {math.prod(shape)} samples, the field has {n}")
    levels = (1.0, 1.0)
    if not legacy:  # the level-wise bounds and the anchor's integer
        levels, pos = struct.unpack_from("<ff", data, pos), pos + 8
        require(all(math.isfinite(v) and 1 <= v <= 64 for v in levels), "the residual's level-wise bounds are damaged")
        first, pos = read_varint(data, pos)
        require(first < 2 * TOP, "the residual's anchor is damaged")
    count, pos = read_varint(data, pos)
    used = []
    for _ in range(count):
        c, pos = read_varint(data, pos)
        i, pos = read_varint(data, pos)
        used.append((c, i))
    parts = []
    for limit in (block_count(shape), 1 << 26, 8 * 64):
        size, pos = read_varint(data, pos)
        parts.append(zstd.ZstdDecompressor().decompress(data[pos : pos + size], max_output_size=limit))
        pos += size
    modes = np.frombuffer(parts[0], np.uint8)
    require(modes.size == block_count(shape) and (modes <= MAP).all(), "the residual's block modes are damaged")
    mode = per_sample(modes, shape)
    cubic = [bool(b) for b in parts[2]]
    if legacy:
        x = _decode_legacy(data[pos:], parts[1], used, mode, cell, cubic)
    else:
        require((len(data) - pos) % 2 == 0 and len(data) - pos >= 4, "the residual's integers are truncated or damaged")
        words = np.frombuffer(data[pos:], "<u2")
        x = _decode_loop(mode, cell, cubic, _unzigzag(first), _tables(parts[1], used), words, levels)
    return x.reshape(-1), (mode == MAP).reshape(-1)


def _decode_legacy(body: bytes, side: bytes, used, mode: np.ndarray, cell: float, cubic: list[bool]) -> np.ndarray:
    import constriction

    table, at = [], 0
    while at < len(side):
        table.append(_Model(side, at))
        at = table[-1].end
    models = {}
    for ctx, i in used:
        require(ctx < N_CONTEXTS and i < len(table), "the residual's context model is damaged")
        models[ctx] = table[i]
    require(len(body) % 4 == 0, "the residual's integers are truncated or damaged")
    coder = constriction.stream.stack.AnsCoder(np.frombuffer(body, "<u4").astype(np.uint32))
    return _decode_loop_legacy(mode, cell, cubic, _reader(coder, models))


def _reader(coder: Any, models: dict[int, _Model]):
    def step(ctx: np.ndarray) -> np.ndarray:
        out = np.zeros(ctx.size, np.int64)
        o = np.argsort(ctx, kind="stable")
        cs = ctx[o]
        cuts = np.flatnonzero(np.diff(cs)) + 1
        for lo, hi in zip(np.concatenate([[0], cuts]), np.concatenate([cuts, [cs.size]])):
            require(int(cs[lo]) in models, "the residual's context model is damaged")
            m = models[int(cs[lo])]
            out[o[lo:hi]] = (
                m.offset if m.model is None else coder.decode(m.model, int(hi - lo)).astype(np.int64) + m.offset
            )
        return out

    return step
