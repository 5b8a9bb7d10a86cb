"""Which process of a run this is: the one rank-zero rule.

A run's first process (global rank 0) alone prints, holds the run directory's lock, writes the
field and the metrics, and logs to TensorBoard. Whether this process is it has one answer,
:func:`first_process`, used everywhere (console lines, the lock, the run's files, the callbacks):

- every launcher variable that is set says 0: ``RANK`` (torchrun, Lightning), ``SLURM_PROCID``
  (srun), ``LOCAL_RANK`` and ``NODE_RANK`` (Lightning's DDP children on each node). ``LOCAL_RANK``
  alone is 0 on every node's first process, so a multi-node run needs the others too;
- once Lightning is imported, its global rank agrees (it knows ddp_spawn's children, which get
  no variables, and sets it from the strategy once training starts).
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

#: the launchers' rank variables (each, where set, is 0 on the first process)
RANK_VARIABLES = ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK")


def _lightning_rank() -> int | None:
    """Lightning's global rank of this process, when Lightning is loaded (never imported here)."""
    module = sys.modules.get("lightning_fabric.utilities.rank_zero")
    rank = getattr(getattr(module, "rank_zero_only", None), "rank", None)
    return rank if isinstance(rank, int) else None


def first_process() -> bool:
    """Whether this is the run's first process (global rank 0)."""
    if any(os.environ.get(k, "0").strip() not in ("", "0") for k in RANK_VARIABLES):
        return False
    return _lightning_rank() in (None, 0)


def on_first_process(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``fn`` on the first process only (elsewhere it returns None): for callback hooks and
    logger methods."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs) if first_process() else None

    return wrapper
