"""The compact file's plumbing for the codecs and reports that work on its bytes: a field from
them (:func:`from_compact`), the same network with another residual (:func:`with_residual`) and
the bytes that are not coded parameters (:func:`compact_header_bytes`)."""

from __future__ import annotations

from collections.abc import Iterable

from nir.reuse import stored
from nir.reuse.field import Field, rebuild


def from_compact(data: bytes, what: str, trusted: Iterable[str] = ()) -> Field:
    """The field of a compact file's bytes; anything wrong is one line naming ``what``."""
    return rebuild(stored.read_compact(data, what), trusted)


def with_residual(data: bytes, residual: bytes | None, what: str = "a compact field") -> bytes:
    """The compact file ``data`` with ``residual`` in place of its own (the same network, stored
    as it was: precision, scales and coder)."""
    from nir.codec import container
    from nir.codec.ints import CODERS

    c = container.read(data, what)
    template = stored.template(Field.from_spec(c.spec))
    return container.encode(c.spec, c.state(template), template, c.dtype, c.int8_scale, CODERS[c.coder], residual)


def compact_header_bytes(data: bytes, field: Field | None = None) -> int:
    """Bytes of a compact file that are not coded parameters (:func:`nir.codec.container.header_bytes`);
    ``field``: the field it holds, when at hand (else read from ``data``, to count its buffers)."""
    from nir.codec import container

    field = from_compact(data, "a compact field") if field is None else field
    params = {name for name, _ in field.named_parameters()}
    return container.header_bytes(data, sum(1 for name in field.state_dict() if name not in params))
