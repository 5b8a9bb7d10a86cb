"""``model=auto`` (``data=array``'s default): the network chosen from the signal's dimension and
size when the run starts (:func:`choose`), printed in one line as ``loss=auto`` is.

The choice is the option a user would have typed: the run's config is composed again with
``model=<choice>`` among its overrides (:func:`nir.run.resolve.resolve_auto_model`), so the one
precedence rule holds (command line, then the model's own optimiser settings, then the data
preset's, then the defaults) and ``config.yaml`` records the chosen model.
"""

from __future__ import annotations

from torch import nn

#: a 3-D or 4-D field up to this many samples gets the compact grid sized on the 48^3 presets
COMPACT_SAMPLES = 1 << 21


class Auto(nn.Module):
    """A placeholder that :func:`nir.run.resolve.resolve_auto_model` replaces before anything is built."""

    def __init__(self) -> None:  # pragma: no cover - resolved before building
        raise RuntimeError("model=auto must be resolved with nir.run.resolve.resolve_auto_model before building")


#: a 2-D field's SIREN is sized by the byte budget to this compression ratio (docs/long-tail.md, "Real fields")
RATIO_2D = 2
#: ... from this many samples (64^2, the smallest real field measured); smaller ones keep SIREN's width
SIZED_2D = 4096


def choose_model(ndim: int, numel: int) -> tuple[str, str, list[str]]:
    """``(model option, reason, size overrides)`` for a signal of ``ndim`` grid axes and ``numel``
    samples. The size overrides apply when the run sets no size or bound of its own.

    - 1-D: ``fourier_lt``, the peaks1d preset's network (docs/long-tail.md);
    - 2-D: ``siren`` sized by the byte budget to ``size.ratio=RATIO_2D`` from ``SIZED_2D``
      samples (its width from the signal: a network smaller than its data), measured best on real long-tailed 2-D fields
      against the compact grid at equal bytes (docs/long-tail.md, "Real fields");
    - 3-D and 4-D up to ``COMPACT_SAMPLES``: ``hashgrid_lt3d``, the 3-D presets' network
      (measured best on lognormal3d and sources3d at 48^3);
    - larger 3-D and 4-D: ``hashgrid``, tiny-cuda-nn's sizes (16 levels, 2^16-entry tables).
    """
    what = f"{ndim}-D field of {numel:,} samples"
    if ndim == 1:
        return "fourier_lt", what, []
    if ndim == 2:
        return "siren", what, ([f"size.ratio={RATIO_2D}"] if numel >= SIZED_2D else [])
    if numel <= COMPACT_SAMPLES:
        return "hashgrid_lt3d", what, []
    return "hashgrid", f"{what} (more than {COMPACT_SAMPLES:,})", []
