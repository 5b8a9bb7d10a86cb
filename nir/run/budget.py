"""A byte budget instead of a shape (``size.bytes=50000`` or ``size.ratio=100``): before
training, the network's size is chosen so that its compact field file (``field.nir``, header
included, integers at N bits each: the entropy coder only makes it smaller) fits the budget.

- **Grid networks** (a ``model.encoding.log2_hashmap_size``): a ladder of setups, from the
  preset's own structure to a 2-level grid with a 4-wide head (:data:`LADDER`: levels, features
  per level, MLP width and depth, and the stored bits where the user left ``store`` at its
  default). On each rung the table size is the largest that fits; the first rung whose table is
  at least its ``min_log2`` is taken. The ladder's order is what ``scripts/bench_budget.py``
  measured best per budget (docs/compression.md).
- **MLPs** (``model.hidden_dim``): the width is the largest that fits, at the configured store.

Each candidate is built and serialised in memory (a few ms to a second). The choice is returned
as a value (:class:`Sized`); :func:`nir.run.resolve.resolve_settings` puts it into the run's
settings, so nothing rewrites the composed config.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from nir.errors import NirError, require
from nir.run.config import with_keys

TABLE = "encoding.log2_hashmap_size"
KNOBS = {TABLE: (4, 24), "hidden_dim": (1, 4096)}  # paths in the model node, first found wins

#: grid setups from the largest to the smallest: model overrides, stored bits (when the user left
#: store.dtype / store.bits at their defaults) and the smallest table worth training on the rung
LADDER: list[tuple[dict[str, Any], int, int]] = [
    ({}, 8, 10),
    ({}, 6, 8),
    ({"encoding.n_levels": 6, "hidden_dim": 16}, 6, 7),
    ({"encoding.n_levels": 4, "hidden_dim": 8}, 5, 6),
    ({"encoding.n_levels": 4, "encoding.n_features_per_level": 1, "hidden_dim": 8}, 4, 5),
    ({"encoding.n_levels": 2, "encoding.n_features_per_level": 1, "hidden_dim": 4}, 4, 4),
]


@dataclass(frozen=True)
class Sized:
    """What a budget chose: the model keys to set (``{"hidden_dim": 37}``), the stored bits
    (None: the run's store as configured) and the one line that says so."""

    model: dict[str, Any]
    bits: int | None
    line: str


def budget_bytes(cfg: DictConfig, signal: Any) -> int | None:
    """The budget in bytes from ``size.bytes`` or ``size.ratio`` (None when neither is set)."""
    size = cfg.get("size") or {}
    nbytes, ratio = size.get("bytes"), size.get("ratio")
    require(nbytes is None or ratio is None, "set size.bytes or size.ratio, not both")
    if nbytes is not None:
        require(isinstance(nbytes, int) and nbytes > 0, f"size.bytes must be a positive integer, got {nbytes!r}")
        return int(nbytes)
    if ratio is not None:
        require(float(ratio) > 0, f"size.ratio must be a positive number, got {ratio!r}")
        return int(4 * signal.numel * signal.channels / float(ratio))
    return None


def _largest(size_at: Callable[[int], int], lo: int, hi: int, budget: int) -> int | None:
    """The largest value in [lo, hi] whose size fits ``budget`` (sizes grow with the value)."""
    if size_at(lo) > budget:
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if size_at(mid) <= budget else (lo, mid - 1)
    return lo


def _fill(cfg: DictConfig, keys: dict[str, Any], dtype: str, budget: int, stored_bytes) -> dict[str, Any]:
    """``keys`` with the MLP head as wide as the budget allows at that table (issue 45: a table
    of 2^k entries left up to half a budget unused; the sized file now lands within 10 % of it,
    the entropy coder taking a few per cent more: docs/compression.md)."""
    width = int(keys.get("hidden_dim", OmegaConf.select(cfg.model, "hidden_dim") or 0))
    if width <= 0:
        return keys

    def size_at(h: int) -> int:
        return stored_bytes(with_keys(cfg.model, {**keys, "hidden_dim": h}), dtype)

    wider = _largest(size_at, width, KNOBS["hidden_dim"][1], budget)
    return keys if wider is None or wider == width else {**keys, "hidden_dim": wider}


def fit_to_budget(cfg: DictConfig, budget: int | None, dtype: str, stored_bytes) -> Sized | None:
    """The model's size (and, on the grid ladder, the stored bits) whose field file fits
    ``budget`` bytes (None: no budget, no choice). ``dtype``: the run's stored precision;
    ``stored_bytes(model_node, dtype) -> int`` builds a candidate and measures its file."""
    if budget is None:
        return None
    knob = next((k for k in KNOBS if OmegaConf.select(cfg.model, k) is not None), None)
    require(knob is not None, "size.bytes / size.ratio need a model with encoding.log2_hashmap_size or hidden_dim")
    store = cfg.get("store") or {}
    user_store = store.get("bits") is not None or str(store.get("dtype", "auto")) != "auto"
    rungs = LADDER if knob == TABLE else [({}, None, KNOBS[knob][0])]
    smallest = None
    for overrides, bits, min_value in rungs:
        rung_dtype = dtype if (user_store or bits is None) else f"int{bits}"
        lo, hi = KNOBS[knob]

        def size_at(value: int, overrides=overrides, rung_dtype=rung_dtype) -> int:
            return stored_bytes(with_keys(cfg.model, {**overrides, knob: value}), rung_dtype)

        chosen = _largest(size_at, max(lo, min_value), hi, budget)
        if smallest is None or size_at(max(lo, min_value)) < smallest[0]:
            smallest = (size_at(max(lo, min_value)), overrides, min_value, rung_dtype)
        if chosen is None:
            continue
        keys = {**overrides, knob: chosen}
        if knob == TABLE:  # a table doubles a step: the head's width takes what the step left
            keys = _fill(cfg, keys, rung_dtype, budget, stored_bytes)
        setup = ", ".join(f"model.{k}={v}" for k, v in keys.items())
        nbytes = stored_bytes(with_keys(cfg.model, keys), rung_dtype)
        line = f"size: budget {budget:,} bytes -> {setup}, store {rung_dtype} ({nbytes:,} bytes before entropy coding)"
        return Sized(keys, int(rung_dtype[3:]) if rung_dtype != dtype else None, line)
    nbytes, overrides, value, rung_dtype = smallest
    setup = ", ".join(f"{k}={v}" for k, v in {**overrides, knob: value}.items())
    raise NirError(
        f"no network fits {budget:,} bytes (the smallest setup, {setup} at {rung_dtype}, stores {nbytes:,}); "
        "raise the budget (size.bytes / size.ratio) or choose a smaller model"
    )
