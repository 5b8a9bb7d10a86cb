"""The console scripts, thin: each parses its arguments and calls the layer that does the work
(``nir-train``: :mod:`~nir.cli.train`, with :mod:`~nir.cli.precheck`'s argv checks before
Hydra; ``nir-field``, ``nir-compress`` / ``nir-decompress``, ``nir-synth``, ``nir-summarize``)."""
