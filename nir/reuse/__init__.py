"""A trained field in plain Python: :class:`~nir.reuse.field.Field` (query, sample, gradients,
save, load), its stored forms (:mod:`~nir.reuse.stored`: the compact ``.nir`` file and
``.safetensors``, each checked on load) and the writers that put a field's grid into other
formats (:mod:`~nir.reuse.writers`: images, xarray, ONNX). Neither Lightning nor Hydra is
imported here (tested)."""
