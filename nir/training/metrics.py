"""Metrics with their conventions stated.

``psnr``: 10 log10(R^2 / MSE) over every sample and channel of the whole grid, in signal units.
R is ``hi - lo`` of ``data.value_range`` for images (2.0 for the default [-1, 1]; PSNR is
scale-free, so this equals 8-bit PSNR on [0, 255] pixels) and ``max - min`` of the target for other signals ("range PSNR", the
convention of neural volume compression papers). Blind to the low decades of long-tailed data.

``psnr_log``: PSNR of ``log10(|y| + floor)`` with R = its range: the log-space counterpart.

Per-magnitude bins (:class:`MagnitudeBins`, long-tailed fields): samples are binned by decade of
``|y|`` from the metric floor to the maximum, plus one bin below the floor (exact zeros
included). Relative error is ``|p - y| / max(|y|, floor)``; bias is the mean of
``log10(max(p, 0) + floor) - log10(|y| + floor)`` (signed, in decades). The metric floor uses
the same rule as the log transform (``floor_from_data(y, 1e-7)``) and depends only on the data,
so runs with different losses share their bins. Quantiles come from a fixed histogram of
log10 relative error (0.01 decades per bucket from 1e-8 to 1e4, linear interpolation inside a
bucket), so every statistic is a sum or a max of fixed-size state: exact under merging across
processes and chunks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.image import PeakSignalNoiseRatio

from nir.data.signal import Signal, valid_rows
from nir.decades import decade_bin, decade_edges

HIST_LO, HIST_HI, HIST_BINS = -8.0, 4.0, 1200


def data_range(signal: Signal) -> float:
    """The R of PSNR for ``signal`` (see module doc)."""
    vr = signal.meta.get("value_range")
    if vr is not None:
        return float(vr[1] - vr[0])
    st = signal.summary()
    return float(st["max"].max() - st["min"].min()) or 1.0


def bin_label(lo: float | None, hi: float) -> str:
    return f"<{hi:.0e}" if lo is None else f"{lo:.0e}..{hi:.0e}"


class MagnitudeBins(Metric):
    """Per-decade relative-error statistics of a long-tailed field (see module doc).

    Args:
        floor: metric floor (values below it form bin 0).
        top: the target's maximum magnitude (sets the last edge).
    """

    full_state_update = False
    higher_is_better = False

    def __init__(self, floor: float, top: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.floor = float(floor)
        self.edges = decade_edges(self.floor, top)
        nb = len(self.edges)  # bin 0 below the floor + one per consecutive pair of edges
        self.add_state("count", torch.zeros(nb, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("mass", torch.zeros(nb, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("bias_sum", torch.zeros(nb, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("max_rel", torch.zeros(nb, dtype=torch.float64), dist_reduce_fx="max")
        self.add_state("hist", torch.zeros(nb, HIST_BINS, dtype=torch.float64), dist_reduce_fx="sum")
        # below-floor samples (bin 0: exact zeros, sub-floor noise) that the field answers below the floor
        self.add_state("below_kept", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.register_buffer("_edges_t", torch.tensor(self.edges, dtype=torch.float32), persistent=False)

    def bin_index(self, mag: Tensor) -> Tensor:
        """Bin of each magnitude: 0 below the floor, i for [edges[i-1], edges[i]) (:func:`decade_bin`)."""
        return decade_bin(mag, self._edges_t)

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        p = pred.float().reshape(-1)
        y = target.float().reshape(-1)
        mag = y.abs()
        rel = (p - y).abs() / mag.clamp_min(self.floor)
        bias = torch.log10(p.clamp_min(0) + self.floor) - torch.log10(mag + self.floor)
        b = self.bin_index(mag)
        nb = len(self.edges)
        self.count += torch.bincount(b, minlength=nb).double()
        self.mass += torch.zeros(nb, dtype=torch.float64, device=y.device).index_add_(0, b, mag.double())
        self.bias_sum += torch.zeros(nb, dtype=torch.float64, device=y.device).index_add_(0, b, bias.double())
        mx = torch.zeros(nb, dtype=torch.float32, device=y.device).scatter_reduce(
            0, b, rel.nan_to_num(nan=float("inf")), "amax"
        )
        self.max_rel = torch.maximum(self.max_rel, mx.double())
        lr = torch.log10(rel.clamp_min(10**HIST_LO)).nan_to_num(nan=HIST_HI, posinf=HIST_HI)
        h = ((lr - HIST_LO) / (HIST_HI - HIST_LO) * HIST_BINS).long().clamp(0, HIST_BINS - 1)
        self.hist += torch.bincount(b * HIST_BINS + h, minlength=nb * HIST_BINS).reshape(nb, HIST_BINS).double()
        self.below_kept += ((b == 0) & (p.abs() < self.floor)).sum().double()

    def quantile(self, q: float) -> Tensor:
        """Relative-error quantile per bin from the histogram at most the bin's exact
        maximum (NaN for empty bins; ``metrics.json`` writes those as ``null``)."""
        cum = self.hist.cumsum(1)
        tot = cum[:, -1:]
        target = q * tot
        j = torch.searchsorted(cum, target).clamp_max(HIST_BINS - 1)
        prev = torch.where(j > 0, cum.gather(1, (j - 1).clamp_min(0)), torch.zeros_like(target))
        inbin = self.hist.gather(1, j).clamp_min(1e-30)
        frac = ((target - prev) / inbin).clamp(0, 1)
        width = (HIST_HI - HIST_LO) / HIST_BINS
        logv = HIST_LO + (j.double() + frac) * width
        # never above the exact maximum: interpolation inside the top bucket could overshoot it
        out = torch.minimum((10.0**logv).squeeze(1), self.max_rel)
        return torch.where(tot.squeeze(1) > 0, out, torch.full_like(out, float("nan")))

    def compute(self) -> dict[str, Tensor]:
        n = self.count.clamp_min(1)
        return {
            "count": self.count,
            "share_points": self.count / self.count.sum().clamp_min(1),
            "share_mass": self.mass / self.mass.sum().clamp_min(1e-300),
            "median": self.quantile(0.5),
            "p90": self.quantile(0.9),
            "max": torch.where(self.count > 0, self.max_rel, torch.full_like(self.max_rel, float("nan"))),
            "bias_log10": torch.where(self.count > 0, self.bias_sum / n, torch.full_like(n, float("nan"))),
            "hist": self.hist.clone(),  # merged across processes here (compute runs on synced state)
        }

    def labels(self) -> list[str]:
        return [bin_label(None, self.edges[0])] + [bin_label(a, b) for a, b in zip(self.edges[:-1], self.edges[1:])]

    def table(self) -> list[dict[str, Any]]:
        """One plain dict per bin (for metrics.json and the docs)."""
        c = {k: v.tolist() for k, v in self.compute().items() if k != "hist"}
        rows = []
        for i, label in enumerate(self.labels()):
            lo = 0.0 if i == 0 else self.edges[i - 1]
            hi = self.edges[0] if i == 0 else self.edges[i]
            rows.append({"bin": label, "lo": lo, "hi": hi, **{k: c[k][i] for k in c}})
        return rows


class MaxProjections(Metric):
    """Maximum-intensity projections of ``|values|`` (first channel) of a 3-D field along each
    axis, accumulated chunk by chunk over flat row ranges of the whole grid (of a 4-D field: its
    central time step), so narrow peaks a strided preview would miss still show. ``compute()``
    -> ``[along axis 0 (Y, X), along axis 1 (Z, X), along axis 2 (Z, Y)]``; a line whose every
    sample is masked (NaN) projects to NaN, shown as a gap."""

    full_state_update = False

    def __init__(self, shape: tuple[int, ...], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.shape = tuple(int(v) for v in shape)
        z, y, x = self.shape[-3:]
        lead = self.shape[:-3]
        centre = 0
        for n in lead:  # row-major index of the central lead sample (4-D: the central time step)
            centre = centre * n + n // 2
        self.base = centre * z * y * x
        # -1: no valid sample yet (|values| >= 0), so a line of masked samples projects to NaN, a gap
        self.add_state("along0", torch.full((y * x,), -1.0), dist_reduce_fx="max")
        self.add_state("along1", torch.full((z * x,), -1.0), dist_reduce_fx="max")
        self.add_state("along2", torch.full((z * y,), -1.0), dist_reduce_fx="max")

    @torch.no_grad()
    def update(self, start: int, stop: int, values: Tensor) -> None:
        z, y, x = self.shape[-3:]
        idx = torch.arange(start, stop, device=values.device) - self.base
        keep = (idx >= 0) & (idx < z * y * x)
        if not bool(keep.any()):
            return
        idx, v = idx[keep], values.reshape(stop - start, -1)[keep, 0].float().abs().nan_to_num(nan=-1.0)
        k, r = idx // (y * x), idx % (y * x)
        j, i = r // x, r % x
        self.along0.scatter_reduce_(0, r, v, "amax")
        self.along1.scatter_reduce_(0, k * x + i, v, "amax")
        self.along2.scatter_reduce_(0, k * y + j, v, "amax")

    def compute(self) -> list[Tensor]:
        z, y, x = self.shape[-3:]
        out = [self.along0.reshape(y, x), self.along1.reshape(z, x), self.along2.reshape(z, y)]
        return [torch.where(p < 0, torch.full_like(p, float("nan")), p) for p in out]


def image_ssim(pred: Tensor, target: Tensor, data_range: float) -> float | None:
    """SSIM of an ``(H, W, channels)`` image pair (torchmetrics: Wang et al. 2004, Gaussian window
    11, sigma 1.5, averaged over channels and pixels), with the PSNR's data range; ``None`` for an
    image smaller than the window."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    if min(pred.shape[0], pred.shape[1]) < 11:
        return None
    p, y = (t.float().permute(2, 0, 1)[None] for t in (pred, target))
    return float(structural_similarity_index_measure(p, y, data_range=data_range))


@dataclass(frozen=True)
class SignalStats:
    """What the metrics need to know about a signal, measured once per run.

    Attributes:
        range: the R of PSNR (:func:`data_range`).
        long_tailed: the signal's own flag (:attr:`Signal.long_tailed`): per-decade bins and
            ``psnr_log`` are computed only then.
        floor: the metric floor, ``floor_from_data(values, 1e-7)`` (long-tailed only).
        absmin, absmax: exact smallest and largest magnitudes.
        missing: masked samples (NaN targets): left out of every metric, counted as ``masked_samples``.
    """

    range: float
    long_tailed: bool
    floor: float = 0.0
    absmin: float = 0.0
    absmax: float = 0.0
    missing: int = 0

    @classmethod
    def measure(cls, signal: Signal, sample: Tensor | None = None) -> SignalStats:
        """Statistics of ``signal``; ``sample`` is its fit sample if the caller drew it already
        (:meth:`Signal.fit_sample`), so a large signal is sampled once per run."""
        if not signal.long_tailed:
            return cls(range=data_range(signal), long_tailed=False, missing=signal.missing)
        from nir.transforms import floor_from_data

        st = signal.summary()
        sample = signal.fit_sample() if sample is None else sample
        return cls(
            range=data_range(signal),
            long_tailed=True,
            floor=floor_from_data(sample, 1e-7),
            absmin=float(st["absmin"]),
            absmax=float(st["absmax"]),
            missing=signal.missing,
        )


class GridMetrics(nn.Module):
    """Whole-grid metrics, accumulated chunk by chunk; ``compute()`` -> ``{name: scalar tensor}``.

    Every signal gets ``psnr``. Long-tailed signals also get ``psnr_log`` and the per-magnitude
    bins, with the scalar summaries ``worst_decade_median`` (the largest per-bin median relative
    error over the bins above the floor that hold samples), ``top_decade_median`` (the median of
    the highest decade holding samples: the large values users care most about) and
    ``below_floor_kept`` (the share of the below-floor samples, exact zeros included, that the
    field answers below the floor; NaN when there are none).

    With ``holdout`` (``data.holdout``) the same metrics are also kept apart for the training
    and the held-out samples (``update``'s ``held`` mask): ``psnr_train``, ``psnr_heldout`` and,
    for long-tailed signals, ``heldout_psnr_log``, ``heldout_worst_decade_median`` and the
    held-out per-decade table; the unprefixed metrics stay over all samples.

    Masked samples (a NaN target: missing values, ``stats.missing``) are dropped before any
    metric sees them; ``results()`` counts them as ``masked_samples``.
    """

    def __init__(self, stats: SignalStats, holdout: bool = False) -> None:
        super().__init__()
        # the parts get rows already stripped of masked samples: nothing to drop again
        part = replace(stats, missing=0)
        self.split = nn.ModuleDict({"trained": GridMetrics(part), "heldout": GridMetrics(part)}) if holdout else None
        self.range, self.missing = stats.range, stats.missing
        self.psnr = PeakSignalNoiseRatio(data_range=self.range)
        self.long_tailed = stats.long_tailed
        if self.long_tailed:
            self.floor = stats.floor
            top = stats.absmax
            self.log_range = math.log10(top + self.floor) - math.log10(stats.absmin + self.floor)
            self.psnr_log = PeakSignalNoiseRatio(data_range=self.log_range or 1.0)
            self.bins = MagnitudeBins(self.floor, top)

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor, held: Tensor | None = None) -> None:
        pred, target = pred.float(), target.float()
        if self.missing:  # masked samples (NaN targets) are never scored
            keep = valid_rows(target)
            pred, target, held = pred[keep], target[keep], (held[keep] if held is not None else None)
        if self.split is not None and held is not None:
            for part, rows in (("trained", ~held), ("heldout", held)):
                if bool(rows.any()):
                    self.split[part].update(pred[rows], target[rows])
        self.psnr.update(pred, target)
        if self.long_tailed:
            lp = torch.log10(pred.abs() + self.floor)
            ly = torch.log10(target.abs() + self.floor)
            self.psnr_log.update(lp, ly)
            self.bins.update(pred, target)

    def compute(self) -> dict[str, Tensor]:
        out = {"psnr": self.psnr.compute()}
        if self.long_tailed:
            out["psnr_log"] = self.psnr_log.compute()
            c = self.bins.compute()
            med = c["median"][1:]
            out["worst_decade_median"] = torch.nan_to_num(med, nan=0.0).max()
            held = torch.nonzero(c["count"][1:] > 0)  # the decades above the floor holding samples
            nan = torch.tensor(float("nan"), dtype=torch.float64, device=med.device)
            out["top_decade_median"] = med[int(held.max())] if held.numel() else nan
            below = c["count"][0]
            out["below_floor_kept"] = self.bins.below_kept / below if below > 0 else nan
        if self.split is not None:
            out["psnr_train"] = self.split["trained"].psnr.compute()
            held = self.split["heldout"].compute()
            out.update({"psnr_heldout" if k == "psnr" else f"heldout_{k}": v for k, v in held.items()})
        return out

    def results(self) -> dict[str, Any]:
        """:meth:`compute` as plain values, with the per-decade table of a long-tailed signal."""
        out: dict[str, Any] = {k: float(v) for k, v in self.compute().items()}
        out["masked_samples"] = self.missing
        if self.long_tailed:
            out["magnitude_floor"] = self.floor
            out["magnitude_bins"] = self.bins.table()
            if self.split is not None:
                out["heldout_magnitude_bins"] = self.split["heldout"].bins.table()
        return out

    def reset(self) -> None:
        if self.split is not None:
            for part in self.split.values():
                part.reset()
        self.psnr.reset()
        if self.long_tailed:
            self.psnr_log.reset()
            self.bins.reset()


def score(prediction: Any, signal: Signal, holdout: Any = None) -> dict[str, Any]:
    """Score a prediction of ``signal`` on its grid with nir's metrics, as a run reports them:
    ``psnr`` and, for a long-tailed signal, ``psnr_log``, ``worst_decade_median``,
    ``magnitude_floor`` and ``magnitude_bins``; ``ssim`` for an image. The scorer of the scripts
    and the tests; a run's final evaluation (``FieldModule.evaluate``) uses the same
    :class:`GridMetrics` chunk by chunk on the device, and tests check the two agree.

    Args:
        prediction: a field (anything with ``sample(shape)``, e.g. :class:`nir.Field`: sampled on
            the signal's grid) or an array / tensor of the signal's grid values
            (``(*shape)`` or ``(*shape, channels)``, any float type).
        signal: the reference :class:`~nir.data.signal.Signal`.
        holdout: a :class:`~nir.data.holdout.Holdout`, to score training and held-out samples apart.
    """
    import numpy as np

    if hasattr(prediction, "sample"):
        with torch.no_grad():
            prediction = prediction.sample(signal.shape, signal.bounds)
    pred = torch.as_tensor(np.ascontiguousarray(prediction) if isinstance(prediction, np.ndarray) else prediction)
    pred = pred.detach().float().cpu().reshape(signal.numel, signal.channels)
    target = signal.flat()
    gm = GridMetrics(SignalStats.measure(signal), holdout is not None)
    held = holdout.held_range(0, signal.numel) if holdout is not None else None
    gm.update(pred, target, held)
    out = gm.results()
    if signal.is_image:
        shape = (*signal.shape, signal.channels)
        out["ssim"] = image_ssim(pred.reshape(shape), target.reshape(shape), gm.range)
    return out
