"""``Limits``: parsing, validation, and the cgroup files each limit maps to (v2 and v1)."""

from __future__ import annotations

import pytest

from instancelib import Device, InvalidArgument, Limits, Unsupported
from instancelib.cgroups.limits import blkio_to_io_weight, parse_size, shares_to_weight


@pytest.mark.parametrize(("text", "expected"), [
    ("1024", 1024), (4096, 4096), ("512k", 512 << 10), ("500M", 500 << 20),
    ("1.5G", 3 << 29), ("2g", 2 << 30), ("64MiB", 64 << 20), ("10MB", 10 << 20),
    (" 8M ", 8 << 20),
])
def test_sizes(text, expected):
    assert parse_size(text, "memory") == expected


@pytest.mark.parametrize("bad", ["", "abc", "-5M", "1.3", "12X", "1.0000001K", True, -3, [1]])
def test_bad_sizes_name_the_field(bad):
    with pytest.raises(InvalidArgument, match=r"^memory_reservation: ") as caught:
        Limits(memory_reservation=bad)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"memory": "1M"}, "memory"),                      # below docker's 6M minimum
    ({"memory_swap": "1G"}, "memory_swap"),            # swap without memory
    ({"memory": "1G", "memory_swap": "512M"}, "memory_swap"),
    ({"memory": "64M", "memory_reservation": "1G"}, "memory_reservation"),
    ({"cpus": 0}, "cpus"), ({"cpus": "lots"}, "cpus"), ({"cpus": float("nan")}, "cpus"),
    ({"cpu_shares": 1}, "cpu_shares"), ({"cpu_shares": 300000}, "cpu_shares"),
    ({"cpu_period": 100000}, "cpu_period"),            # period without cpus
    ({"cpus": 1, "cpu_period": 10}, "cpu_period"),
    ({"cpuset_cpus": "0-a"}, "cpuset_cpus"), ({"cpuset_cpus": "3-1"}, "cpuset_cpus"),
    ({"cpuset_mems": "x"}, "cpuset_mems"),
    ({"blkio_weight": 5}, "blkio_weight"), ({"blkio_weight": "heavy"}, "blkio_weight"),
    ({"blkio_weight_device": "8:0 5"}, "blkio_weight_device"),
    ({"blkio_weight_device": "sda:100"}, "blkio_weight_device"),
    ({"blkio_weight_device": "/etc/hostname:100"}, "blkio_weight_device"),
    ({"pids_limit": 0}, "pids_limit"), ({"pids_limit": "many"}, "pids_limit"),
    ({"unified": {"memory/high": "1"}}, "unified"), ({"unified": {"cgroup.kill": "1"}}, "unified"),
    ({"unified": {"memory.high": "1\n2"}}, "unified"), ({"unified": ["memory.high"]}, "unified"),
])
def test_invalid_limits_name_the_field(kwargs, field):
    with pytest.raises(InvalidArgument, match=f"^{field}: "):
        Limits(**kwargs)


def test_an_empty_limits_is_falsy():
    assert not Limits()
    assert Limits(pids_limit=5)
    assert Limits().controllers() == set()


def test_v2_files_follow_apptainer_and_runc():
    limits = Limits(memory="64M", memory_reservation="32M", memory_swap="128M", cpus=0.5,
                    cpu_shares=512, cpuset_cpus="0", cpuset_mems="0", blkio_weight=500,
                    blkio_weight_device=["8:0 200"], device_read_bps=["8:0 1M"],
                    device_write_iops=["8:16 100"], pids_limit=20,
                    unified={"memory.high": "60M"})
    files = limits.v2_files()
    assert ("memory.max", str(64 << 20)) in files
    assert ("memory.low", str(32 << 20)) in files
    assert ("memory.swap.max", str(64 << 20)) in files        # swap minus memory
    assert ("cpu.max", "50000 100000") in files
    assert ("cpu.weight", str(shares_to_weight(512))) in files
    assert ("cpuset.cpus", "0") in files and ("cpuset.mems", "0") in files
    assert ("io.weight", str(blkio_to_io_weight(500))) in files   # no BFQ: converted
    assert ("io.weight", f"8:0 {blkio_to_io_weight(200)}") in files
    assert ("io.max", f"8:0 rbps={1 << 20}") in files
    assert ("io.max", "8:16 wiops=100") in files
    assert ("pids.max", "20") in files
    assert ("memory.high", "60M") in files
    # With BFQ the weight is written as is.
    bfq = Limits(blkio_weight=500).v2_files(lambda name: name == "io.bfq.weight")
    assert bfq == [("io.bfq.weight", "500")]
    assert Limits(memory="64M", memory_swap=-1).v2_files()[-1] == ("memory.swap.max", "max")
    assert Limits(pids_limit=-1).v2_files() == [("pids.max", "max")]
    assert Limits(cpus=2, cpu_period=50000).v2_files() == [("cpu.max", "100000 50000")]


def test_conversions():
    assert shares_to_weight(2) == 1
    assert shares_to_weight(262144) == 10000
    assert shares_to_weight(1024) == 39       # the OCI conversion (1 + 1022*9999/262142)
    assert blkio_to_io_weight(10) == 1
    assert blkio_to_io_weight(1000) == 10000


def test_v1_settings():
    limits = Limits(memory="64M", memory_swap="128M", memory_reservation="32M", cpus=1.5,
                    cpu_shares=256, pids_limit=7, blkio_weight=300,
                    device_write_bps=["8:0 2M"])
    assert limits.v1_settings() == [
        ("memory", "memory.limit_in_bytes", str(64 << 20)),
        ("memory", "memory.memsw.limit_in_bytes", str(128 << 20)),
        ("memory", "memory.soft_limit_in_bytes", str(32 << 20)),
        ("cpu", "cpu.cfs_period_us", "100000"),
        ("cpu", "cpu.cfs_quota_us", "150000"),
        ("cpu", "cpu.shares", "256"),
        ("blkio", "blkio.weight", "300"),
        ("blkio", "blkio.throttle.write_bps_device", f"8:0 {2 << 20}"),
        ("pids", "pids.max", "7"),
    ]
    with pytest.raises(Unsupported, match="cgroup v2"):
        Limits(unified={"memory.high": "1M"}).v1_settings()


def test_devices():
    assert Device.parse("8:0 200", "f") == Device(8, 0, 200)
    assert Device.parse("8:16:300", "f") == Device(8, 16, 300)
    assert Device.parse(("259:1", "10M"), "f", size=True) == Device(259, 1, 10 << 20)
    assert Device(8, 0, 1).key == "8:0"


def test_controllers_needed():
    assert Limits(memory="64M", pids_limit=3).controllers() == {"memory", "pids"}
    assert Limits(cpu_shares=100, device_read_iops=["8:0 5"]).controllers() == {"cpu", "io"}
    assert Limits(unified={"hugetlb.2MB.max": "0"}).controllers() == {"hugetlb"}


APPTAINER_TOML = """
[memory]
    limit = 536870912
    reservation = 268435456
    swap = 1073741824

[cpu]
    shares = 512
    quota = 25000
    period = 50000
    cpus = "0-1"
    mems = "0"

[pids]
    limit = 100

[blockIO]
    weight = 200
    weightDevice = [{major = 8, minor = 0, weight = 300}]
    throttleReadBpsDevice = [{major = 8, minor = 0, rate = 1048576}]
    throttleWriteIOPSDevice = [{major = 8, minor = 0, rate = 50}]

[unified]
    "memory.high" = "400M"
"""


def test_apptainers_toml(tmp_path):
    path = tmp_path / "cgroups.toml"
    path.write_text(APPTAINER_TOML)
    limits = Limits.from_toml(path)
    assert limits == Limits(
        memory=512 << 20, memory_reservation=256 << 20, memory_swap=1 << 30, cpu_shares=512,
        cpus=0.5, cpu_period=50000, cpuset_cpus="0-1", cpuset_mems="0", pids_limit=100,
        blkio_weight=200, blkio_weight_device=[Device(8, 0, 300)],
        device_read_bps=[Device(8, 0, 1 << 20)], device_write_iops=[Device(8, 0, 50)],
        unified={"memory.high": "400M"})
    assert ("cpu.max", "25000 50000") in limits.v2_files()


@pytest.mark.parametrize(("text", "error", "match"), [
    ("[devices]\nallow = []\n", Unsupported, r"\[devices\]"),
    ("[memory]\nkernel = 1\n", Unsupported, "kernel"),
    ("[hugepageLimits]\n", Unsupported, "hugepageLimits"),
    ("[memory\n", InvalidArgument, "not valid TOML"),
    ("memory = 3\n", InvalidArgument, "must be a table"),
    ("[memory]\nlimit = 'lots'\n", InvalidArgument, "memory: "),
    ("[cpu]\nperiod = 1000\n", InvalidArgument, "without cpu.quota"),
    ("[blockIO]\nweightDevice = [{major = 8}]\n", InvalidArgument, "major and minor"),
])
def test_bad_toml(tmp_path, text, error, match):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(error, match=match):
        Limits.from_toml(path)


def test_missing_toml_file(tmp_path):
    with pytest.raises(InvalidArgument, match="cannot read"):
        Limits.from_toml(tmp_path / "none.toml")


def test_to_dict():
    limits = Limits(memory="64M", blkio_weight_device=["8:0 100"])
    assert limits.to_dict() == {"memory": 64 << 20, "blkio_weight_device": ["8:0 100"]}
    assert Limits(**{k: v for k, v in limits.to_dict().items()}) == limits
