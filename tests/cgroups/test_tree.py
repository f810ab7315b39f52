"""The cgroup tree's decisions on fake hierarchies (in addition to the real ones).

Host kinds this machine is not (pure v2, pure v1), and the edge cases of
enabling controllers, are checked on mountinfo texts and directories made
here; tests/cgroups/test_resources.py runs the real thing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from instancelib.cgroups import tree, v2

PURE_V2 = """\
25 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 25 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate
"""
HYBRID = """\
25 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
31 25 0:27 / /sys/fs/cgroup/unified rw,nosuid shared:5 - cgroup2 cgroup2 rw
32 25 0:28 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:6 - cgroup cgroup rw,cpu,cpuacct
33 25 0:29 / /sys/fs/cgroup/memory rw,nosuid shared:7 - cgroup cgroup rw,memory
34 25 0:30 / /sys/fs/cgroup/pids rw,nosuid shared:8 - cgroup cgroup rw,pids
35 25 0:31 / /sys/fs/cgroup/freezer rw,nosuid shared:9 - cgroup cgroup rw,freezer
36 25 0:32 /docker/abc /mnt/other rw shared:10 - cgroup cgroup rw,blkio
"""
PURE_V1 = """\
32 25 0:28 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpuacct,cpu
33 25 0:29 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
"""


@pytest.mark.parametrize(("text", "v2_mount", "v1_mounts"), [
    (PURE_V2, "/sys/fs/cgroup", {}),
    (HYBRID, "/sys/fs/cgroup/unified",
     {"cpu": "/sys/fs/cgroup/cpu,cpuacct", "cpuacct": "/sys/fs/cgroup/cpu,cpuacct",
      "memory": "/sys/fs/cgroup/memory", "pids": "/sys/fs/cgroup/pids",
      "freezer": "/sys/fs/cgroup/freezer"}),  # blkio: only a sub-tree is bound: not a root
    (PURE_V1, None, {"cpu": "/sys/fs/cgroup/cpu,cpuacct", "cpuacct": "/sys/fs/cgroup/cpu,cpuacct",
                     "memory": "/sys/fs/cgroup/memory"}),
])
def test_detect_reads_each_host_kind(tmp_path, text, v2_mount, v1_mounts):
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(text)
    found = tree.detect(str(mountinfo))
    assert found.v2_mount == v2_mount
    assert found.v1_mounts == v1_mounts


def _fake_level(directory: Path, controllers: str, active: str = "") -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cgroup.controllers").write_text(controllers + "\n")
    (directory / "cgroup.subtree_control").write_text(active + "\n")


def test_enable_controllers_passes_down_what_every_level_offers(tmp_path):
    # A fake tree: each level's cgroup.controllers as the kernel would show it.
    mount = tmp_path / "cg"
    _fake_level(mount, "cpuset cpu io memory pids", "cpu memory")
    _fake_level(mount / "machine.slice", "cpu memory pids")  # io does not reach this level
    base = mount / "machine.slice" / "instancelib"
    _fake_level(base, "cpu memory pids")
    enabled = v2.enable_controllers(str(base), ["memory", "cpu", "io", "pids"], str(mount))
    assert enabled == {"memory", "cpu", "pids"}
    # Each level was asked only for what it lacked, in one write.
    assert (mount / "cgroup.subtree_control").read_text() == "+io +pids"
    assert (mount / "machine.slice" / "cgroup.subtree_control").read_text() == \
        "+cpu +memory +pids"
    assert (base / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"


def test_enable_controllers_drops_what_a_level_refuses(tmp_path):
    mount = tmp_path / "cg"
    _fake_level(mount, "cpu memory", "")
    base = mount / "instancelib"
    _fake_level(base, "cpu memory")
    # A subtree_control that refuses writes, even root's (a read-only kernel file).
    (mount / "cgroup.subtree_control").unlink()
    (mount / "cgroup.subtree_control").symlink_to("/proc/version")
    assert v2.enable_controllers(str(base), ["cpu", "memory"], str(mount)) == set()
    assert (base / "cgroup.subtree_control").read_text() == "\n"  # nothing asked below


def test_cgroup_info_round_trips_and_refuses_paths_outside_our_tree():
    info = tree.CgroupInfo(name="/instancelib/i.0.1.abc",
                           v2="/sys/fs/cgroup/unified/instancelib/i.0.1.abc",
                           v1={"memory": "/sys/fs/cgroup/memory/instancelib/i.0.1.abc"},
                           controllers={"memory": "v1"})
    assert tree.CgroupInfo.from_dict(info.to_dict()) == info
    assert info.version == "hybrid"
    assert info.directory("memory") == "/sys/fs/cgroup/memory/instancelib/i.0.1.abc"
    assert info.directory("pids") is None
    assert info.procs_files() == [
        "/sys/fs/cgroup/unified/instancelib/i.0.1.abc/cgroup.procs",
        "/sys/fs/cgroup/memory/instancelib/i.0.1.abc/cgroup.procs"]
    for bad in ("/sys/fs/cgroup/memory/process_api", "/sys/fs/cgroup/instancelib/../x",
                "/etc/instancelib/x", "/sys/fs/cgroup/memory/instancelib"):
        forged = dict(info.to_dict(), v1={"memory": bad})
        assert tree.CgroupInfo.from_dict(forged) is None, bad
    assert tree.CgroupInfo.from_dict({"v2": 3}) is None
    assert tree.CgroupInfo.from_dict("nonsense") is None
