"""Giving freed memory back to the OS.

glibc's malloc serves a large block (a 1 MiB value, a reply carrying it) with its own ``mmap`` only
while the block is above the mmap threshold, and it raises that threshold to the size of every such
block freed (the dynamic threshold, up to 32 MiB). After the first 1 MiB reply, later ones come from
the heap, whose free memory goes back to the OS only from its top: ten clients' pipelined 1 MiB GETs
left a node at 142 MB instead of 38 MB after the clients had gone. Fixing the threshold instead
(glibc's ``MALLOC_MMAP_THRESHOLD_``) gives memory back at once, but maps, faults in and unmaps every
large block: it nearly tripled a node's CPU time per 1 MiB GET. So the node keeps the dynamic
threshold, and a background task (``MemoryReleaser.run_pass``) asks malloc how much it holds free
and, once that has grown by ``RELEASE_FREE_BYTES``, has it return every free page (``malloc_trim(0)``,
which since glibc 2.8 releases free pages anywhere in the heap, not only at its top).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

RELEASE_FREE_BYTES = 32 * 1024 * 1024
"""Growth of malloc's free memory that is given back: above the churn of normal traffic (a few large
values in flight), far below what a burst of clients can leave (100 MB and more)."""
RELEASE_INTERVAL = 2.0
"""Seconds between checks; a check is one walk over malloc's free lists."""


class ReleasePolicy:
    """When to give free memory back: once malloc's free bytes have grown by ``threshold`` since the
    last release (or since they were lowest: memory reused meanwhile is not counted twice).

    Measured from the last release, not from zero: released pages still count as free in malloc's
    statistics, so a fixed level would release again and again for nothing."""

    def __init__(self, threshold: int = RELEASE_FREE_BYTES) -> None:
        self.threshold = threshold
        self._floor = 0

    def should_release(self, free_bytes: int) -> bool:
        self._floor = min(self._floor, free_bytes)
        if free_bytes - self._floor < self.threshold:
            return False
        self._floor = free_bytes
        return True


class _MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (``<malloc.h>``, glibc 2.33 and later): ten ``size_t`` fields."""

    _fields_ = [
        (field, ctypes.c_size_t)
        for field in (
            *("arena", "ordblks", "smblks", "hblks", "hblkhd"),
            *("usmblks", "fsmblks", "uordblks", "fordblks", "keepcost"),
        )
    ]


class MemoryReleaser:
    """glibc malloc's free memory, returned to the OS as ``ReleasePolicy`` says. ``available`` is
    false, and nothing is done, where malloc is not glibc 2.33 or later."""

    def __init__(self, policy: ReleasePolicy | None = None) -> None:
        self.policy = policy or ReleasePolicy()
        self._libc: ctypes.CDLL | None = None
        if platform.libc_ver()[0] == "glibc":
            libc = ctypes.CDLL(ctypes.util.find_library("c"))
            if hasattr(libc, "mallinfo2") and hasattr(libc, "malloc_trim"):
                libc.mallinfo2.restype = _MallInfo2
                self._libc = libc

    @property
    def available(self) -> bool:
        return self._libc is not None

    def free_bytes(self) -> int:
        """Bytes malloc holds free in its heaps, every arena (``fordblks``); 0 where unknown."""
        if self._libc is None:
            return 0
        info: _MallInfo2 = self._libc.mallinfo2()
        return int(info.fordblks)

    def run_pass(self) -> int:
        """Give free memory back if the policy says so; the bytes free then (0: nothing done)."""
        free = self.free_bytes()
        if self._libc is None or not self.policy.should_release(free):
            return 0
        self._libc.malloc_trim(0)
        return free
