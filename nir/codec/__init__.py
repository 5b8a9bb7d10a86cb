"""Bytes only: the stored form of a field and of its residual.

The compact file's byte layout, CRC and spec coding (:mod:`~nir.codec.container`), the stored
precision and its scales (:mod:`~nir.codec.storage`), the integer coders behind one front end
(:mod:`~nir.codec.ints`: raw, ANS, zstd; the bounded residual's coders too), the error bound and
its residual (:mod:`~nir.codec.bound`) and the residual's context coder
(:mod:`~nir.codec.context`).

The codec works on plain values: a spec (JSON-able dict), a state dict, a
:class:`~nir.codec.container.Template` of the spec's fresh field. It never trains and never
builds a :class:`~nir.reuse.field.Field` (that is :mod:`nir.reuse`'s job); it imports nothing of
nir above the base modules (tested: tests/test_structure.py). The codecs that train fields for
Zarr and numcodecs live in :mod:`nir.interop`; the byte budget that sizes a network is the run's
(:mod:`nir.run.budget`).
"""
