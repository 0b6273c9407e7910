"""glibc's allocator, set up for a server whose requests may carry bodies of megabytes.

CPython asks ``malloc`` for every object over 512 bytes, so a large request body, its decoded
text and the record's JSON are ``malloc`` blocks.  glibc serves a block of at least its *mmap
threshold* (128 KiB at start) with a mapping of its own, which ``free`` gives back to the
system at once; anything smaller comes from the heap, which is returned only from its top.  But
the threshold is dynamic: each time such a mapped block is freed, glibc raises the threshold to
its size (up to 32 MiB).  After the first 7 MB body was freed, the next ones — and every
buffer of up to 7 MB after them — came from the heap instead, and the memory they had used
stayed with the process: a gateway that had handled 48 stored 7 MB bodies kept up to 500 MB
resident, of which a few MB were in use (``malloc_trim`` gave it back, which shows where it
was).

:func:`tune_allocator` fixes the threshold at glibc's own starting value, which also turns the
dynamic adjustment off, so large blocks keep their own mappings and go back to the system when
they are freed.  The cost is one ``mmap``/``munmap`` pair and the page faults of a fresh mapping
per block of 128 KiB or more; a request of a few KiB allocates none.
"""

from __future__ import annotations

import ctypes
import logging
from typing import Final

log = logging.getLogger("auditgate")

M_MMAP_THRESHOLD: Final = -3
"""``mallopt`` parameter number (``<malloc.h>``)."""
MMAP_THRESHOLD: Final = 128 << 10
"""Blocks at least this large get a mapping of their own: glibc's initial value, kept fixed."""


def tune_allocator() -> bool:
    """Fix glibc's mmap threshold at :data:`MMAP_THRESHOLD`; True when it was set.

    A no-op returning False on another C library (musl, macOS), where ``mallopt`` is missing
    or means something else.  Called once per serving process, before it serves; an app built
    with ``create_app`` (embedded, tests) leaves its host's allocator alone.
    """
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - glibc only: it alone has this symbol
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    if mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1:
        log.warning(
            "glibc refused mallopt(M_MMAP_THRESHOLD, %d); its default stays", MMAP_THRESHOLD
        )
        return False
    return True
