"""``sampling=auto`` (``data=array``'s default): decided when the run starts, with the loss."""

from __future__ import annotations

#: transforms that make a log space (every decade the same relative weight)
LOG_SPACES = ("nir.transforms.Log", "nir.transforms.Asinh", "nir.transforms.SignedLog")


class Auto:
    """A placeholder that :func:`nir.run.resolve.choose_sampling` replaces before anything is built."""

    def __init__(self) -> None:  # pragma: no cover - resolved before building
        raise RuntimeError("sampling=auto must be resolved with nir.run.resolve.choose_sampling before building")


def choose_sampling(long_tailed: bool, transform: str) -> tuple[str, str]:
    """``(sampling option, reason)``: ``decades`` (every magnitude decade an equal share of each
    batch, as the 3-D presets measured best) for a long-tailed signal fitted in a log space
    (``transform=log``, ``asinh`` or ``slog``: what ``loss=auto`` picks for one), else ``uniform``."""
    space = transform.rsplit(".", 1)[-1].lower()
    if long_tailed and transform in LOG_SPACES:
        return "decades", f"a long-tailed field fitted in {space} space"
    return "uniform", f"{'a long-tailed field' if long_tailed else 'a field'} fitted in {space} space"
