"""The one exception type nir raises for problems a user can fix."""


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
