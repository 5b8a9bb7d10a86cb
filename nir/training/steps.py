"""How optimizer steps run inside one Lightning training step (issue 16).

A small field's step is tens of microseconds of arithmetic on a GPU, so the host's work per
step (Lightning's hooks, Python, hundreds of kernel launches) is the step's time. Two levers,
both exact in optimizer steps:

- ``steps_per_call=K``: one Lightning training step runs K optimizer steps (manual
  optimisation), so Lightning's per-batch work is paid once per K steps. Validation, logging and
  the end of training happen at the same optimizer steps as with K=1: K is reduced to the
  largest divisor of their common step count (:func:`effective_steps_per_call`).
- ``cuda_graph``: on CUDA, the whole step (forward, loss, backward, clipping, Adam, the
  non-finite flag) is captured once in a CUDA graph (:class:`CapturedStep`) and replayed; the
  host only copies the batch's indices into the graph's static buffer and fills the learning
  rate. Where capture is impossible the run stays eager and :func:`graph_blocker` says why.

Nothing here imports Lightning; the module (``nir.training.module``) wires it in.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from nir.errors import require

#: optimizer steps per training call where ``steps_per_call=auto``, from measurements
#: (docs/performance.md): on an H100 Lightning's work per call is ~1.4 ms of host time
#: against 0.27 ms for a whole captured SIREN step at batch 64, so 25 steps make it ~5 %; on a
#: CPU a step at nir's batch sizes is 30-110 ms and K > 1 saves < 1 %, so the loop stays plain
AUTO_STEPS_PER_CALL = {"cuda": 25, "cpu": 1}

#: eager steps before capture: the optimizer's state, cuBLAS workspaces and allocator pools exist
#: before the graph records them (PyTorch's whole-network capture recipe uses three)
WARMUP_STEPS = 3


def resolve_steps_per_call(value: Any, accelerator: str) -> int:
    """``steps_per_call`` from the config: an integer >= 1, or ``auto`` (per device type)."""
    if str(value) == "auto":
        return AUTO_STEPS_PER_CALL["cuda" if accelerator in ("gpu", "cuda") else "cpu"]
    try:
        k = int(value)
    except (TypeError, ValueError):
        k = 0
    if k < 1 or str(k) != str(value).strip():
        raise ValueError(f"steps_per_call must be an integer >= 1 or auto, got {value!r}")
    return k


def effective_steps_per_call(requested: int, *every: int) -> int:
    """The largest divisor of the events' common step count that is <= ``requested``.

    ``every`` are the step counts at which something must happen between two calls (the end of
    training, a validation, a scalar log): each call ends on each of them exactly."""
    g = 0
    for e in every:
        if e and e > 0:
            g = math.gcd(g, int(e))
    if g == 0:
        return requested
    return max(d for d in range(1, min(requested, g) + 1) if g % d == 0)


def graph_blocker(device: torch.device, precision: str, streaming: bool, world: int) -> str | None:
    """Why the step cannot be captured in a CUDA graph here, or ``None`` when it can
    (``compile=true`` can: Inductor's kernels are captured like any others, measured on an H100)."""
    if device.type != "cuda":
        return "CUDA graphs need a CUDA device"
    if "16" in precision and "bf16" not in precision:
        return "16-mixed's gradient scaler checks for overflow on the host at every step (use bf16-mixed)"
    if streaming:
        return "the block cache streams values from the host at irregular steps"
    if world > 1:
        return "DDP's gradient all-reduce is not captured by nir"
    return None


def to_capturable(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Make Adam capturable in place: its learning rate and step counters live on the device,
    so a replayed graph reads the scheduled rate and bias corrections instead of baked-in numbers."""
    for group in optimizer.param_groups:
        group["capturable"] = True
        if not isinstance(group["lr"], Tensor):
            group["lr"] = torch.tensor(float(group["lr"]), device=device)
    for state in optimizer.state.values():
        if "step" in state:
            state["step"] = state["step"].to(device=device, dtype=torch.float32)


def sync_lr(optimizer: torch.optim.Optimizer, lr_tensors: list[Tensor]) -> None:
    """Keep each group's learning rate in its device tensor after a scheduler step (a scheduler
    that assigns a float instead of filling the tensor would otherwise detach it from the graph)."""
    for group, t in zip(optimizer.param_groups, lr_tensors):
        if group["lr"] is not t:
            t.fill_(float(group["lr"]))
            group["lr"] = t


class StepHealth(nn.Module):
    """The training steps' health, counted on the device so that no step waits for the host:
    non-finite losses (how many, the first one's step and value), the steps the 16-mixed gradient
    scaler skipped, and the step number a captured graph reads. Every update is in place, so a
    CUDA graph that captured it keeps updating the same buffers. The DivergenceGuard reads them.
    A non-finite gradient with a finite loss makes the weights non-finite, and so the next step's
    loss; ``FieldModule.flag_nonfinite_weights`` covers the last step before a validation or the end."""

    def __init__(self) -> None:
        super().__init__()
        for name, value in [("nonfinite_steps", 0), ("first_bad_step", -1), ("skipped_steps", 0), ("step", 0)]:
            self.register_buffer(name, torch.full((), value, dtype=torch.long), persistent=False)
        self.register_buffer("first_bad_loss", torch.zeros(()), persistent=False)
        self.register_buffer("last_scale", torch.full((), float("inf")), persistent=False)

    def flag(self, value: Tensor, step: int | Tensor) -> None:
        """Count a non-finite ``value`` at optimizer step ``step``."""
        self.flag_many([value], step)

    def flag_many(self, losses: list[Tensor], first_step: int | Tensor) -> None:
        """Count the non-finite ones among the losses of consecutive steps from ``first_step``,
        in one pass (a call's eager steps: a dozen small ops per call instead of per step)."""
        v = torch.stack(losses).float()
        bad = ~torch.isfinite(v)
        self.nonfinite_steps += bad.sum()
        i = torch.argmax(bad.int())  # the first non-finite one, where there is one
        newly = bad.any() & (self.first_bad_step < 0)
        self.first_bad_loss.copy_(torch.where(newly, v[i], self.first_bad_loss))
        self.first_bad_step.copy_(torch.where(newly, first_step + i, self.first_bad_step))

    def track_scale(self, scaler: Any) -> None:
        """16-mixed: count a skipped step (the gradient scaler halves its scale when it skips)."""
        if scaler is not None and getattr(scaler, "_scale", None) is not None:
            scale = scaler._scale.detach().reshape(())
            self.skipped_steps += (scale < self.last_scale).long()
            self.last_scale.copy_(scale)


def plain_step(
    forward_loss: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]],
    targets_at: Callable[[Tensor], Tensor],
    optimizer: torch.optim.Optimizer,
    health: StepHealth,
    clip: float | None,
    bf16: bool,
    flag: bool = True,
) -> Callable[..., tuple[Tensor, Tensor, Tensor]]:
    """One whole optimizer step in plain torch, ``step(idx, target=None) -> (loss, output,
    target)``: the training forward ``forward_loss(idx, target)`` (the target gathered with
    ``targets_at(idx)`` where not given: inside a graph), backward, gradient-norm clipping, the
    optimizer update and (``flag``) the non-finite flag at ``health.step``. Gradients must be
    ``None`` or zero before it. The same function runs eagerly or inside a CUDA graph capture."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    device_type = health.step.device.type

    def step(idx: Tensor, target: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        target = targets_at(idx) if target is None else target
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16, cache_enabled=False):
            loss, out = forward_loss(idx, target)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip, foreach=True)
        optimizer.step()
        if flag:
            health.flag(loss.detach(), health.step)
        return loss, out, target

    return step


class CapturedStep:
    """A :func:`plain_step` as a CUDA graph with a static index buffer of ``batch`` indices.

    The first :data:`WARMUP_STEPS` calls run the step eagerly on a side stream (they are real
    steps), the next captures it and replays it at once (capture records without running), and
    every later call only copies the indices in and replays. ``static`` holds the captured
    loss, output and target, rewritten by every replay. The optimizer is made capturable here.
    """

    def __init__(self, step: Callable[..., tuple[Tensor, Tensor, Tensor]], optimizer: Any, batch: int) -> None:
        device = next(p for g in optimizer.param_groups for p in g["params"]).device
        to_capturable(optimizer, device)
        self.static_idx = torch.zeros(batch, dtype=torch.long, device=device)
        self.static: dict[str, Tensor] = {}
        self.body = lambda: self.static.update(zip(("loss", "out", "target"), step(self.static_idx)))
        self.zero_grad = lambda: optimizer.zero_grad(set_to_none=True)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.warm = 0
        self.side = torch.cuda.Stream(device=device)

    def __call__(self, idx: Tensor) -> None:
        self.static_idx.copy_(idx, non_blocking=True)
        if self.graph is not None:
            self.graph.replay()
            return
        if self.warm < WARMUP_STEPS:
            self.side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.side):
                self.zero_grad()
                self.body()
            torch.cuda.current_stream().wait_stream(self.side)
            self.warm += 1
            return
        self.zero_grad()  # gradients are allocated inside the graph's pool, written by every replay
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.body()
        self.graph = graph
        graph.replay()


class StepLoop:
    """A training call's optimizer steps: ``K`` of them (fewer only where ``max_steps`` ends the
    run), each replayed from the captured graph, or run eagerly as the same :func:`plain_step`,
    or (DDP, a gradient scaler) through Lightning's ``manual_backward`` and optimizer wrapper
    (``module.eager_step``); the learning-rate schedule is stepped after each one and the last
    step of a logging call is logged (``module.log_step``). Duck-typed on the Lightning module,
    so this file stays free of Lightning."""

    def __init__(self, steps_per_call: int = 1, cuda_graph: bool | str = "auto", clip: float | None = None) -> None:
        self.k, self.cuda_graph, self.clip = int(steps_per_call), cuda_graph, clip
        self.captured: CapturedStep | None = None
        self.step: Callable[..., tuple[Tensor, Tensor, Tensor]] | None = None  # plain_step, eager
        self.lr_tensors: list[Tensor] = []
        self.checked = False

    def reset(self) -> None:
        """Decide the step again at the next call (the forward changed: quantisation-aware
        training began), so a CUDA graph is captured anew rather than replaying the old forward."""
        self.captured, self.step, self.lr_tensors, self.checked = None, None, [], False

    def check_resume(self, k: int) -> None:
        """A checkpoint written with ``k`` steps per call resumes only with ``k``: Lightning's
        call counters in it (validation and logging cadence) assume it."""
        require(k == self.k, f"resume: the checkpoint was trained with steps_per_call={k}; pass steps_per_call={k}")

    def run(self, module: Any, opt: Any, sched: Any, data: Any) -> Tensor:
        captured = self._graph(module, opt, data)
        trainer = module.trainer
        n = max(1, min(self.k, trainer.max_steps - module.global_step))
        # self.log costs ~0.3 ms of host time per call; Lightning writes only on its logging calls
        every = trainer.log_every_n_steps * self.k
        log_now = every > 0 and (module.global_step + n) % every == 0
        first, losses = module.global_step, []
        for i in range(n):
            idx, target = data.next_batch()
            if captured is None and self.step is None:  # DDP or a gradient scaler: Lightning's own path
                loss, out = module.eager_step(opt, data, idx, target)
            elif captured is not None:
                module.health.step.fill_(module.global_step)
                captured(idx)
                loss, out, target = captured.static["loss"], captured.static["out"], captured.static["target"]
            else:
                opt.optimizer.zero_grad(set_to_none=True)
                loss, out, target = self.step(idx, target)
                losses.append(loss.detach())
            if captured is not None or self.step is not None:
                opt._on_before_step()  # the step bypassed LightningOptimizer.step: count it as that does
                opt._on_after_step()
            if log_now and i == n - 1:  # the last step's loss and learning rate (before the schedule moves on)
                module.log_step(loss, out, target, data, opt.optimizer)
            if sched is not None:
                sched.step()
                if captured is not None:
                    sync_lr(opt.optimizer, self.lr_tensors)
        if losses:  # the eager plain steps' non-finite flags, once per call
            module.health.flag_many(losses, first)
        return loss

    def _graph(self, module: Any, opt: Any, data: Any) -> CapturedStep | None:
        """Decided at the first call: the captured step where it can be captured; else the
        plain step run eagerly (one process, no gradient scaler), else Lightning's own optimizer
        path (``module.eager_step``). A graph that was asked for but is off gets one line why
        (on CUDA, or where ``cuda_graph=true``)."""
        if self.checked:
            return self.captured
        self.checked = True
        trainer, device = module.trainer, module.device
        precision, world = str(trainer.precision), trainer.world_size

        def make(flag: bool) -> Callable[..., tuple[Tensor, Tensor, Tensor]]:
            return plain_step(
                lambda idx, target: module.forward_loss(data, idx, target), data.targets_at, opt.optimizer,
                module.health, self.clip, "bf16" in precision, flag=flag,
            )  # fmt: skip

        if world == 1 and getattr(trainer.precision_plugin, "scaler", None) is None:
            self.step = make(False)  # eager: the call's losses are flagged together (flag_many)
        why = graph_blocker(device, precision, data.streaming, world)
        if str(self.cuda_graph).lower() == "false":
            return None  # asked for eager: nothing to say
        if why is None and self.step is not None:
            self.captured = CapturedStep(make(True), opt.optimizer, data.sampler.batch)
            self.lr_tensors = [g["lr"] for g in opt.optimizer.param_groups]
        if why and (device.type == "cuda" or self.cuda_graph is True) and module.global_rank == 0:
            print(f"nir: CUDA graph off, steps run eagerly: {why}", flush=True)
        return self.captured
