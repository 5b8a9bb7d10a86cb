"""One run: the configuration (Hydra composition and checks, :mod:`~nir.run.config`), the
settings resolved once from it and the signal (:mod:`~nir.run.settings`, frozen), the parts built
from the settings (:mod:`~nir.run.parts`), the byte budget (:mod:`~nir.run.budget`), the Trainer
(:mod:`~nir.run.trainer`), what a run prints (:mod:`~nir.run.console`) and records
(:mod:`~nir.run.records`), sweeps (:mod:`~nir.run.sweep`) and the run's order with its entry
points ``train``, ``train_field`` and ``fit`` (:mod:`~nir.run.run`).
"""

from __future__ import annotations

from typing import Any


def fit(*args: Any, **kwargs: Any) -> Any:
    """Train a field from Python with nir-train's configs (:func:`nir.run.run.fit`), leaving the
    process's warning filters as found, those of the libraries' first imports included."""
    import warnings

    with warnings.catch_warnings():
        from nir.run.run import fit as _fit

        return _fit(*args, **kwargs)
