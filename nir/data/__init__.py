"""Signals and how they are drawn: :class:`~nir.data.signal.Signal` and
:class:`~nir.data.signal.Grid` (a signal is samples on a regular grid), the readers (one module
per kind of file behind one suffix table, :mod:`nir.data.readers`), the seeded long-tailed
generators (:mod:`~nir.data.synthetic`), the held-out samples (:mod:`~nir.data.holdout`) and the
samplers that draw training batches (:mod:`nir.data.samplers`).

The folder also ships the bundled sample photos (README.md beside this file) and the field
specs' zstd dictionary (``spec-dictionary-1.json``, read by :mod:`nir.codec.container`).
"""
