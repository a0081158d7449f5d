"""The node's memory allocator: sized for its frames, and made to give freed memory back to the OS.

glibc's malloc serves a block above its mmap threshold with a mapping of its own, and by default
raises that threshold to the size of every such block freed (up to 32 MiB), along with the trim
threshold, twice that, below which free memory at the heap's top is kept. So how a node's memory
behaved depended on the sizes it happened to free first. Large blocks then came from the heap,
which gives memory back only from its top: ten clients' pipelined 1 MiB GETs left a node at 142 MB
instead of 38 MB after the clients had gone.

``tune_malloc`` fixes both thresholds at start-up instead, from the largest frame: every frame-sized
block (a value, a request, a reply) comes from the heap and is reused warm, which made a 1 MiB GET
cost about a sixth less CPU than with glibc's defaults; a fixed mmap threshold as low as glibc's
initial 128 KiB would map, fault in and unmap every one of them, at twice the CPU. And a background
task (``MemoryReleaser.run_pass``) asks malloc how much it holds free and, once that has grown by
``RELEASE_FREE_BYTES``, has it return every free page (``malloc_trim(0)``, which since glibc 2.8
releases free pages anywhere in the heap, not only at its top).

Both do nothing where malloc is not glibc's, and ``tune_malloc`` leaves thresholds the environment
sets (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``) to the operator.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's <malloc.h>
M_MMAP_THRESHOLD = -3
MIN_MMAP_THRESHOLD = 4 * 1024 * 1024
"""Blocks below this always come from the heap (at least two of the largest frames)."""
MAX_MMAP_THRESHOLD = 32 * 1024 * 1024
"""The most glibc accepts on 64-bit (half its heap size); larger frames get mappings of their own."""
TRIM_FACTOR = 2
"""Free memory at the heap's top kept for reuse: this many times the mmap threshold (8 MiB)."""
RELEASE_FREE_BYTES = 32 * 1024 * 1024
"""Growth of malloc's free memory that is given back: above the churn of normal traffic (a few large
values in flight), far below what a burst of clients can leave (100 MB and more)."""
RELEASE_INTERVAL = 2.0
"""Seconds between checks; a check is one walk over malloc's free lists."""


def _glibc() -> ctypes.CDLL | None:
    """glibc, if this process's malloc is glibc's (2.33 or later, for ``mallinfo2``)."""
    if platform.libc_ver()[0] != "glibc":
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    if not all(hasattr(libc, name) for name in ("mallopt", "mallinfo2", "malloc_trim")):
        return None
    return libc


def tune_malloc(max_frame_bytes: int) -> bool:
    """Fix glibc's mmap threshold above two of the largest frames (from 4 to 32 MiB) and its trim
    threshold at twice that. Returns whether it did (not where the environment sets either,
    or malloc is not glibc's)."""
    libc = _glibc()
    if libc is None or "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    mmap_threshold = min(MAX_MMAP_THRESHOLD, max(MIN_MMAP_THRESHOLD, 2 * max_frame_bytes))
    return bool(
        libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold) and libc.mallopt(M_TRIM_THRESHOLD, TRIM_FACTOR * mmap_threshold)
    )


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
        self._libc = _glibc()
        if self._libc is not None:
            self._libc.mallinfo2.restype = _MallInfo2

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
