"""Components named in a field's spec: import a class by its path under the trusted-module rule,
build it from plain keyword arguments, and describe a built one. Below the networks and the
reuse API (both use it; it imports only torch and nir.errors)."""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable
from typing import Any

from torch import nn

from nir.errors import NirError, require

TRUSTED_ENV = "NIR_TRUSTED_MODULES"


def trusted_prefixes(trusted: Iterable[str] = ()) -> tuple[str, ...]:
    """Module prefixes a field spec may name: ``nir``, the ``trusted`` argument, and the
    comma-separated ``NIR_TRUSTED_MODULES`` environment variable."""
    env = [p.strip() for p in os.environ.get(TRUSTED_ENV, "").split(",") if p.strip()]
    return ("nir", *(str(p).strip() for p in trusted if str(p).strip()), *env)


def import_class(target: str, trusted: Iterable[str] = ()) -> type:
    """Import ``target`` ("nir.fields.siren.Siren"), refusing modules outside the trusted prefixes.

    Nothing is unpickled: the spec names a class and gives plain keyword arguments, and only
    modules the user trusts are imported (importing runs a module's top-level code).
    """
    module, _, name = target.rpartition(".")
    prefixes = trusted_prefixes(trusted)
    require(
        any(module == p or module.startswith(p + ".") for p in prefixes),
        f"field spec names class {target!r}, outside the trusted modules ({', '.join(prefixes)}); "
        f"if you trust it, pass trusted=[{module.split('.')[0]!r}] to load_field or set {TRUSTED_ENV}={module.split('.')[0]}",
    )
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise NirError(
            f"field spec names unknown class {target!r}; was it saved by a newer nir, or is its module not importable?"
        ) from None
    require(isinstance(cls, type) and issubclass(cls, nn.Module), f"field spec: {target!r} is not a module class")
    return cls


def build_component(spec: dict[str, Any], trusted: Iterable[str] = ()) -> nn.Module:
    """Build ``{"target": "module.Class", "kwargs": {...}}`` (plain values only)."""
    cls = import_class(spec["target"], trusted)
    kwargs = dict(spec.get("kwargs", {}))
    if hasattr(cls, "upgrade_kwargs"):  # a class that reads the specs of its earlier versions
        kwargs = cls.upgrade_kwargs(kwargs)
    return cls(**kwargs)


def component_spec(obj: nn.Module, kwargs: dict[str, Any]) -> dict[str, Any]:
    cls = type(obj)
    return {"target": f"{cls.__module__}.{cls.__qualname__}", "kwargs": dict(kwargs)}
