"""Apptainer's ``--apply-cgroups`` TOML read into ``Limits`` (``cgroups/apptainer_toml.py``)."""

from __future__ import annotations

import pytest

from instancelib import Device, InvalidArgument, Limits, Unsupported
from instancelib.cgroups.resources import V2, Setting

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
    assert Setting("cpu", "cpu.max", "25000 50000") in V2.settings(limits, lambda c, f: False)


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
