"""Seeded long-tailed test fields: most values tiny (1e-4 .. 0.1), a few large (up to hundreds).

Each generator returns a :class:`~nir.data.signal.Signal` whose ``meta`` records every parameter, so
the run's config and ``metrics.json`` say exactly what was fitted. ``nir-synth NAME OUT.npy
[key=value ...]`` writes one to ``.npy`` for inspection.

Building block: a Gaussian random field with power spectrum P(k) ~ k^-slope, made by filtering
white noise in Fourier space and standardised to zero mean and unit variance. In d dimensions the
variance per octave of k goes as k^(d - slope): the 3-D defaults (slope 5) put most variance at
large scales, so the fields are compressible; slope <= d gives a rough, incompressible field. ``exp`` of it is
log-normal: ``10 ** (centre + (decades / 6) * g)`` puts +-3 sigma ``decades`` decades apart.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from nir.data.signal import Signal, default_bounds
from nir.errors import positive_float, positive_int


def gaussian_random_field(shape: Sequence[int], slope: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-variance field with power spectrum ``|k|^-slope`` (k = 0 removed)."""
    noise = rng.standard_normal(shape)
    spec = np.fft.rfftn(noise)
    freqs = [np.fft.fftfreq(n) for n in shape[:-1]] + [np.fft.rfftfreq(shape[-1])]
    k2 = sum(np.meshgrid(*[f**2 for f in freqs], indexing="ij", sparse=True))
    k2 = np.asarray(k2, dtype=np.float64)
    k2.flat[0] = np.inf  # drop the mean
    spec *= k2 ** (-slope / 4.0)  # amplitude ~ |k|^(-slope/2)
    g = np.fft.irfftn(spec, s=shape, axes=tuple(range(len(shape))))
    return (g - g.mean()) / g.std()


def _lognormal(shape, slope, lo, hi, rng) -> np.ndarray:
    """Log-normal background with +-3 sigma spanning [lo, hi]."""
    g = gaussian_random_field(shape, slope, rng)
    centre, half = (math.log10(lo) + math.log10(hi)) / 2, (math.log10(hi) - math.log10(lo)) / 2
    return 10.0 ** (centre + half / 3.0 * g)


def _signal(values: np.ndarray, name: str, bounds, params: dict) -> Signal:
    v = torch.from_numpy(values.astype(np.float32)[..., None])
    return Signal(
        v,
        default_bounds(values.ndim, bounds),
        name=name,
        meta={"kind": "synthetic", "generator": name, "params": params},
        long_tailed=True,
    )


def peaks1d(
    n: int = 16384,
    num_peaks: int = 6,
    background: Sequence[float] = (1e-4, 0.1),
    heights: Sequence[float] = (5.0, 300.0),
    widths: Sequence[float] = (1e-3, 5e-3),
    slope: float = 2.0,
    seed: int = 0,
    bounds: Sequence | None = None,
) -> Signal:
    """1-D spectrum: log-normal 1/f background plus narrow peaks.

    "1/f" here is the amplitude spectrum (power ~ k^-2, ``slope = 2``): fluctuations at every
    scale, about 1 % per sample. ``slope = 1`` (1/f power) makes the background nearly white
    from sample to sample: incompressible, so no network smaller than the signal fits it.

    ``y(x) = b(x) + sum_i h_i / (1 + ((x - c_i) / w_i)^2)^2`` on ``n`` cell centres of [-1, 1], with
    ``b`` log-normal (power ~ k^-slope, +-3 sigma spanning ``background``), heights ``h_i``
    log-uniform in ``heights`` (the first exactly the top height), widths ``w_i`` log-uniform in
    ``widths`` and centres uniform in [-0.9, 0.9]. The peaks are squared Lorentzians (Pearson VII,
    m = 2): their tails fill the decades between background and peak tops, so every decade from
    1e-4 to 1e2 holds samples, yet fall as |x - c|^-4 and leave the background's low decades intact.
    """
    positive_int("data.n", n)
    positive_int("data.num_peaks", num_peaks)
    rng = np.random.default_rng(seed)
    x = -1 + (np.arange(n) + 0.5) * 2 / n
    y = _lognormal((n,), slope, background[0], background[1], rng)
    h = 10 ** rng.uniform(math.log10(heights[0]), math.log10(heights[1]), num_peaks)
    h[0] = heights[1]
    w = 10 ** rng.uniform(math.log10(widths[0]), math.log10(widths[1]), num_peaks)
    c = rng.uniform(-0.9, 0.9, num_peaks)
    for hi, wi, ci in zip(h, w, c):
        y = y + hi / (1 + ((x - ci) / wi) ** 2) ** 2
    params = dict(
        n=n,
        num_peaks=num_peaks,
        background=list(background),
        heights=list(heights),
        widths=list(widths),
        slope=slope,
        seed=seed,
    )
    return _signal(y, "peaks1d", bounds, params)


def lognormal3d(
    n: int = 48,
    slope: float = 5.0,
    range: Sequence[float] = (1e-4, 10.0),
    seed: int = 0,
    bounds: Sequence | None = None,
) -> Signal:
    """3-D log-normal field: ``10^(centre + (decades/6) g)``, g a GRF with P(k) ~ k^-slope.

    +-3 sigma spans ``range`` (5 decades by default); the tails reach a little beyond.
    """
    positive_int("data.n", n)
    rng = np.random.default_rng(seed)
    y = _lognormal((n, n, n), slope, range[0], range[1], rng)
    return _signal(y, "lognormal3d", bounds, dict(n=n, slope=slope, range=list(range), seed=seed))


def sources3d(
    n: int = 48,
    num_sources: int = 8,
    background: Sequence[float] = (1e-4, 0.1),
    amplitudes: Sequence[float] = (20.0, 500.0),
    r0: float = 0.02,
    screening: float = 0.1,
    slope: float = 5.0,
    seed: int = 0,
    bounds: Sequence | None = None,
) -> Signal:
    """3-D log-normal background plus point sources ``A r0^2 / (r^2 + r0^2) * exp(-r / screening)``.

    Each source peaks at its amplitude A (log-uniform in ``amplitudes``, the first exactly the
    top one) at a random voxel centre in [-0.8, 0.8]^3 and falls off as 1/(r^2 + r0^2); the screening
    length cuts the 1/r^2 tail (unscreened, 8 sources of ~100 would lift every voxel above 0.1
    and erase the low decades).
    """
    positive_int("data.n", n)
    positive_int("data.num_sources", num_sources)
    positive_float("data.r0", r0)
    positive_float("data.screening", screening)
    rng = np.random.default_rng(seed)
    y = _lognormal((n, n, n), slope, background[0], background[1], rng)
    ax = -1 + (np.arange(n) + 0.5) * 2 / n
    X, Y, Z = np.meshgrid(ax, ax, ax, indexing="ij", sparse=True)
    amps = 10 ** rng.uniform(math.log10(amplitudes[0]), math.log10(amplitudes[1]), num_sources)
    amps[0] = amplitudes[1]
    # centres on voxel centres in [-0.8, 0.8]^3, so each peak value A is sampled exactly
    lo, hi = int(np.ceil(n * 0.1)), int(np.floor(n * 0.9))
    centres = ax[rng.integers(lo, hi, (num_sources, 3))]
    for a, (cx, cy, cz) in zip(amps, centres):
        r2 = (X - cx) ** 2 + (Y - cy) ** 2 + (Z - cz) ** 2
        y = y + a * r0**2 / (r2 + r0**2) * np.exp(-np.sqrt(r2) / screening)
    params = dict(
        n=n,
        num_sources=num_sources,
        background=list(background),
        amplitudes=list(amplitudes),
        r0=r0,
        screening=screening,
        slope=slope,
        seed=seed,
    )
    return _signal(y, "sources3d", bounds, params)


GENERATORS = {"peaks1d": peaks1d, "lognormal3d": lognormal3d, "sources3d": sources3d}
