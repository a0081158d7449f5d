"""The one way tests wait: poll a condition until it holds, with a deadline, never a fixed sleep.

Unit tests (``tests/unit``) and integration tests (``tests/integration``) both import it; pytest puts
``tests/`` on ``sys.path`` because ``tests/conftest.py`` lives there.
"""

from __future__ import annotations

import math
import socket
import subprocess
import time
from collections.abc import Callable
from typing import TypeVar

import gevent

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 3.0,
    interval: float | None = None,
    message: str = "condition",
) -> T:
    """Poll ``predicate`` until it returns something truthy and return that, or fail after ``timeout`` s.

    Exceptions raised by ``predicate`` count as "not yet" (a node that is still starting refuses
    connections); the last one, or the last falsy value, is part of the failure message. Between
    tries it yields to gevent's hub, so greenlets under test keep running. The loop is bounded both
    by the deadline and by a maximum number of attempts. ``interval`` defaults to a three-hundredth
    of the timeout, from 10 to 100 ms: fast for in-process checks, gentle on containers.
    """
    if interval is None:
        interval = max(0.01, min(0.1, timeout / 300))
    deadline = time.monotonic() + timeout
    max_attempts = math.ceil(timeout / interval) + 2
    last: object = None
    attempts = 0
    for _ in range(max_attempts):
        attempts += 1
        try:
            result = predicate()
        except Exception as exc:  # not ready yet; remember why for the failure message
            last = f"{type(exc).__name__}: {exc}"
        else:
            if result:
                return result
            last = f"returned {result!r}"
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        gevent.sleep(min(interval, remaining))
    raise AssertionError(f"timed out after {timeout:g} s ({attempts} attempts) waiting for {message}; last: {last}")


def wait_until_listening(port: int, process: subprocess.Popen[bytes], what: str, timeout: float = 10) -> None:
    """Wait until ``process`` listens on 127.0.0.1:``port``; fail if it exits or ``timeout`` s pass."""
    deadline = time.monotonic() + timeout
    while True:  # bounded by the deadline
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise AssertionError(f"{what} did not start listening on 127.0.0.1:{port}") from None
            time.sleep(0.05)
