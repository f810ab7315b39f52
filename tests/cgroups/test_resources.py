"""How ``Limits`` map to cgroup v1 and v2 files (``cgroups/resources.py``), against temporary trees.

The mapping takes its directories as arguments, so these tests build a
cgroup-like directory with the files a kernel would offer and check which
files are chosen, what is written into them and what is refused; no real
cgroup is touched.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from instancelib import Limits, Unsupported
from instancelib.cgroups import resources
from instancelib.cgroups.resources import V1, V2, Setting, blkio_to_io_weight, shares_to_weight

NONE = lambda _controller, _filename: False  # noqa: E731 (a kernel without BFQ files)


@pytest.mark.parametrize(("limits", "expected"), [
    (Limits(memory="64M"), [("memory.max", str(64 << 20))]),
    (Limits(memory_reservation="32M"), [("memory.low", str(32 << 20))]),
    (Limits(memory="64M", memory_swap="128M"),
     [("memory.max", str(64 << 20)), ("memory.swap.max", str(64 << 20))]),  # swap minus memory
    (Limits(memory="64M", memory_swap=-1),
     [("memory.max", str(64 << 20)), ("memory.swap.max", "max")]),
    (Limits(cpus=0.5), [("cpu.max", "50000 100000")]),
    (Limits(cpus=2, cpu_period=50000), [("cpu.max", "100000 50000")]),
    (Limits(cpus=0.01), [("cpu.max", "1000 100000")]),           # the kernel's smallest quota
    (Limits(cpu_shares=512), [("cpu.weight", str(shares_to_weight(512)))]),
    (Limits(cpuset_cpus="0", cpuset_mems="0"), [("cpuset.cpus", "0"), ("cpuset.mems", "0")]),
    (Limits(blkio_weight=500), [("io.weight", str(blkio_to_io_weight(500)))]),
    (Limits(blkio_weight_device=["8:0 200"]), [("io.weight", f"8:0 {blkio_to_io_weight(200)}")]),
    (Limits(device_read_bps=["8:0 1M"]), [("io.max", f"8:0 rbps={1 << 20}")]),
    (Limits(device_write_iops=["8:16 100"]), [("io.max", "8:16 wiops=100")]),
    (Limits(pids_limit=20), [("pids.max", "20")]),
    (Limits(pids_limit=-1), [("pids.max", "max")]),
    (Limits(unified={"memory.high": "60M"}), [("memory.high", "60M")]),
])
def test_v2_settings_follow_apptainer_and_runc(limits, expected):
    assert [(s.filename, s.value) for s in V2.settings(limits, NONE)] == expected


@pytest.mark.parametrize(("limits", "expected"), [
    (Limits(memory="64M"), [("memory", "memory.limit_in_bytes", str(64 << 20))]),
    (Limits(memory="64M", memory_swap="128M"),
     [("memory", "memory.limit_in_bytes", str(64 << 20)),
      ("memory", "memory.memsw.limit_in_bytes", str(128 << 20))]),
    (Limits(memory_reservation="32M"),
     [("memory", "memory.soft_limit_in_bytes", str(32 << 20))]),
    (Limits(cpus=1.5), [("cpu", "cpu.cfs_period_us", "100000"),
                        ("cpu", "cpu.cfs_quota_us", "150000")]),
    (Limits(cpu_shares=256), [("cpu", "cpu.shares", "256")]),
    (Limits(blkio_weight=300), [("blkio", "blkio.weight", "300")]),
    (Limits(device_write_bps=["8:0 2M"]),
     [("blkio", "blkio.throttle.write_bps_device", f"8:0 {2 << 20}")]),
    (Limits(pids_limit=7), [("pids", "pids.max", "7")]),
])
def test_v1_settings_follow_apptainer_and_runc(limits, expected):
    assert [(s.controller, s.filename, s.value) for s in V1.settings(limits, NONE)] == expected


def test_unified_settings_have_no_v1_form():
    with pytest.raises(Unsupported, match="cgroup v2"):
        V1.settings(Limits(unified={"memory.high": "1M"}), NONE)


def test_conversions():
    assert shares_to_weight(2) == 1
    assert shares_to_weight(262144) == 10000
    assert shares_to_weight(1024) == 39       # the OCI conversion (1 + 1022*9999/262142)
    assert blkio_to_io_weight(10) == 1
    assert blkio_to_io_weight(1000) == 10000


def _tree(directory: Path, *files: str) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    for name in files:
        (directory / name).write_text("")
    return str(directory)


# (version, the files the kernel offers, limits, the (file, value) expected to be written)
BFQ_CASES = [
    ("v2", ("io.weight",), Limits(blkio_weight=300), [("io.weight", str(blkio_to_io_weight(300)))]),
    ("v2", ("io.weight", "io.bfq.weight"), Limits(blkio_weight=300), [("io.bfq.weight", "300")]),
    ("v2", ("io.bfq.weight",), Limits(blkio_weight_device=["8:0 200"]),
     [("io.bfq.weight", "8:0 200")]),
    ("v1", ("blkio.weight",), Limits(blkio_weight=300), [("blkio.weight", "300")]),
    ("v1", ("blkio.weight", "blkio.bfq.weight"), Limits(blkio_weight=300),
     [("blkio.weight", "300")]),
    ("v1", ("blkio.bfq.weight",), Limits(blkio_weight=300), [("blkio.bfq.weight", "300")]),
    ("v1", ("blkio.bfq.weight_device",), Limits(blkio_weight_device=["8:0 200"]),
     [("blkio.bfq.weight_device", "8:0 200")]),
]


@pytest.mark.parametrize(("version", "offered", "limits", "expected"), BFQ_CASES)
def test_the_bfq_weight_files_are_chosen_by_one_rule(tmp_path, version, offered, limits,
                                                     expected):
    directory = _tree(tmp_path / "io", *offered)
    if version == "v2":
        found = resources.resolve(directory, {}, {"io": "v2"}, limits)
    else:
        found = resources.resolve(None, {"blkio": directory}, {"io": "v1"}, limits)
    assert [(s.filename, s.value) for _, s, _ in found] == expected
    resources.apply(*((directory, {}, {"io": "v2"}) if version == "v2"
                      else (None, {"blkio": directory}, {"io": "v1"})), limits)
    for filename, value in expected:
        assert (tmp_path / "io" / filename).read_text() == value


@pytest.mark.parametrize(("v2_files", "v1_files", "controllers", "limits", "missing"), [
    ((), {"memory": ("memory.limit_in_bytes",)}, {"memory": "v1"},
     Limits(memory="64M", memory_swap="128M"), "memory.memsw.limit_in_bytes"),  # no swap count
    (("memory.max",), {}, {"memory": "v2"}, Limits(memory="64M", memory_swap="128M"),
     "memory.swap.max"),
    (("cpu.weight",), {}, {"cpu": "v2"}, Limits(cpus=1), "cpu.max"),        # no CFS bandwidth
    ((), {"blkio": ()}, {"io": "v1"}, Limits(blkio_weight=300), "blkio.weight"),
    (("io.max",), {}, {"io": "v2"}, Limits(blkio_weight=300), "io.weight"),  # no scheduler
    ((), {}, {"pids": "v1"}, Limits(pids_limit=3), "no pids cgroup v1 hierarchy"),
])
def test_a_file_the_kernel_lacks_is_refused_before_anything_is_written(  # noqa: PLR0917
        tmp_path, v2_files, v1_files, controllers, limits, missing):
    v2_dir = _tree(tmp_path / "v2", *v2_files) if v2_files else None
    v1_dirs = {name: _tree(tmp_path / name, *files) for name, files in v1_files.items()}
    with pytest.raises(Unsupported, match=missing.replace(".", r"\.")):
        resources.resolve(v2_dir, v1_dirs, controllers, limits)
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.read_text()]
    assert written == []


def test_each_controller_is_written_by_the_version_serving_it(tmp_path):
    """Hybrid: memory on v1, pids on v2; each limit lands in its own hierarchy only."""
    v2_dir = _tree(tmp_path / "v2", "pids.max", "memory.max")
    memory = _tree(tmp_path / "memory", "memory.limit_in_bytes")
    limits = Limits(memory="64M", pids_limit=9)
    found = resources.resolve(v2_dir, {"memory": memory}, {"memory": "v1", "pids": "v2"},
                              limits)
    assert [(d, s, m.version) for d, s, m in found] == [
        (v2_dir, Setting("pids", "pids.max", "9"), "v2"),
        (memory, Setting("memory", "memory.limit_in_bytes", str(64 << 20)), "v1"),
    ]
    resources.apply(v2_dir, {"memory": memory}, {"memory": "v1", "pids": "v2"}, limits)
    assert (tmp_path / "v2/pids.max").read_text() == "9"
    assert (tmp_path / "v2/memory.max").read_text() == ""   # v1 serves memory here
    assert (tmp_path / "memory/memory.limit_in_bytes").read_text() == str(64 << 20)


def test_usage_is_read_through_the_mode(tmp_path):
    v2_dir = tmp_path / "v2"
    v2_dir.mkdir()
    (v2_dir / "cpu.stat").write_text("usage_usec 2500\nuser_usec 2000\n")
    (v2_dir / "memory.current").write_text("1000000\n")
    (v2_dir / "memory.stat").write_text("anon 1\ninactive_file 400000\n")
    (v2_dir / "memory.max").write_text("max\n")
    (v2_dir / "io.stat").write_text("8:0 rbytes=10 wbytes=20 rios=1\n8:16 rbytes=5 wbytes=0\n")
    assert V2.cpu_ns(str(v2_dir)) == 2_500_000
    assert V2.memory(str(v2_dir)) == (600000, None)
    assert V2.io_bytes(str(v2_dir)) == (15, 20)
    blkio = tmp_path / "blkio"
    blkio.mkdir()
    (blkio / "blkio.throttle.io_service_bytes_recursive").write_text(
        "8:0 Read 100\n8:0 Write 7\n8:0 Total 107\nTotal 107\n")
    assert V1.io_bytes(str(blkio)) == (100, 7)
    (blkio / "cpuacct.usage").write_text("123456\n")
    assert V1.cpu_ns(str(blkio)) == 123456
