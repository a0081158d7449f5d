"""Giving freed memory back (service/memory.py): when the policy releases, and that a release on this
machine's glibc returns heap memory that malloc alone would keep."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.memory import ReleasePolicy

MB = 1024 * 1024
REPO_ROOT = Path(__file__).resolve().parents[2]


def test_memory_is_released_once_free_bytes_grow_by_the_threshold() -> None:
    policy = ReleasePolicy(threshold=32 * MB)
    assert not policy.should_release(10 * MB)
    assert not policy.should_release(31 * MB)
    assert policy.should_release(40 * MB)
    assert not policy.should_release(40 * MB)  # released pages still count as free: not again
    assert not policy.should_release(70 * MB)  # 30 MB more since
    assert policy.should_release(72 * MB)


def test_free_memory_reused_meanwhile_is_not_counted_twice() -> None:
    policy = ReleasePolicy(threshold=32 * MB)
    assert policy.should_release(50 * MB)
    assert not policy.should_release(5 * MB)  # reused by new work
    assert not policy.should_release(36 * MB)
    assert policy.should_release(37 * MB)  # 32 MB freed since the lowest point


FRAGMENTED_HEAP = """
import ctypes, ctypes.util, json
from service.memory import MemoryReleaser, ReleasePolicy

MB = 1024 * 1024
releaser = MemoryReleaser(ReleasePolicy(threshold=16 * MB))
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]

def rss():
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("VmRSS:")).split()[1]) * 1024

# One large block freed raises glibc's mmap threshold above 1 MiB: later 1 MiB blocks come from the
# heap, as a node's values and replies do after its first large one.
libc.free(libc.malloc(8 * MB))
blocks, pins = [], []
for _ in range(64):
    block = libc.malloc(MB)
    ctypes.memset(block, 1, MB)  # resident
    blocks.append(block)
    pins.append(libc.malloc(128 * 1024))  # between the large blocks (too large for any hole below them)
releaser.run_pass()  # count from what this process holds free already
alive = rss()
for block in blocks:
    libc.free(block)
freed = rss()
released = releaser.run_pass()
figures = {"alive": alive, "freed": freed, "released": released, "after": rss()}
print(json.dumps({"available": releaser.available, **figures}))
"""


def test_a_release_returns_heap_memory_that_malloc_would_keep() -> None:
    """In a fresh interpreter, whose malloc is in a known state: 64 MiB freed between small live
    blocks stay resident until the releaser gives them back."""
    run = subprocess.run(
        [sys.executable, "-c", FRAGMENTED_HEAP], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT, check=True
    )
    figures = json.loads(run.stdout)
    if not figures["available"]:
        pytest.skip("malloc is not glibc 2.33 or later here")
    assert figures["freed"] > figures["alive"] - 8 * MB  # malloc alone keeps it
    assert figures["released"] >= 60 * MB
    assert figures["after"] <= figures["alive"] - 48 * MB


TUNED = """
import ctypes, ctypes.util, json, sys
from service.memory import _glibc, tune_malloc

libc = _glibc()
if libc is None:
    print(json.dumps({"available": False}))
    sys.exit()

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                      "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
tuned = tune_malloc(1024 * 1024 + 2048)
mapped = libc.mallinfo2().hblks
block = libc.malloc(2 * 1024 * 1024)  # a frame's size: from the heap once tuned, mapped by default
print(json.dumps({"available": True, "tuned": tuned, "mapped": libc.mallinfo2().hblks > mapped}))
libc.free(block)
"""


@pytest.mark.parametrize("env", [{}, {"MALLOC_MMAP_THRESHOLD_": "131072"}], ids=["default", "operator-set"])
def test_frame_sized_blocks_come_from_the_heap_unless_the_operator_says_otherwise(env: dict[str, str]) -> None:
    run = subprocess.run(
        [sys.executable, "-c", TUNED],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
        check=True,
        env={**os.environ, **env},
    )
    figures = json.loads(run.stdout)
    if not figures["available"]:
        pytest.skip("malloc is not glibc 2.33 or later here")
    assert figures["tuned"] is not bool(env)
    assert figures["mapped"] is bool(env)
