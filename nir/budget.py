"""A byte budget instead of a shape (``size.bytes=50000`` or ``size.ratio=100``): before
training, the chosen network's size knob is set to the largest value whose stored field file
(at ``store.dtype``, header included) fits the budget, as neurcomp's ``--compression_ratio``.

The knob is ``model.encoding.log2_hashmap_size`` for grid encodings (the table size) and
``model.hidden_dim`` for MLPs (the width); the file size grows with either, so a binary search
over the knob finds it. Each candidate is built and serialised in memory (a few ms to a second).
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from nir.errors import NirError, require

KNOBS = {"encoding.log2_hashmap_size": (4, 24), "hidden_dim": (1, 4096)}  # paths in the model node, first found wins


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


def fit_to_budget(cfg: DictConfig, signal: Any, dims: dict[str, Any], stored_bytes) -> str | None:
    """Set the model's size knob in ``cfg`` to the largest value whose field file fits the
    budget; return the one line that says what was chosen (None without a budget).
    ``stored_bytes(model_node) -> int`` builds a candidate field and measures its file."""
    budget = budget_bytes(cfg, signal)
    if budget is None:
        return None
    knob = next((k for k in KNOBS if OmegaConf.select(cfg.model, k) is not None), None)
    require(knob is not None, "size.bytes / size.ratio need a model with encoding.log2_hashmap_size or hidden_dim")
    lo, hi = KNOBS[knob]

    def size_at(value: int) -> int:
        node = cfg.model.copy()
        with open_dict(node):
            OmegaConf.update(node, knob, value)
        return stored_bytes(node)

    if size_at(lo) > budget:
        raise NirError(
            f"no model.{knob} fits {budget:,} bytes (the smallest, {knob}={lo}, stores {size_at(lo):,}); "
            "raise the budget or choose a smaller model"
        )
    while lo < hi:  # the largest value that fits
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if size_at(mid) <= budget else (lo, mid - 1)
    with open_dict(cfg):
        OmegaConf.update(cfg.model, knob, lo)
    return f"size: budget {budget:,} bytes -> model.{knob}={lo} ({size_at(lo):,} bytes, store.dtype={cfg.store.dtype})"
