"""Finding the memory cgroup hierarchy, and reading and writing a job cgroup's files (v1 and v2 layouts).

The files are plain files in tmp_path laid out as cgroupfs lays them out; the real hierarchy is exercised
by tests/integration/test_local_launcher.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.launchers.local.cgroups import Hierarchy, JobCgroup, MemoryCounters, find_memory_hierarchy

pytestmark = pytest.mark.unit

V1_MOUNTS = """\
24 30 0:22 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
26 24 0:24 / /sys/fs/cgroup/cpu rw,relatime shared:5 - cgroup cgroup rw,cpu
27 24 0:25 / /sys/fs/cgroup/memory rw,relatime shared:6 - cgroup cgroup rw,memory
33 24 0:31 / /sys/fs/cgroup/unified rw,relatime shared:12 - cgroup2 cgroup2 rw
"""
V2_MOUNTS = """\
22 1 259:1 / / rw,relatime shared:1 - ext4 /dev/root rw
29 22 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate
"""
V1_CGROUP = "9:name=systemd:/\n4:memory:/process_api/4da2\n1:cpu:/\n0::/\n"
V2_CGROUP = "0::/user.slice/user-1000.slice/session-2.scope\n"


@pytest.mark.parametrize(
    ("mountinfo", "proc_cgroup", "expected"),
    [
        (V1_MOUNTS, V1_CGROUP, Hierarchy(1, Path("/sys/fs/cgroup/memory"), "/process_api/4da2")),
        (
            V2_MOUNTS,
            V2_CGROUP,
            Hierarchy(2, Path("/sys/fs/cgroup"), "/user.slice/user-1000.slice/session-2.scope"),
        ),
        (
            V1_MOUNTS.replace("rw,memory", "rw,blkio"),
            "0::/\n",
            Hierarchy(2, Path("/sys/fs/cgroup/unified"), "/"),
        ),
        (V2_MOUNTS.replace("cgroup2 cgroup2", "tmpfs tmpfs"), V2_CGROUP, None),
    ],
    ids=["v1 beside an unused unified mount", "v2", "hybrid without a v1 memory controller", "no cgroupfs"],
)
def test_find_memory_hierarchy(mountinfo: str, proc_cgroup: str, expected: Hierarchy | None) -> None:
    assert find_memory_hierarchy(mountinfo, proc_cgroup) == expected


def cgroup_dir(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, content in files.items():
        (tmp_path / name).write_text(content)
    return tmp_path


def test_v1_limit_caps_memory_and_memory_plus_swap(tmp_path: Path) -> None:
    path = cgroup_dir(tmp_path, {"memory.limit_in_bytes": "max", "memory.memsw.limit_in_bytes": "max"})

    JobCgroup(path, 1).set_memory_limit(256 * 2**20)

    assert (path / "memory.limit_in_bytes").read_text() == str(256 * 2**20)
    assert (path / "memory.memsw.limit_in_bytes").read_text() == str(256 * 2**20)


def test_v1_limit_without_swap_accounting(tmp_path: Path) -> None:
    path = cgroup_dir(tmp_path, {"memory.limit_in_bytes": "max"})

    JobCgroup(path, 1).set_memory_limit(1024)

    assert sorted(p.name for p in path.iterdir()) == ["memory.limit_in_bytes"]


def test_v2_limit_forbids_swap_and_kills_the_group_together(tmp_path: Path) -> None:
    path = cgroup_dir(tmp_path, {"memory.max": "max", "memory.swap.max": "max", "memory.oom.group": "0"})

    JobCgroup(path, 2).set_memory_limit(1024)

    assert [(path / name).read_text() for name in ("memory.max", "memory.swap.max", "memory.oom.group")] == [
        "1024",
        "0",
        "1",
    ]


def test_v1_counters(tmp_path: Path) -> None:
    path = cgroup_dir(
        tmp_path,
        {
            "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
            "memory.failcnt": "5\n",
            "memory.max_usage_in_bytes": "268435456\n",
        },
    )

    assert JobCgroup(path, 1).counters() == MemoryCounters(oom_kills=2, failcnt=5, peak_bytes=268435456)


def test_v1_counters_on_a_kernel_without_the_oom_kill_line(tmp_path: Path) -> None:
    path = cgroup_dir(
        tmp_path, {"memory.oom_control": "oom_kill_disable 0\nunder_oom 0\n", "memory.failcnt": "0"}
    )

    assert JobCgroup(path, 1).counters() == MemoryCounters(oom_kills=0, failcnt=0, peak_bytes=None)


def test_v2_counters(tmp_path: Path) -> None:
    path = cgroup_dir(
        tmp_path,
        {
            "memory.events": "low 0\nhigh 0\nmax 7\noom 1\noom_kill 1\noom_group_kill 1\n",
            "memory.peak": "1048576\n",
        },
    )

    assert JobCgroup(path, 2).counters() == MemoryCounters(oom_kills=1, failcnt=7, peak_bytes=1048576)


def test_pids_of_an_empty_cgroup(tmp_path: Path) -> None:
    path = cgroup_dir(tmp_path, {"cgroup.procs": ""})

    assert JobCgroup(path, 1).pids() == []
