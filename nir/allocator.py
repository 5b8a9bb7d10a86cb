"""glibc allocator settings for the ``nir-train`` process (Linux; no effect elsewhere).

Library calls (``nir.fit``, ``train_field``) never change them: a notebook that trains a field
keeps its allocator as it was. ``nir-train``'s ``main`` calls :func:`tune_allocator` once; a
Python caller who wants the same speed-up calls it too, before training (docs/performance.md).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys

_tuned = False


def tune_allocator() -> bool:
    """Keep freed large blocks in glibc's heap instead of returning them to the OS.

    A full-batch step allocates and frees activations of tens of MB; glibc maps each afresh
    (mmap) and page-faults it in, which costs ~15 % of a CPU step here (docs/performance.md).
    Raising M_MMAP_THRESHOLD and M_TRIM_THRESHOLD makes glibc reuse that memory, process-wide.
    Set ``NIR_MALLOPT=0`` to skip. Returns whether the settings took effect.
    """
    global _tuned
    if os.environ.get("NIR_MALLOPT", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, 1 << 30) == 1
        _tuned = ok and libc.mallopt(m_trim_threshold, (1 << 31) - 1) == 1
    except (OSError, AttributeError):
        _tuned = False
    return _tuned


def release_heap() -> None:
    """Hand freed heap memory back to the OS (glibc ``malloc_trim``) after the one-off data
    passes and fits. Only needed, and only done, when :func:`tune_allocator` raised the trim
    threshold in this process; otherwise glibc trims by itself."""
    if _tuned:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
