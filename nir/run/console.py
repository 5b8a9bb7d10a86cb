"""What a run prints: one line per decision or fact, from the first process only
(:func:`nir.ranks.first_process`): the data's lines, the start line, the summary with its
bound, magnitude and held-out lines."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from nir.ranks import first_process


def say(text: str) -> None:
    """Print ``text`` (flushed) in the first process of a run."""
    if first_process():
        print(text, flush=True)


def announce_signal(signal: Any) -> None:
    """The start lines about the data: a dataset's axes (names, sizes, boxes, units) and the
    number of masked samples."""
    from nir.data.readers.datasets import describe

    if not first_process():
        return
    line = describe(signal)
    if line:
        print(line, flush=True)
    if signal.missing:
        print(f"data: {signal.missing:,} of {signal.numel:,} samples are missing (NaN / _FillValue): masked, never "
              "trained on or scored (masked_samples in metrics.json); data.nan=error refuses them", flush=True)  # fmt: skip


def start_line(batch_size: int, parts: Any, trainer: Any) -> str:
    """The one line a run prints before training: what is fitted to what, where and how
    (``parts``: the run's :class:`nir.run.parts.Parts`)."""
    s = parts.signal
    shape = "x".join(map(str, s.shape)) + (f"x{s.channels}" if s.channels > 1 else "")
    devices = f" x{trainer.num_devices}" if trainer.num_devices > 1 else ""
    return (
        f"nir: {type(parts.field.network).__name__} ({parts.field.num_parameters():,} parameters) on {s.name} "
        f"({shape}), {trainer.max_steps} steps of {batch_size:,} samples, sampling {parts.data.sampling}; "
        f"device {trainer.strategy.root_device}{devices}, precision {parts.precision}"
        + (f", {parts.module.loop.k} steps per call" if parts.module.loop.k > 1 else "")
        + grid_backend(parts.field.network, trainer.strategy.root_device)
    )


def grid_backend(network: Any, device: Any) -> str:
    """``, grid encoding: triton`` (or ``numba``, ``torch``) for a network with a grid encoding; else empty."""
    from nir.fields.encodings import GridEncoding

    grids = [m for m in network.modules() if isinstance(m, GridEncoding)]
    return f", grid encoding: {grids[0].backend_for(device)}" if grids else ""


def bound_line(metrics: dict[str, Any]) -> str:
    """The console's bound line (``bound.rel`` / ``bound.abs``), or nothing."""
    b = metrics.get("bound")
    if not b:
        return ""
    worst = metrics.get("max_rel_error", metrics.get("max_abs_error"))
    what = f"relative {b['value']:g} (floor {b['floor']:.3g})" if b["kind"] == "rel" else f"absolute {b['value']:g}"
    below = metrics.get("below_floor_values") or 0
    if below:  # a floor the user set above some values: they are held to eps * floor, not eps * |y|
        what += f", {below:,} non-zero values below the floor held to {b['value']:g} x floor"
    return (f"bound: {what}; measured max error {worst:.4g} over every sample of the grid; "
            f"{metrics['bytes_network']:,} bytes network + {metrics['bytes_residual']:,} bytes residual\n")  # fmt: skip


def magnitude_line(metrics: dict[str, Any]) -> str:
    """The per-magnitude summary of a long-tailed field: worst and top decade, and how many of
    the below-floor samples (zeros) the field keeps below the floor."""
    worst, top, kept = (metrics.get(k) for k in ("worst_decade_median", "top_decade_median", "below_floor_kept"))
    line = f"worst-decade median relative error {worst:.3g} (= {worst:.2%}"
    if top is not None and math.isfinite(top):
        line += f"; top decade {top:.2%}"
    if kept is not None and math.isfinite(kept):
        line += f"; below-floor samples kept below it {kept:.1%}"
    return line + "; per-decade table in metrics.json)\n"


def heldout_line(metrics: dict[str, Any]) -> str:
    """The console's held-out line (``data.holdout``), or nothing."""
    if metrics.get("psnr_heldout") is None:
        return ""
    worst = metrics.get("heldout_worst_decade_median")
    return (
        f"held out ({metrics['holdout']}): PSNR {metrics['psnr_heldout']:.2f} dB on samples never trained on, "
        f"{metrics['psnr_train']:.2f} dB on the training samples"
        + (f"; held-out worst-decade median relative error {worst:.3g} (= {worst:.2%})" if worst is not None else "")
        + "\n"
    )


def lossless_line(metrics: dict[str, Any]) -> str:
    """One line where the stored field is larger than the data losslessly coded (``lossless_bytes``)."""
    lossless = metrics.get("lossless_bytes")
    if lossless is None or metrics["bytes"] <= lossless:
        return ""
    return (
        f"note: the stored field is larger than the data losslessly coded (zstd: {lossless:,} bytes): "
        "a field earns no bytes here; keep the data itself, or ask for fewer bytes (size.ratio=..., store.bits=...)\n"
    )


def summary(metrics: dict[str, Any], run_dir: Path, data_range: float) -> str:
    """The lines a run ends with: steps, time and PSNR; the stored field's bytes; the magnitude,
    bound and held-out lines where they apply; where the run is and how to look at it."""
    finite = math.isfinite(metrics["psnr"])
    worst = metrics.get("worst_decade_median")
    masked = metrics.get("masked_samples")
    return (
        f"nir: {metrics['steps']} steps in {metrics['fit_time_s']:.1f} s, PSNR {metrics['psnr']:.2f} dB"
        + (f", SSIM {metrics['ssim']:.4f}" if metrics.get("ssim") is not None else "")
        + f" (fp32 evaluation of the final field, data range {data_range:g}, "
        f"{'all samples' if not masked else 'valid samples: ' + format(masked, ',') + ' masked'})"
        f"{'' if finite else ' (not finite!)'}\n"
        + f"stored field: {metrics['bytes']:,} bytes ({metrics['store_dtype']}; field.nir), compression ratio"
        f" {metrics['compression_ratio']:.3g}, {metrics['bits_per_sample']:.3g} bits per value"
        + (f", {metrics['bits_per_parameter']:.3g} bits per parameter" if metrics.get("num_params") else ", no network")
        + "\n"
        + lossless_line(metrics)
        + (magnitude_line(metrics) if worst is not None else "")
        + bound_line(metrics)
        + heldout_line(metrics)
        + f"run directory: {run_dir}"
        + (f"\nlook at it:    tensorboard --logdir {run_dir}" if (run_dir / "tb").is_dir() else "")
    )
