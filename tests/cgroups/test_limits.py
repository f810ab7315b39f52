"""``Limits``: parsing, validation, and the cgroup files each limit maps to (v2 and v1)."""

from __future__ import annotations

import pytest

from instancelib import Device, InvalidArgument, Limits
from instancelib.cgroups.limits import parse_size


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


def test_devices():
    assert Device.parse("8:0 200", "f") == Device(8, 0, 200)
    assert Device.parse("8:16:300", "f") == Device(8, 16, 300)
    assert Device.parse(("259:1", "10M"), "f", size=True) == Device(259, 1, 10 << 20)
    assert Device(8, 0, 1).key == "8:0"


def test_controllers_needed():
    assert Limits(memory="64M", pids_limit=3).controllers() == {"memory", "pids"}
    assert Limits(cpu_shares=100, device_read_iops=["8:0 5"]).controllers() == {"cpu", "io"}
    assert Limits(unified={"hugetlb.2MB.max": "0"}).controllers() == {"hugetlb"}


def test_to_dict():
    limits = Limits(memory="64M", blkio_weight_device=["8:0 100"])
    assert limits.to_dict() == {"memory": 64 << 20, "blkio_weight_device": ["8:0 100"]}
    assert Limits(**{k: v for k, v in limits.to_dict().items()}) == limits
