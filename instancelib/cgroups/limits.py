"""``Limits``: what an instance may use, validated (the files they become: ``resources``).

The fields and their meaning follow Singularity's (and docker's) flags:
``--memory``, ``--memory-reservation``, ``--memory-swap`` (memory plus swap;
-1 for unlimited swap), ``--cpus``, ``--cpu-shares``, ``--cpuset-cpus``,
``--cpuset-mems``, ``--blkio-weight``, ``--blkio-weight-device``,
``--pids-limit``; plus the device throttles and raw cgroup v2 ``unified``
settings that Apptainer's ``--apply-cgroups`` TOML (OCI ``LinuxResources``)
can hold.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from typing import Any

import attrs

from instancelib.cgroups import apptainer_toml
from instancelib.cgroups.values import CPU_PERIOD, Device, integer, parse_size
from instancelib.errors import InvalidArgument

__all__ = ["CPU_PERIOD", "Device", "Limits", "parse_size"]

_CPUSET = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")
_UNIFIED_KEY = re.compile(r"^[a-z0-9_]+\.[A-Za-z0-9_.]+$")
_MAX_PERIOD = 1_000_000
_MIN_PERIOD = 1_000
_MIN_QUOTA = 1000  # µs: the smallest CFS quota the kernel takes


def _optional_size(value: Any, field: str, *, unlimited: bool = False) -> int | None:
    return None if value is None else parse_size(value, field, allow_unlimited=unlimited)


def _optionalinteger(value: Any, field: str) -> int | None:
    return None if value is None else integer(value, field)


def _memory(value: Any) -> int | None:
    return _optional_size(value, "memory")


def _memory_reservation(value: Any) -> int | None:
    return _optional_size(value, "memory_reservation")


def _memory_swap(value: Any) -> int | None:
    return _optional_size(value, "memory_swap", unlimited=True)


def _cpu_period(value: Any) -> int | None:
    return _optionalinteger(value, "cpu_period")


def _cpu_shares(value: Any) -> int | None:
    return _optionalinteger(value, "cpu_shares")


def _blkio_weight(value: Any) -> int | None:
    return _optionalinteger(value, "blkio_weight")


def _pids_limit(value: Any) -> int | None:
    return _optionalinteger(value, "pids_limit")


def _cpus(value: Any) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidArgument(f"cpus: expected a number of CPUs such as 0.5 or 2, "
                              f"got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(number) or number <= 0:
        raise InvalidArgument(f"cpus: must be a number > 0, got {value!r}")
    return number


def _cpuset(value: Any, field: str) -> str | None:
    if value is None:
        return None
    text = str(value).replace(" ", "")
    if not _CPUSET.match(text):
        raise InvalidArgument(f"{field}: expected a list such as 0-3,5, got {value!r}")
    for part in text.split(","):
        low, _, high = part.partition("-")
        if high and int(high) < int(low):
            raise InvalidArgument(f"{field}: range {part} is backwards")
    return text


def _cpuset_cpus(value: Any) -> str | None:
    return _cpuset(value, "cpuset_cpus")


def _cpuset_mems(value: Any) -> str | None:
    return _cpuset(value, "cpuset_mems")


def _devices(value: Any, field: str, *, size: bool = False) -> tuple[Device, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, (str, Device)) else list(value)
    return tuple(Device.parse(item, field, size=size) for item in items)


def _weight_devices(value: Any) -> tuple[Device, ...]:
    return _devices(value, "blkio_weight_device")


def _read_bps(value: Any) -> tuple[Device, ...]:
    return _devices(value, "device_read_bps", size=True)


def _write_bps(value: Any) -> tuple[Device, ...]:
    return _devices(value, "device_write_bps", size=True)


def _read_iops(value: Any) -> tuple[Device, ...]:
    return _devices(value, "device_read_iops")


def _write_iops(value: Any) -> tuple[Device, ...]:
    return _devices(value, "device_write_iops")


def _unified(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidArgument(f"unified: expected a mapping of cgroup v2 files to values, "
                              f"got {value!r}")
    result = {}
    for key, item in value.items():
        if not isinstance(key, str) or not _UNIFIED_KEY.match(key) or "/" in key:
            raise InvalidArgument(f"unified: {key!r} is not a cgroup v2 file name "
                                  "(like memory.high)")
        if key.startswith("cgroup."):
            raise InvalidArgument(f"unified: {key} is a cgroup core file, not a limit")
        if not isinstance(item, (str, int)) or isinstance(item, bool) or "\n" in str(item):
            raise InvalidArgument(f"unified: the value of {key} must be one line of text")
        result[key] = str(item)
    return result


def _check(limits: Limits) -> None:
    """Checks across fields, and ranges (the kernel's and docker's)."""
    if limits.memory is not None and limits.memory < 6 << 20:
        raise InvalidArgument(f"memory: {limits.memory} bytes is below the minimum of 6M "
                              "(as docker)")
    if limits.memory_swap is not None:
        if limits.memory is None:
            raise InvalidArgument("memory_swap: needs memory as well (it is memory plus swap)")
        if limits.memory_swap != -1 and limits.memory_swap < limits.memory:
            raise InvalidArgument(f"memory_swap: {limits.memory_swap} is less than memory "
                                  f"({limits.memory}); it is the total of memory and swap")
    if (limits.memory_reservation is not None and limits.memory is not None
            and limits.memory_reservation > limits.memory):
        raise InvalidArgument("memory_reservation: must not exceed memory")
    if limits.cpu_shares is not None and not 2 <= limits.cpu_shares <= 262144:
        raise InvalidArgument(f"cpu_shares: must be within 2..262144, got {limits.cpu_shares}")
    if limits.cpu_period is not None:
        if limits.cpus is None:
            raise InvalidArgument("cpu_period: needs cpus as well")
        if not _MIN_PERIOD <= limits.cpu_period <= _MAX_PERIOD:
            raise InvalidArgument(f"cpu_period: must be within {_MIN_PERIOD}..{_MAX_PERIOD} µs, "
                                  f"got {limits.cpu_period}")
    if limits.cpus is not None and limits.cpus > (os.cpu_count() or 1) * 1000:
        raise InvalidArgument(f"cpus: {limits.cpus} is absurd for this host")
    if limits.cpus is not None:
        period = limits.cpu_period or CPU_PERIOD
        if round(limits.cpus * period) < _MIN_QUOTA:
            raise InvalidArgument(
                f"cpus: {limits.cpus:g} of a {period} µs period is a quota of "
                f"{limits.cpus * period:g} µs; the kernel's smallest is {_MIN_QUOTA} µs "
                f"(cpus >= {_MIN_QUOTA / period:g})")
    if limits.blkio_weight is not None and not 10 <= limits.blkio_weight <= 1000:
        raise InvalidArgument(f"blkio_weight: must be within 10..1000, got {limits.blkio_weight}")
    for device in limits.blkio_weight_device:
        if not 10 <= device.value <= 1000:
            raise InvalidArgument(f"blkio_weight_device: weight {device.value} for "
                                  f"{device.key} is not within 10..1000")
    if limits.pids_limit is not None and limits.pids_limit != -1 and limits.pids_limit < 1:
        raise InvalidArgument(f"pids_limit: must be >= 1 (or -1 for none), got "
                              f"{limits.pids_limit}")


@attrs.frozen(kw_only=True)
class Limits:
    """Resource limits for an instance (``Instance.start(..., limits=Limits(...))``).

    Sizes take bytes or ``512M``, ``1.5G`` (binary units).  Every value is
    checked when the object is made; a bad one raises ``InvalidArgument`` (a
    ``ValueError``) naming the field.  Leave a field ``None`` (or empty) for no
    limit.

    Attributes:
        memory: the memory limit (bytes).
        memory_reservation: a soft limit, reclaimed towards under pressure.
        memory_swap: memory plus swap (bytes); -1 for unlimited swap.
        cpus: CPUs' worth of time per period (0.5: half of one CPU).
        cpu_period: the CFS period in µs for ``cpus`` (default 100000).
        cpu_shares: the relative CPU weight (2..262144; 1024 is the default).
        cpuset_cpus, cpuset_mems: CPUs and memory nodes allowed (``0-3,5``).
        blkio_weight: the relative block-I/O weight (10..1000).
        blkio_weight_device: per-device weights (``"/dev/sda:200"``, ``"8:0 200"``).
        device_read_bps, device_write_bps: per-device bytes/s caps (``"8:0 10M"``).
        device_read_iops, device_write_iops: per-device I/O-per-second caps.
        pids_limit: the most processes (and threads) at once; -1 for none.
        unified: raw cgroup v2 settings, ``{"memory.high": "300M"}``.
    """

    memory: int | None = attrs.field(default=None, converter=_memory)
    memory_reservation: int | None = attrs.field(default=None, converter=_memory_reservation)
    memory_swap: int | None = attrs.field(default=None, converter=_memory_swap)
    cpus: float | None = attrs.field(default=None, converter=_cpus)
    cpu_period: int | None = attrs.field(default=None, converter=_cpu_period)
    cpu_shares: int | None = attrs.field(default=None, converter=_cpu_shares)
    cpuset_cpus: str | None = attrs.field(default=None, converter=_cpuset_cpus)
    cpuset_mems: str | None = attrs.field(default=None, converter=_cpuset_mems)
    blkio_weight: int | None = attrs.field(default=None, converter=_blkio_weight)
    blkio_weight_device: tuple[Device, ...] = attrs.field(default=(), converter=_weight_devices)
    device_read_bps: tuple[Device, ...] = attrs.field(default=(), converter=_read_bps)
    device_write_bps: tuple[Device, ...] = attrs.field(default=(), converter=_write_bps)
    device_read_iops: tuple[Device, ...] = attrs.field(default=(), converter=_read_iops)
    device_write_iops: tuple[Device, ...] = attrs.field(default=(), converter=_write_iops)
    pids_limit: int | None = attrs.field(default=None, converter=_pids_limit)
    unified: dict[str, str] = attrs.field(factory=dict, converter=_unified)

    def __attrs_post_init__(self) -> None:
        _check(self)

    def __bool__(self) -> bool:
        return any(value not in (None, (), {}) for value in attrs.astuple(self, recurse=False))

    def controllers(self) -> set[str]:
        """The cgroup controllers (v2 names) these limits need."""
        needed = set()
        if any(v is not None for v in (self.memory, self.memory_reservation, self.memory_swap)):
            needed.add("memory")
        if self.cpus is not None or self.cpu_shares is not None:
            needed.add("cpu")
        if self.cpuset_cpus is not None or self.cpuset_mems is not None:
            needed.add("cpuset")
        if (self.blkio_weight is not None or self.blkio_weight_device or self.device_read_bps
                or self.device_write_bps or self.device_read_iops or self.device_write_iops):
            needed.add("io")
        if self.pids_limit is not None:
            needed.add("pids")
        needed.update(key.partition(".")[0] for key in self.unified)
        return needed

    def to_dict(self) -> dict[str, Any]:
        """The limits that are set, as JSON-ready values."""
        result: dict[str, Any] = {}
        for field in attrs.fields(Limits):
            value = getattr(self, field.name)
            if value in (None, (), {}):
                continue
            if isinstance(value, tuple):
                value = [f"{d.key} {d.value}" for d in value]
            result[field.name] = value
        return result

    # -- Apptainer's --apply-cgroups TOML -----------------------------------------------------

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> Limits:
        """Read the limits of an Apptainer ``--apply-cgroups`` file (see ``apptainer_toml``).

        Raises:
            InvalidArgument: unreadable or malformed file, a bad value.
            Unsupported: a section or key instancelib does not enforce.
        """
        return cls(**apptainer_toml.read_fields(path))
