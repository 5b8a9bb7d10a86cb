"""The optimiser and its learning-rate schedule, chosen by the ``optim`` config group.

:class:`Adam` holds plain settings and builds ``torch.optim.Adam`` with one parameter group
per name that the network gives its parameters (``network.param_groups()`` when it has one,
else a single group ``"network"``), so parts that want their own settings (the tables of a
grid encoding: instant-ngp uses eps 1e-15, betas (0.9, 0.99), no weight decay) get them from
``optim.groups.<name>`` without code changes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from nir.errors import NirError, positive_float, require


def cosine_with_warmup(total: int, warmup: int, floor: float) -> Callable[[int], float]:
    """LR factor: linear warmup over ``warmup`` steps, then cosine from 1 to ``floor`` at ``total``."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))

    return f


def named_parameter_groups(network: nn.Module) -> dict[str, list[nn.Parameter]]:
    """``{group name: parameters}`` of ``network``: its own ``param_groups()`` or one group."""
    if hasattr(network, "param_groups"):
        return dict(network.param_groups())
    return {"network": list(network.parameters())}


class Adam:
    """Adam (Kingma & Ba, arXiv:1412.6980) with a cosine or constant learning-rate schedule.

    Args:
        lr, betas, eps, weight_decay: ``torch.optim.Adam``'s arguments, for every group.
        schedule: ``"cosine"`` (linear warm-up over ``warmup_steps``, then a cosine decay to
            ``min_lr_ratio * lr`` at the last step) or ``"constant"``.
        groups: per-group overrides of ``lr``, ``betas``, ``eps``, ``weight_decay`` by group
            name, e.g. ``{"tables": {"eps": 1e-15, "weight_decay": 0}}``.
    """

    KEYS = ("lr", "betas", "eps", "weight_decay")

    def __init__(
        self,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        schedule: str = "cosine",
        warmup_steps: int = 0,
        min_lr_ratio: float = 0.01,
        groups: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        positive_float("optim.lr", lr)
        positive_float("optim.eps", eps)
        require(schedule in ("cosine", "constant"), f"optim.schedule must be 'cosine' or 'constant', got {schedule!r}")
        require(
            len(betas) == 2 and all(0 <= b < 1 for b in betas),
            f"optim.betas must be two numbers in [0, 1), got {list(betas)}",
        )
        require(weight_decay >= 0, f"optim.weight_decay must be >= 0, got {weight_decay!r}")
        groups = {k: dict(v) for k, v in (groups or {}).items()}
        for name, g in groups.items():
            bad = sorted(set(g) - set(self.KEYS))
            require(not bad, f"optim.groups.{name}: unknown key(s) {', '.join(bad)}; use {', '.join(self.KEYS)}")
        self.defaults = {
            "lr": float(lr),
            "betas": tuple(float(b) for b in betas),
            "eps": float(eps),
            "weight_decay": float(weight_decay),
        }
        self.schedule, self.warmup_steps, self.min_lr_ratio = schedule, int(warmup_steps), float(min_lr_ratio)
        self.groups = groups

    def build(self, network: nn.Module, max_steps: int) -> Any:
        """What ``LightningModule.configure_optimizers`` returns for ``network``."""
        named = named_parameter_groups(network)
        unknown = sorted(set(self.groups) - set(named))
        if unknown:
            raise NirError(
                f"optim.groups names {', '.join(unknown)}, but this network's parameter groups are {', '.join(named)}"
            )
        param_groups = []
        for name, params in named.items():
            extra = dict(self.groups.get(name, {}))
            if "betas" in extra:
                extra["betas"] = tuple(extra["betas"])
            named_key = {"name": name} if len(named) > 1 else {}  # one group keeps the "lr-Adam" tag
            param_groups.append({"params": params, **named_key, **extra})
        opt = torch.optim.Adam(param_groups, **self.defaults)
        if self.schedule == "constant":
            return opt
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, cosine_with_warmup(max_steps, self.warmup_steps, self.min_lr_ratio)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
