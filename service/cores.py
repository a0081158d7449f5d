"""How many CPU cores this process may use: the default number of worker processes (``KV_WORKERS``).

Two limits apply in a container, and the smaller wins:

* the CPU affinity mask (``os.sched_getaffinity``): the cores the scheduler may run us on at all
  (``docker run --cpuset-cpus``);
* the cgroup v2 CPU quota (``cpu.max``, ``"<quota> <period>"`` in microseconds, or ``"max <period>"``
  for none): the CPU time per period the group may use (``docker run --cpus``, compose's
  ``cpus:``). A quota of 1.5 cores rounds up to 2 workers: the half core is still worth using.

``os.cpu_count`` would report the host's cores and ignore both. The parsing is pure (``quota_cores``,
``usable_cores``); ``available_cores`` reads the two sources.
"""

from __future__ import annotations

import math
import os

CGROUP_CPU_MAX = "/sys/fs/cgroup/cpu.max"


def quota_cores(cpu_max: str) -> int | None:
    """The cores a cgroup v2 ``cpu.max`` text allows, rounded up, at least 1; ``None`` for no
    quota (``max``) or text that is not ``"<quota> <period>"`` with positive whole numbers."""
    fields = cpu_max.split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    if quota <= 0 or period <= 0:
        return None
    return max(1, math.ceil(quota / period))


def usable_cores(affinity: int, cpu_max: str | None) -> int:
    """The smaller of ``affinity`` (cores in the affinity mask) and the quota in ``cpu_max`` (the
    text of ``cpu.max``, ``None`` if there is no such file); at least 1."""
    cores = max(1, affinity)
    quota = quota_cores(cpu_max) if cpu_max is not None else None
    return min(cores, quota) if quota is not None else cores


def available_cores() -> int:
    """The cores this process may use now (see the module docstring)."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        affinity = os.cpu_count() or 1
    try:
        with open(CGROUP_CPU_MAX) as file:
            cpu_max: str | None = file.read()
    except OSError:
        cpu_max = None
    return usable_cores(affinity, cpu_max)
