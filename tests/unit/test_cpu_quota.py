"""TRIAGE_WORKERS=0 sizes the workers from the container's CPU limit (cgroup v2 or v1), not the node's cores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from server.config import Settings
from server.cpu_quota import available_cpus, cgroup_cpu_quota
from server.workers import worker_count


def _files(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


# What a process sees in /proc/self/cgroup and under /sys/fs/cgroup, as found on real systems.
V2_CONTAINER = {  # Kubernetes or Docker with a cgroup namespace: the container's cgroup is the mount's root
    "proc/self/cgroup": "0::/\n",
    "sys/fs/cgroup/cpu.max": "200000 100000\n",
}
V2_NESTED = {  # a systemd service (CPUQuota=150%) inside a slice limited to 1 CPU: the smallest applies
    "proc/self/cgroup": "0::/system.slice/triage.service\n",
    "sys/fs/cgroup/system.slice/cpu.max": "100000 100000\n",
    "sys/fs/cgroup/system.slice/triage.service/cpu.max": "150000 100000\n",
}
V2_UNLIMITED = {
    "proc/self/cgroup": "0::/user.slice/user-1000.slice/session-3.scope\n",
    "sys/fs/cgroup/user.slice/cpu.max": "max 100000\n",
    "sys/fs/cgroup/user.slice/user-1000.slice/session-3.scope/cpu.max": "max 100000\n",
}
V1_DOCKER = {  # cgroup v1: /proc names the host's path; the container's cgroup is mounted at the controller's root
    "proc/self/cgroup": "12:memory:/docker/3f2a\n4:cpu,cpuacct:/docker/3f2a\n1:name=systemd:/docker/3f2a\n",
    "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "350000\n",
    "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
}
V1_UNLIMITED = {
    "proc/self/cgroup": "4:cpu,cpuacct:/\n",
    "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
    "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
}


@pytest.mark.parametrize(
    ("files", "quota"),
    [
        (V2_CONTAINER, 2.0),
        (V2_NESTED, 1.0),
        (V2_UNLIMITED, None),
        (V1_DOCKER, 3.5),
        (V1_UNLIMITED, None),
        ({"proc/self/cgroup": "0::/\n"}, None),  # no cpu controller: nothing to read
        ({}, None),  # not Linux, or /proc not mounted
    ],
)
def test_the_quota_is_read_from_the_process_cgroups(tmp_path: Path, files: dict[str, str], quota: float | None) -> None:
    _files(tmp_path, files)

    assert cgroup_cpu_quota(tmp_path / "sys/fs/cgroup", tmp_path / "proc/self/cgroup") == quota


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [
        ("50000 100000", 1),  # half a CPU still gets one worker
        ("150000 100000", 1),  # rounded down: a second worker would be throttled
        ("200000 100000", 2),
        ("max 100000", None),  # unlimited: the CPUs the process may run on
    ],
)
def test_workers_follow_the_container_cpu_limit(tmp_path: Path, cpu_max: str, expected: int | None) -> None:
    _files(tmp_path, {"proc/self/cgroup": "0::/\n", "sys/fs/cgroup/cpu.max": cpu_max})
    affinity = len(os.sched_getaffinity(0))

    cpus = available_cpus(tmp_path / "sys/fs/cgroup", tmp_path / "proc/self/cgroup")

    assert cpus == (affinity if expected is None else min(expected, affinity))


def test_an_explicit_worker_count_wins_over_the_quota() -> None:
    assert worker_count(Settings(workers=3)) == 3
    assert worker_count(Settings(workers=0)) == available_cpus()
