"""How training batches are drawn (``sampling=``): one class per module, built from its config.

A **sampling** (what ``conf/sampling/<name>.yaml`` builds with ``_target_``) is a small object
with four methods; :class:`~nir.training.batches.TrainingData` and its block cache only ever call these:

- ``check(signal)``: refuse, in one line (:class:`~nir.errors.NirError`), a signal it cannot sample;
- ``sampler(magnitude, n, batch, device, seed, stats)``: the sampler of a signal held on the
  device, drawing positions ``0 .. n-1`` (the training samples); ``magnitude()`` returns each
  position's largest ``|value|`` over channels, computed only if asked for. A **sampler** has
  ``next() -> Tensor`` (``batch`` int64 positions on the device), ``batch``, ``full`` (True when
  every step is the whole set, in order: the data path then skips the gather) and
  ``state_dict()`` / ``load_state_dict()`` of plain ints (they go into checkpoints, so a resumed
  run draws what an uninterrupted one draws);
- ``n_groups(stats)``, ``groups(raw, stats)`` and ``shares(counts, batch)``: for a signal streamed
  through the block cache. With more than one group, the cache asks ``groups`` for the group of
  each row of a block as it is loaded (in ``0 .. n_groups(stats) - 1``) and ``shares`` for how
  many of a batch's rows each group gets from the groups' counts in the cache, and draws
  uniformly within a group; with one group (``groups`` may return ``None``) it draws uniformly
  over all its rows.

A new sampler is one module here (or in your own package: ``sampling._target_=mylab.MySampling``)
and one ``conf/sampling/<name>.yaml``; tests/usersampler.py is one written outside nir.
"""

from nir.data.samplers.auto import Auto
from nir.data.samplers.decades import Decades, DecadeSampler, decade_slots
from nir.data.samplers.uniform import IndexSampler, Uniform

__all__ = ["Auto", "DecadeSampler", "Decades", "IndexSampler", "Uniform", "decade_slots"]
