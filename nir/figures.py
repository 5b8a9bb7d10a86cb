"""The figures nir draws of a field being trained (matplotlib, headless): the reconstruction
(images; 1-D profiles on a log axis; 3-D and 4-D central slices with exact maximum-intensity
projections), the error map, and the per-decade quantiles. Pure drawing: the callbacks that log
them to TensorBoard are in :mod:`nir.training.callbacks`; ``pl_module`` is a :class:`nir.training.module.FieldModule`."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def preview_indices(shape: tuple[int, ...], max_side: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Flat indices of an evenly strided sub-grid with at most ``max_side`` samples per axis."""
    axes = [np.unique(np.linspace(0, n - 1, min(n, max_side)).round().astype(np.int64)) for n in shape]
    mesh = np.meshgrid(*axes, indexing="ij")
    flat = np.ravel_multi_index([m.ravel() for m in mesh], shape)
    return torch.from_numpy(flat), tuple(len(a) for a in axes)


def predict_at(pl_module: Any, idx: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Prediction and target (``(n, channels)`` numpy) at flat indices, fp32, no grad."""
    data = pl_module.batches()
    idx = idx.to(pl_module.device)
    with torch.no_grad():
        pred = pl_module.field(data.grid.coords(idx)).float().cpu().numpy()
    return pred, data.values_at(idx).float().cpu().numpy()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def field_figure(pl_module: Any, max_side: int = 512, target_mip: list | None = None):
    """Matplotlib figure of a long-tailed field (first channel).

    1-D: target and prediction on a log axis, relative error below (log axis).
    3-D: central slices along each axis; rows target, prediction and relative error (log scale,
    1e-4 .. 1), then, given ``target_mip`` and the module's ``last_projections``, the target's
    and the prediction's maximum-intensity projections (exact over the grid: narrow peaks show).
    Values share one log colour scale spanning the data (its largest magnitude down 7 decades or
    to the metric floor). 2-D non-image fields: the same with one slice.
    Relative error is |p - y| / max(|y|, floor) with the metric floor.
    """
    stats = pl_module.data.stats
    floor = stats.floor or 1e-12
    label = value_label(pl_module.data.signal.meta)
    if pl_module.data.signal.ndim == 1:
        return _profile_figure(pl_module, floor, label)
    pred_mip = getattr(pl_module, "last_projections", None)
    mips = list(zip(pred_mip, target_mip)) if pred_mip is not None and target_mip is not None else None
    return _slices_figure(_central_slices(pl_module, max_side), floor, stats.absmax or None, mips, label)


def value_label(meta: dict) -> str:
    """``|long name| [units]`` of a signal read from a dataset (``|value|`` otherwise); masked
    samples (NaN targets) show as gaps in the figures."""
    name, units = meta.get("long_name"), meta.get("units")
    return f"|{name or 'value'}|" + (f" [{units}]" if units else "")


def _profile_figure(pl_module: Any, floor: float, label: str = "|value|"):
    idx, _ = preview_indices(pl_module.data.signal.shape, 4096)
    pred, target = predict_at(pl_module, idx)
    x = idx.numpy()
    fig, (a0, a1) = _pyplot().subplots(2, 1, figsize=(7, 4.2), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    a0.semilogy(x, np.maximum(np.abs(target[:, 0]), floor), lw=0.8, label="target")
    a0.semilogy(x, np.maximum(np.abs(pred[:, 0]), floor), lw=0.8, ls="--", label="prediction")
    a0.set_ylabel(label)
    a0.legend(loc="upper right")
    rel = np.abs(pred[:, 0] - target[:, 0]) / np.maximum(np.abs(target[:, 0]), floor)
    a1.semilogy(x, np.maximum(rel, 1e-7), lw=0.6, color="C3")
    a1.set_ylabel("relative error")
    a1.set_xlabel("sample index")
    fig.tight_layout()
    return fig


def _central_slices(pl_module: Any, max_side: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(prediction, target) of the central slice along each axis of a 3-D field (of a 4-D one:
    at its central time step; the whole grid of a 2-D one), strided to at most ``max_side``
    samples per axis."""
    signal = pl_module.data.signal
    shape, three = signal.shape, signal.ndim >= 3
    lead = signal.ndim - 3 if three else 0  # a 4-D (t, z, y, x) field: the central time step
    slices = []
    for ax in range(lead, signal.ndim) if three else [0]:
        axes = [np.arange(n) for n in shape]
        for k in [*range(lead), ax] if three else []:
            axes[k] = np.array([shape[k] // 2])
        keep = [
            a if len(a) == 1 else a[np.unique(np.linspace(0, len(a) - 1, min(len(a), max_side)).round().astype(int))]
            for a in axes
        ]
        mesh = np.meshgrid(*keep, indexing="ij")
        flat = torch.from_numpy(np.ravel_multi_index([m.ravel() for m in mesh], shape))
        pred, target = predict_at(pl_module, flat)
        hw = [len(a) for i, a in enumerate(keep) if not (three and (i < lead or i == ax))]
        slices.append((pred[:, 0].reshape(hw), target[:, 0].reshape(hw)))
    return slices


def _shrink_max(a: np.ndarray, side: int = 256) -> np.ndarray:
    """``a`` max-pooled to at most ``side`` per axis (a projection's peaks survive display)."""
    if max(a.shape) <= side:
        return a
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]
    out = torch.nn.functional.adaptive_max_pool2d(t, (min(a.shape[0], side), min(a.shape[1], side)))
    return out[0, 0].numpy()


def _slices_figure(
    slices: list[tuple[np.ndarray, np.ndarray]],
    floor: float,
    vmax: float | None = None,
    mips: list[tuple[Any, Any]] | None = None,
    label: str = "|value|",
):
    from matplotlib.colors import LogNorm

    vmax = vmax or max(float(np.abs(t).max()) for _, t in slices)
    norm = LogNorm(vmin=max(floor, vmax * 1e-7), vmax=vmax)
    rows = ["target", "prediction", "relative error"] + (["target MIP", "prediction MIP"] if mips else [])
    cols = len(slices)
    plt = _pyplot()
    with plt.rc_context({"font.size": 8}):
        fig, axs = plt.subplots(len(rows), cols, figsize=(2.5 * cols + 0.6, 2.3 * len(rows)), squeeze=False)
        for j, (p, t) in enumerate(slices):
            rel = np.clip(np.abs(p - t) / np.maximum(np.abs(t), floor), 1e-4, 1)
            panels = [(np.abs(t), norm, "viridis"), (np.abs(p), norm, "viridis"), (rel, LogNorm(1e-4, 1), "magma")]
            if mips:
                pm, tm = mips[j]
                panels += [
                    (_shrink_max(np.asarray(tm)), norm, "viridis"),
                    (_shrink_max(np.asarray(pm)), norm, "viridis"),
                ]
            for i, (img, nrm, cmap) in enumerate(panels):
                shown = (
                    img if cmap == "magma" else np.maximum(img, floor)
                )  # relative error: clipped above, never floored
                im = axs[i, j].imshow(shown, norm=nrm, cmap=cmap, origin="lower", interpolation="nearest")
                where = "projection" if "MIP" in rows[i] else "centre"
                axs[i, j].set_title(f"{rows[i]} (axis {j} {where})" if cols > 1 else rows[i])
                axs[i, j].axis("off")
                if j == cols - 1:
                    bar = fig.colorbar(im, ax=axs[i, j], fraction=0.046, pad=0.02)
                    bar.set_label("relative error" if cmap == "magma" else label)
        fig.tight_layout()
    return fig


def error_figure(err: np.ndarray, white: float):
    """The error map with its scale on it: ``|pred - target|`` (mean over channels, signal
    units) in the magma colormap, white-hot at ``white``, with a labelled colour bar."""
    plt = _pyplot()
    h, w = err.shape
    fig, ax = plt.subplots(figsize=(min(6.0, 1.2 + 4.0 * w / max(h, w)), 4.0 * h / max(h, w) + 0.6))
    im = ax.imshow(err, cmap="magma", vmin=0.0, vmax=white, interpolation="nearest")
    ax.axis("off")
    ax.set_title(f"|error|, mean over channels (white = {white:g}, {np.mean(err):.3g} on average)", fontsize=9)
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    bar.ax.tick_params(labelsize=8)
    bar.set_label("signal units", fontsize=8)
    fig.tight_layout()
    return fig


def magnitude_figure(table: list[dict]):
    """Relative-error quantiles (median, p90, max) per decade bin against magnitude."""
    plt = _pyplot()
    rows = [r for r in table if r["count"] > 0]
    labels = [r["bin"] for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for key, style in [("median", "o-"), ("p90", "s--"), ("max", "^:")]:
        ax.semilogy(x, [max(r[key], 1e-8) for r in rows], style, label=key)
    ax.set_xticks(x, labels, rotation=30, fontsize=7)
    ax.set_xlabel("|target| decade")
    ax.set_ylabel("relative error")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig
