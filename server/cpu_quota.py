"""How many CPUs this process may use: the cgroup CPU quota (a container's CPU limit), else its CPU affinity.

os.cpu_count() is the node's count: in a container limited to 2 CPUs on a 64-core
node, one worker per core would be 64 processes sharing 2 CPUs' time, each
throttled. The quota is read from cgroup v2 (cpu.max) or v1 (cpu.cfs_quota_us
over cpu.cfs_period_us) for this process's cgroup and each of its ancestors,
the smallest applying.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

CGROUP_MOUNT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")


def available_cpus(cgroup_mount: Path = CGROUP_MOUNT, proc_self_cgroup: Path = PROC_SELF_CGROUP) -> int:
    """Whole CPUs this process may use: its affinity, cut to the cgroup quota rounded down (at least 1).

    Rounded down because a worker per started CPU would be throttled within each
    scheduling period (a tail-latency cost); set whole-CPU limits.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_mount, proc_self_cgroup)
    if quota is not None:
        cpus = min(cpus, max(1, math.floor(quota)))
    return cpus


def cgroup_cpu_quota(cgroup_mount: Path = CGROUP_MOUNT, proc_self_cgroup: Path = PROC_SELF_CGROUP) -> float | None:
    """CPUs' worth of time per period this process's cgroups allow; None when unlimited or unreadable."""
    try:
        memberships = proc_self_cgroup.read_text().splitlines()
    except OSError:
        return None
    quotas: list[float | None] = []
    for line in memberships:
        _hierarchy, controllers, path = line.split(":", 2)
        if controllers == "":  # cgroup v2, the unified hierarchy
            quotas.extend(_v2_quota(directory) for directory in _cgroup_and_ancestors(cgroup_mount, path))
        elif "cpu" in controllers.split(","):  # cgroup v1, mounted as cpu,cpuacct (and a cpu link)
            mount = cgroup_mount / controllers
            mount = mount if mount.is_dir() else cgroup_mount / "cpu"
            quotas.extend(_v1_quota(directory) for directory in _cgroup_and_ancestors(mount, path))
    limits = [quota for quota in quotas if quota is not None]
    return min(limits) if limits else None


def _cgroup_and_ancestors(mount: Path, path: str) -> Iterator[Path]:
    """The cgroup's directory under `mount` and each parent up to the mount, those that exist.

    In a container the mount is the container's own cgroup while /proc/self/cgroup may
    still name the host's path (v1, or v2 without a cgroup namespace): that path does
    not exist under the mount, and the mount itself is the container's.
    """
    directory = mount / path.strip("/")
    while True:
        if directory.is_dir():
            yield directory
        if directory == mount or mount not in directory.parents:
            return
        directory = directory.parent


def _v2_quota(directory: Path) -> float | None:
    """cpu.max is 'QUOTA PERIOD' in microseconds, QUOTA 'max' when unlimited."""
    fields = _read(directory / "cpu.max").split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    return _ratio(fields[0], fields[1])


def _v1_quota(directory: Path) -> float | None:
    """cpu.cfs_quota_us over cpu.cfs_period_us; a quota of -1 is unlimited."""
    return _ratio(_read(directory / "cpu.cfs_quota_us"), _read(directory / "cpu.cfs_period_us"))


def _ratio(quota: str, period: str) -> float | None:
    try:
        quota_us, period_us = int(quota), int(period)
    except ValueError:
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""
