"""Commits per second of two processes writing one LMDB environment, with the meta page fsynced
inside the commit (LMDB's default) or after it, outside the writer lock (what a shared store does,
``service.storage``).

Usage: ``.venv/bin/python bench/lmdb_shared_commits.py [--commits 300] [--batch 12] [--dir DIR]``

Each process commits ``--commits`` transactions of ``--batch`` 100-byte values under random keys
of 10,000; both start together. ``inside``: ``sync=True, metasync=True`` (two fsyncs under the
lock). ``after``: ``sync=True, metasync=False``, then ``env.sync(True)`` once the commit returned
(one fsync under the lock). Prints each process's commits per second, for both modes, twice, in
alternating order.
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lmdb


def writer(path: str, mode: str, commits: int, batch: int) -> float:
    """Commits per second of one process in ``mode`` (``inside`` or ``after``)."""
    env = lmdb.open(path, map_size=1 << 30, sync=True, metasync=mode == "inside")
    rng = random.Random()
    started = time.perf_counter()
    for _ in range(commits):
        with env.begin(write=True) as txn:
            for _ in range(batch):
                txn.put(f"key:{rng.randrange(10_000):012d}".encode(), b"x" * 100)
        if mode == "after":
            env.sync(True)
    elapsed = time.perf_counter() - started
    env.close()
    return commits / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commits", type=int, default=300)
    parser.add_argument("--batch", type=int, default=12)
    parser.add_argument("--dir", type=Path, default=None, help="where the environment goes (default: a temp dir)")
    parser.add_argument("--writer", nargs=2, metavar=("PATH", "MODE"), help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.writer:
        path, mode = options.writer
        print(f"{writer(path, mode, options.commits, options.batch):.0f}")
        return 0
    base = Path(tempfile.mkdtemp(prefix="lmdb-shared-", dir=options.dir))
    try:
        for mode in ("inside", "after", "inside", "after"):
            path = base / mode
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir()
            command = [sys.executable, __file__, "--commits", str(options.commits), "--batch", str(options.batch)]
            processes = [
                subprocess.Popen([*command, "--writer", str(path), mode], stdout=subprocess.PIPE, text=True)
                for _ in range(2)
            ]
            rates = [process.communicate(timeout=600)[0].strip() for process in processes]
            print(f"meta fsync {mode} the commit: {' and '.join(rates)} commits/s (two processes at once)")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
