"""Signals: samples on a regular grid, whatever the dimension.

A :class:`Signal` is ``values[*shape, channels]`` plus the box ``bounds`` the grid covers. An
image is a 2-D grid with 1 or 3 channels, a spectrum a 1-D grid, a density a 3-D grid: every
part of nir downstream of the readers (:mod:`nir.data.readers`) sees only this type.

Coordinate convention (used everywhere: training, validation, ``Field.sample``):
    coordinate axis k  <->  array axis k (for an image: axis 0 = rows (y, downwards), axis 1 = columns (x)),
    sample i on an axis of n samples covering [lo, hi] sits at its cell centre
        x_i = lo + (i + 0.5) * (hi - lo) / n.
Flat indices are row-major (C order), as ``numpy.ravel_multi_index``.
"""

from __future__ import annotations

import math
import mmap
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nir.errors import require

FIT_SAMPLE = 1 << 22  # samples that data statistics are fitted on (see Signal.fit_sample)


@dataclass
class Signal:
    """Samples on a regular grid.

    Attributes:
        values: float32 tensor ``(*shape, channels)``.
        bounds: one ``(lo, hi)`` pair per grid axis.
        name: short label used in logs.
        meta: plain-value metadata (source path, value range, generator parameters ...).
        long_tailed: whether the values span decades and are judged per magnitude decade
            (per-decade metrics, log-space figures). Readers of scientific fields set it;
            images and any new signal type default to ``False``, so nothing is binned by
            magnitude unless its reader says so.
        is_image: whether the signal is a picture (SSIM, image figures, ``Field.sample_image``):
            :func:`read_image` sets it, with ``meta["value_range"]`` and ``meta["bit_depth"]``.
        source: the memory-mapped ``.npy`` the values are a view of (streamed, pages released).
        lazy: a source of flat rows not in memory (a NetCDF/HDF5/Zarr variable read chunk by
            chunk: :class:`nir.data.readers.datasets.VariableRows`); ``values`` is then ``None`` and every
            read goes through :meth:`read` / :meth:`gather`.
    """

    values: Tensor | None
    bounds: tuple[tuple[float, float], ...]
    name: str = "signal"
    meta: dict = field(default_factory=dict)
    long_tailed: bool = False
    is_image: bool = False
    source: MappedFile | None = field(default=None, repr=False, compare=False)
    lazy: Any = field(default=None, repr=False, compare=False)
    _summary: dict | None = field(default=None, init=False, repr=False, compare=False)
    _smallest_nonzero: float | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        require(len(self.full_shape) >= 2, f"signal {self.name!r}: values need a grid axis and a channel axis")
        require(
            len(self.bounds) == self.ndim,
            f"signal {self.name!r}: bounds has {len(self.bounds)} axes, the grid has {self.ndim}",
        )
        for lo, hi in self.bounds:
            require(hi > lo, f"signal {self.name!r}: every bound needs lo < hi, got {self.bounds}")

    @property
    def full_shape(self) -> tuple[int, ...]:
        """``(*shape, channels)``."""
        return tuple(self.lazy.shape) if self.values is None else tuple(self.values.shape)

    @property
    def shape(self) -> tuple[int, ...]:
        """Grid shape, without the channel axis."""
        return self.full_shape[:-1]

    @property
    def ndim(self) -> int:
        return len(self.full_shape) - 1

    @property
    def channels(self) -> int:
        return int(self.full_shape[-1])

    @property
    def streamable(self) -> bool:
        """Whether the values live in a file (memory-mapped or lazy), so training may stream them."""
        return self.source is not None or self.lazy is not None

    @property
    def numel(self) -> int:
        """Number of grid samples (not counting channels)."""
        return int(np.prod(self.shape))

    @property
    def positions(self) -> tuple[Any, ...] | None:
        """Per axis the sample positions of a non-uniform coordinate (``meta["dims"][k]
        ["positions"]``, set by the dataset reader), else ``None``; ``None`` for a uniform grid."""
        return positions_of(self.meta)

    def grid(self) -> Grid:
        """The signal's sample grid: cell centres of ``bounds``, or the file's positions."""
        return Grid(self.shape, self.bounds, self.positions)

    def __getstate__(self) -> dict:
        """A memory-mapped signal pickles as its file, not its values (a worker maps it again)."""
        state = dict(self.__dict__)
        if self.source is not None:
            state["values"] = tuple(self.values.shape)
        return state

    def __setstate__(self, state: dict) -> None:
        if isinstance(state["values"], tuple):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                state["values"] = torch.from_numpy(state["source"].array.reshape(state["values"]))
        self.__dict__.update(state)

    def flat(self) -> Tensor:
        """Values as ``(numel, channels)``, a view (a lazy signal is read whole)."""
        if self.values is None:
            return self.read(0, self.numel)
        return self.values.reshape(self.numel, self.channels)

    # -- bounded-memory access: every whole-signal pass goes through these ------------------
    @property
    def nbytes(self) -> int:
        return self.numel * self.channels * (4 if self.values is None else self.values.element_size())

    def read(self, start: int, stop: int) -> Tensor:
        """Flat rows ``[start, stop)`` as ``(stop - start, channels)``. For a memory-mapped file
        a copy, and the mapping's pages are released, so resident memory stays bounded; for a
        lazy signal the rows read from the file."""
        if self.lazy is not None:
            return torch.from_numpy(self.lazy.rows(start, min(stop, self.numel)))
        rows = self.flat()[start:stop]
        if self.source is None:
            return rows
        out = rows.clone()
        c = self.channels
        self.source.release(start * c, stop * c)
        return out

    def gather(self, idx: Tensor) -> Tensor:
        """Rows at flat indices ``idx`` (any order), as :meth:`read` does for ranges."""
        if self.lazy is not None:  # read each block of rows that holds an index, once
            idx = idx.cpu().long()
            out = torch.empty(idx.numel(), self.channels)
            block = idx // (1 << 16)
            for b in torch.unique(block).tolist():
                at = (block == b).nonzero()[:, 0]
                lo = b << 16
                rows = self.read(lo, min(self.numel, lo + (1 << 16)))
                out[at] = rows[idx[at] - lo]
            return out
        rows = self.flat()[idx.cpu()]  # advanced indexing copies
        if self.source is not None:
            self.source.release()
        return rows

    def chunks(self, rows: int = 1 << 20):
        """``(start, stop, values)`` over the whole signal in flat order, ``rows`` at a time."""
        for start in range(0, self.numel, rows):
            stop = min(start + rows, self.numel)
            yield start, stop, self.read(start, stop)

    def summary(self) -> dict[str, Tensor]:
        """Exact per-channel ``min``/``max``, whole-signal ``absmin``/``absmax`` and the number of
        ``missing`` samples (cached), in one pass of reductions over views of the values.

        A sample with NaN in any channel is **missing** (masked: a NaN in a ``.npy``, a
        ``_FillValue`` or NaN in a NetCDF/HDF5/Zarr variable): it is left out of every statistic
        here, never drawn for training and never scored (:func:`valid_rows`). Inf shows in
        min/max, so a finite summary means finite values. Chunks without NaN are reduced as
        views, with no chunk-sized copies (which fragment the heap)."""
        if self._summary is None:
            flat = self.flat() if self.values is not None else None
            lo, hi, alo, missing = [], [], [], 0
            for start in range(0, self.numel, 1 << 20):
                view = flat[start : start + (1 << 20)] if flat is not None else self.read(start, start + (1 << 20))
                valid = valid_rows(view)
                if not bool(valid.all()):
                    missing += int((~valid).sum())
                    view = view[valid]
                if view.shape[0]:
                    lo.append(view.amin(0))
                    hi.append(view.amax(0))
                    alo.append(torch.linalg.vector_norm(view, ord=float("-inf")))  # min |v|, abs fused in the reduction
                if self.source is not None:
                    self.source.release(start * self.channels, (start + (1 << 20)) * self.channels)
            if not lo:  # every sample missing: NaN statistics (readers refuse such a signal)
                nan = torch.full((self.channels,), float("nan"))
                lo, hi, alo = [nan], [nan], [nan[0]]
            mn, mx = torch.stack(lo).amin(0), torch.stack(hi).amax(0)
            self._summary = {
                "min": mn,
                "max": mx,
                "absmin": torch.stack(alo).min(),
                "absmax": torch.maximum(mn.abs(), mx.abs()).max(),
                "missing": torch.tensor(missing),
            }
        return self._summary

    def smallest_nonzero(self) -> float:
        """The smallest non-zero magnitude of the valid samples (inf when every value is zero):
        a relative bound's default floor. Its own pass, only when asked (a bounded run): the
        masked copy of each chunk it needs would fragment the heap of every run if
        :meth:`summary` made it (measured: a streamed 216 MB volume's peak grew by 180 MB)."""
        if self._smallest_nonzero is None:
            best = math.inf
            for start in range(0, self.numel, 1 << 18):
                view = (
                    self.flat()[start : start + (1 << 18)]
                    if self.values is not None
                    else self.read(start, start + (1 << 18))
                )
                a = view[valid_rows(view)].abs()
                a = a[a > 0]
                if a.numel():
                    best = min(best, float(a.min()))
                if self.source is not None:
                    self.source.release(start * self.channels, (start + (1 << 18)) * self.channels)
            self._smallest_nonzero = best
        return self._smallest_nonzero

    @property
    def missing(self) -> int:
        """Samples with NaN in any channel: masked (see :meth:`summary`)."""
        return int(self.summary()["missing"])

    def count_infinite(self) -> int:
        """Valid samples' values that are +-Inf (0 without a pass when the summary is finite)."""
        st = self.summary()
        if bool(torch.isfinite(st["min"]).all() and torch.isfinite(st["max"]).all()):
            return 0
        return sum(int(torch.isinf(v).sum()) for _, _, v in self.chunks())

    def fit_sample(self, n: int = FIT_SAMPLE, blocks: int = 256, seed: int = 0) -> Tensor:
        """Values to fit data statistics on (transform and loss floors, metric floor):
        ``(m, channels)``. The whole signal (a view) up to ``n`` samples; beyond, ``blocks``
        contiguous runs at seeded random places, ``n`` samples in all, plus one row of the
        exact per-channel minima and one of the maxima, so ranges stay exact. Missing samples
        are left out."""
        if self.numel <= n:
            flat = self.flat() if self.values is not None else self.read(0, self.numel)
            return flat if self.missing == 0 else flat[valid_rows(flat)]
        run = max(1, n // blocks)
        rng = np.random.default_rng(seed)
        starts = np.sort(rng.choice(self.numel - run + 1, size=blocks, replace=False))
        parts = [self.read(int(s), int(s) + run) for s in starts]
        if self.missing:
            parts = [p[valid_rows(p)] for p in parts]
        st = self.summary()
        return torch.cat(parts + [st["min"][None], st["max"][None]])


def valid_rows(values: Tensor) -> Tensor:
    """Which rows of ``(n, channels)`` values are not missing (no NaN in any channel): the one
    rule every part of nir masks with (statistics, training draws, metrics)."""
    return ~torch.isnan(values).any(-1)


class MappedFile:
    """A read-only memory map of a ``.npy`` file's data, owned so that nir can release its
    resident pages after each chunk (``madvise(MADV_DONTNEED)``: the pages stay in the page
    cache, the process stops holding them)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            shape, fortran, dtype = (
                np.lib.format.read_array_header_1_0(f) if version == (1, 0) else np.lib.format.read_array_header_2_0(f)
            )
            self.offset = f.tell()
            self.shape, self.fortran, self.dtype = tuple(shape), bool(fortran), np.dtype(dtype)
            count = int(np.prod(self.shape))
            self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if count else None
        self.array = (
            np.frombuffer(self._mm, self.dtype, count, self.offset).reshape(
                self.shape, order="F" if self.fortran else "C"
            )
            if count
            else np.empty(self.shape, self.dtype)
        )

    def __getstate__(self) -> dict:  # pickled (ddp_spawn workers, multiprocessing) as its path
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])

    @property
    def streamable(self) -> bool:
        """float32 in C order: flat rows are contiguous float32 in the file."""
        return self.dtype == np.dtype("<f4") and not self.fortran

    def release(self, start: int = 0, stop: int | None = None) -> None:
        """Drop the resident pages of flat elements ``[start, stop)`` (default: all)."""
        if self._mm is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        size = self.dtype.itemsize
        lo = self.offset + start * size
        hi = len(self._mm) if stop is None else min(len(self._mm), self.offset + stop * size)
        lo -= lo % mmap.PAGESIZE
        if hi > lo:
            self._mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)


def default_bounds(ndim: int, bounds: Sequence | None) -> tuple[tuple[float, float], ...]:
    """``bounds`` as a tuple of pairs; ``None`` means [-1, 1] on every axis.

    A single pair ``[lo, hi]`` is used for every axis.
    """
    if bounds is None:
        return ((-1.0, 1.0),) * ndim
    b = list(bounds)
    if len(b) == 2 and all(isinstance(v, (int, float)) for v in b):
        b = [b] * ndim
    require(
        len(b) == ndim and all(len(p) == 2 for p in b),
        f"data.bounds must be [lo, hi] or one [lo, hi] per axis ({ndim} axes), got {bounds!r}",
    )
    return tuple((float(lo), float(hi)) for lo, hi in b)


def chunk_ranges(n: int, chunk: int, rank: int = 0, world: int = 1) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` ranges covering ``n`` flat indices, ``chunk`` at a time; under DDP rank
    r takes every ``world``-th chunk, so the ranks' metric states merge into exactly the full
    grid. Chunks shrink so that every rank gets at least one (a rank without batches would skip
    the validation hooks and leave the others waiting in the metric sync)."""
    chunk = max(1, min(chunk, -(-n // world)))
    for i, s in enumerate(range(0, n, chunk)):
        if i % world == rank:
            yield (s, min(s + chunk, n))


def positions_of(meta: dict) -> tuple[Any, ...] | None:
    """Per axis the positions of a non-uniform coordinate recorded in ``meta["dims"]`` (a
    signal's or a saved field's), or ``None`` when every axis is uniform."""
    pos = tuple(ax.get("positions") for ax in meta.get("dims") or ())
    return pos if any(p is not None for p in pos) else None


class Grid:
    """Coordinates of a grid computed from flat indices, on any device.

    Holds only ``shape``, ``lo`` and ``step`` (small tensors), so no ``numel x d`` coordinate
    tensor is ever built: a batch of indices becomes a batch of coordinates where the indices live.
    A uniform axis puts sample ``i`` at its cell centre ``lo + (i + 1/2) step``; an axis given
    ``positions`` (an ascending 1-D sequence of its length: monthly time, Gaussian latitudes,
    stretched levels) puts it at ``positions[i]``, where the file says it is.
    """

    def __init__(
        self, shape: Sequence[int], bounds: Sequence[Sequence[float]], positions: Sequence[Any] | None = None
    ) -> None:
        self.shape = tuple(int(s) for s in shape)
        lo = torch.tensor([b[0] for b in bounds], dtype=torch.float64)
        hi = torch.tensor([b[1] for b in bounds], dtype=torch.float64)
        self.lo = lo.float()
        self.step = ((hi - lo) / torch.tensor(self.shape, dtype=torch.float64)).float()
        self.positions: list[Tensor | None] = [None] * len(self.shape)
        for k, p in enumerate(positions or ()):
            if p is not None:
                t = torch.as_tensor(np.asarray(p, dtype=np.float64)).float()
                require(t.numel() == self.shape[k], f"grid axis {k}: {t.numel()} positions for {self.shape[k]} samples")
                self.positions[k] = t

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape))

    def to(self, device: torch.device | str) -> Grid:
        self.lo = self.lo.to(device)
        self.step = self.step.to(device)
        self.positions = [p.to(device) if p is not None else None for p in self.positions]
        return self

    def coords(self, idx: Tensor) -> Tensor:
        """Flat indices ``(B,)`` (int64) -> sample coordinates ``(B, d)`` (float32)."""
        d = len(self.shape)
        out = torch.empty(idx.shape[0], d, dtype=torch.float32, device=idx.device)
        rem = idx
        for k in range(d - 1, -1, -1):
            n = self.shape[k]
            i = rem.remainder(n)
            out[:, k] = i if self.positions[k] is None else self.positions[k][i]
            rem = rem.div(n, rounding_mode="floor")
        uniform = torch.addcmul(self.lo, out + 0.5, self.step)
        placed = [p is not None for p in self.positions]
        if not any(placed):
            return uniform
        return torch.where(torch.tensor(placed, device=idx.device), out, uniform)

    def coords_range(self, start: int, stop: int) -> Tensor:
        """Coordinates ``(stop - start, d)`` of flat rows ``[start, stop)``."""
        return self.coords(torch.arange(start, stop, device=self.lo.device))

    def chunks(self, chunk: int = 65536, rank: int = 0, world: int = 1) -> Iterator[tuple[int, int, Tensor]]:
        """The one chunked pass over the grid: ``(start, stop, coords)`` per chunk of
        :func:`chunk_ranges` (this rank's share under DDP). Validation, the final evaluation and
        ``Field.sample`` all walk the grid through it, so memory stays ``chunk x d``."""
        for start, stop in chunk_ranges(self.numel, chunk, rank, world):
            yield start, stop, self.coords_range(start, stop)
