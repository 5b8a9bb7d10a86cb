"""The stored form of a field: the compact file's byte layout, CRC and spec coding
(:mod:`~nir.codec.container`), the stored precision and its scales (:mod:`~nir.codec.storage`),
the integer coders behind one front end (:mod:`~nir.codec.ints`: raw, ANS, zstd; the bounded
residual's coders too), the error bound and its residual (:mod:`~nir.codec.bound`) and the byte
budget that sizes a network (:mod:`~nir.codec.budget`).

The codec works on plain values: a spec (JSON-able dict), a state dict, a
:class:`~nir.codec.container.Template` of the spec's fresh field. Building a
:class:`~nir.field.Field` from them stays in :mod:`nir.field`; nothing here imports it, nor
Lightning or Hydra.
"""
