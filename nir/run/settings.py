"""A run's settings, resolved once and frozen: the config with every choice in place, the stored
form (``store``), the error bound (``bound``), the precision, the optimizer steps per call, what
the ``auto`` rules chose, and the job it runs in (one run, or one job of a Hydra multirun).
:func:`nir.run.resolve.resolve_settings` makes :class:`Settings` once per run; the parts are
built from it and every later step reads it from :class:`nir.run.parts.Parts`. Also the one
place the keywords of a compression run are spelled (:data:`COMPRESSION_KEYS`,
:func:`fit_overrides`). Nothing here imports Lightning.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:  # the stored precision imports torch: not needed to spell a compression's settings
    from nir.codec.storage import Store


@dataclass(frozen=True)
class Job:
    """The Hydra job a run is (``hydra`` None outside Hydra): a multirun job or not, its swept
    keys (a sweep's record, :mod:`nir.run.sweep`) and the overrides it was given (None: composed by hand)."""

    multirun: bool = False
    hydra: Any = None
    swept: Sequence[str] = ()
    task: Sequence[str] | None = None


@dataclass(frozen=True)
class Settings:
    """What a run resolved, once: ``config`` (the composed config with the choices in place,
    read-only: what ``config.yaml`` records), ``store`` (:class:`~nir.codec.storage.Store`), the
    resolved ``precision``, the ``bound`` (:class:`~nir.codec.bound.Bound` or None), the ``job``,
    ``chosen`` (``{group: option}`` the ``auto`` rules chose), ``steps_per_call`` and the lines
    the choices printed."""

    config: DictConfig
    store: Store
    precision: str
    bound: Any = None
    job: Job = field(default_factory=Job)
    chosen: Mapping[str, str] = field(default_factory=dict)
    steps_per_call: int = 1
    lines: tuple[str, ...] = ()
    network: str = "always"  # under a bound: always (a network is trained) or never (bound.network)


def store_of(cfg: DictConfig) -> Store:
    """The ``store`` settings of a config, checked (one line for a setting that is not one)."""
    from nir.codec.storage import Store

    return Store.of(OmegaConf.to_container(cfg.store, resolve=True) if "store" in cfg else {})


def hydra_job() -> tuple[bool, Any]:
    """(is this a multirun job, Hydra's config) — (False, None) outside Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        return hc.mode == RunMode.MULTIRUN, hc
    except Exception:
        return False, None


def job_of(overrides: Sequence[str] | None = None) -> Job:
    """The job this process runs (``overrides``: the run's own, when given; else Hydra's)."""
    from nir.run.sweep import read_swept

    multirun, hc = hydra_job()
    task = list(overrides) if overrides is not None else list(hc.overrides.task) if hc is not None else None
    return Job(multirun, hc, read_swept(hc.sweep.dir) if multirun else [], task)


def resolve_precision(precision: Any, accelerator: str) -> str:
    """``"auto"``: ``bf16-mixed`` where the hardware has native bf16 (CUDA with bf16, or a CPU
    with AMX / AVX512-BF16, where oneDNN runs bf16 matmuls natively), else ``"32"``.
    Any other value is passed to Lightning unchanged."""
    import torch

    if str(precision) != "auto":
        return str(precision)
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32"
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native = False
    return "bf16-mixed" if native else "32"


# ----------------------------------------------------------------------------- a compression's run
#: the network's budget under a bound: this share of the bytes the bound needs without a network
#: (the signal's own map through the context coder, estimated before training), at least
#: MIN_NETWORK_BYTES (``size.share``; why: docs/bounded.md, "The network's size for a bound")
NETWORK_SHARE = 0.01
MIN_NETWORK_BYTES = 1000


#: what a compression run needs of nir-train's outputs: the field, not its TensorBoard events,
#: images or checkpoints (the run directory is temporary)
LEAN = ["log.images=false", "log.tensorboard=false", "callbacks.checkpoint=null", "+trainer.enable_checkpointing=false"]


#: the settings of a compression, the one place they are spelled: ``nir-compress``'s options, the
#: chunk codec's arguments (:class:`nir.interop.chunks.Nir`, and so its stored configuration) and
#: :func:`fit_overrides`'s keywords
COMPRESSION_KEYS = ("rel", "abs", "ratio", "floor", "preset", "steps", "network")
#: ``bound.network``: train a network under a bound always, never, or by nir's rule (auto)
NETWORK_CHOICES = ("auto", "always", "never")


def fit_overrides(quiet: bool = False, **settings: Any) -> list[str]:
    """The ``nir.fit`` overrides of a compression (``nir-compress``, the chunk codec) from its
    settings (:data:`COMPRESSION_KEYS`, None for unset): the bound, the network's budget
    (``ratio``, else :data:`NETWORK_SHARE` of what the bound costs without a network), the
    preset and steps; ``quiet``: no progress display."""
    unknown = sorted(set(settings) - set(COMPRESSION_KEYS))
    if unknown:
        raise TypeError(
            f"fit_overrides: unknown setting(s) {', '.join(unknown)}; it takes {', '.join(COMPRESSION_KEYS)}"
        )
    s = {k: settings.get(k) for k in COMPRESSION_KEYS}
    bounded = s["rel"] is not None or s["abs"] is not None
    overrides = list(LEAN)
    overrides += [f"bound.{k}={s[k]}" for k in ("rel", "abs", "floor") if s[k] is not None]
    if s["ratio"] is not None:
        overrides.append(f"size.ratio={s['ratio']}")
    elif bounded:
        overrides.append(f"size.share={NETWORK_SHARE}")
    overrides += [f"model={s['preset']}"] if s["preset"] else []
    overrides += [f"bound.network={s['network'] or 'auto'}"] if bounded else []
    steps = s["steps"]
    overrides += [f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}"] if steps else []
    overrides += ["trainer.enable_progress_bar=false"] if quiet else []
    return overrides
