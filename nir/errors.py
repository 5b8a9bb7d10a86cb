"""The one exception type nir raises for problems a user can fix, and how entry points report it."""

import contextlib
import sys
from collections.abc import Iterator


class NirError(ValueError):
    """Bad input or configuration. The message is one line: what is wrong and what to do.

    Entry points (``nir-train``, ``nir.fit``) print it without a traceback and exit non-zero.
    """


def require(cond: bool, message: str) -> None:
    """Raise :class:`NirError` with ``message`` unless ``cond`` holds."""
    if not cond:
        raise NirError(message)


def positive_int(name: str, value) -> int:
    """``value`` as an int >= 1, else a NirError naming ``name``."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
    require(ok, f"{name} must be a positive integer, got {value!r}; set it to a value >= 1")
    return value


def positive_float(name: str, value) -> float:
    """``value`` as a float > 0, else a NirError naming ``name``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    require(v > 0 and v != float("inf"), f"{name} must be a positive number, got {value!r}")
    return v


@contextlib.contextmanager
def cli_errors() -> Iterator[None]:
    """In a console script: a :class:`NirError` becomes ``error: <message>`` on stderr and the
    error's ``exit_status`` (2 unless it names another: 74 a failed write, 128 + N a signal)."""
    try:
        yield
    except NirError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(getattr(e, "exit_status", 2)) from None


def check_network_sizes(in_dim, out_dim, hidden_dim, num_layers) -> None:
    """The size arguments every nir network shares (``model.*`` keys)."""
    positive_int("model.in_dim", in_dim)
    positive_int("model.out_dim", out_dim)
    positive_int("model.hidden_dim", hidden_dim)
    if not (isinstance(num_layers, int) and not isinstance(num_layers, bool) and num_layers >= 0):
        raise NirError(f"model.num_layers must be a positive integer or 0, got {num_layers!r}")
