"""``Limits``: what an instance may use, validated, and how each limit maps to cgroup files.

The fields and their meaning follow Singularity's (and docker's) flags:
``--memory``, ``--memory-reservation``, ``--memory-swap`` (memory plus swap;
-1 for unlimited swap), ``--cpus``, ``--cpu-shares``, ``--cpuset-cpus``,
``--cpuset-mems``, ``--blkio-weight``, ``--blkio-weight-device``,
``--pids-limit``; plus the device throttles and raw cgroup v2 ``unified``
settings that Apptainer's ``--apply-cgroups`` TOML (OCI ``LinuxResources``)
can hold.

The conversions are those of Apptainer and runc:

============================  ==============================  ==================================
limit                         cgroup v2                       cgroup v1
============================  ==============================  ==================================
memory                        memory.max                      memory.limit_in_bytes
memory_reservation            memory.low                      memory.soft_limit_in_bytes
memory_swap (memory + swap)   memory.swap.max = swap - memory memory.memsw.limit_in_bytes
cpus (and cpu_period)         cpu.max "quota period"          cpu.cfs_quota_us, cpu.cfs_period_us
cpu_shares                    cpu.weight (OCI conversion)     cpu.shares
cpuset_cpus, cpuset_mems      cpuset.cpus, cpuset.mems        cpuset.cpus, cpuset.mems
blkio_weight                  io.bfq.weight, else io.weight   blkio.weight (blkio.bfq.weight)
blkio_weight_device           io.bfq.weight / io.weight       blkio.weight_device (bfq.)
device_{read,write}_{bps,iops} io.max                         blkio.throttle.*_device
pids_limit                    pids.max                        pids.max
unified                       the files as given              (none: Unsupported)
============================  ==============================  ==================================
"""

from __future__ import annotations

import math
import os
import re
import stat
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from instancelib.errors import InvalidArgument, Unsupported

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

__all__ = ["Device", "Limits", "parse_size"]

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtTpP]?)(?:i?[bB])?\s*$")
_MULTIPLIERS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
_CPUSET = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")
_UNIFIED_KEY = re.compile(r"^[a-z0-9_]+\.[A-Za-z0-9_.]+$")
CPU_PERIOD = 100_000  # µs, the kernel's (and Apptainer's) default CFS period
_MAX_PERIOD = 1_000_000
_MIN_PERIOD = 1_000
_MIN_QUOTA = 1000  # µs: the smallest CFS quota the kernel takes


def parse_size(value: str | int | float, field: str, *, allow_unlimited: bool = False) -> int:
    """Bytes from ``500M``, ``1.5G``, ``1024``, ``"512k"`` (binary units, as docker).

    ``-1`` (when ``allow_unlimited``) means no limit.

    Raises:
        InvalidArgument: naming ``field``.
    """
    if isinstance(value, bool):
        raise InvalidArgument(f"{field}: expected a size such as 512M or 1.5G, got {value!r}")
    if isinstance(value, (int, float)):
        if allow_unlimited and value == -1:
            return -1
        if value < 0 or not math.isfinite(value) or value != int(value):
            raise InvalidArgument(f"{field}: a size must be a whole number of bytes >= 0, "
                                  f"got {value!r}")
        return int(value)
    if not isinstance(value, str):
        raise InvalidArgument(f"{field}: expected a size such as 512M or 1.5G, got {value!r}")
    if allow_unlimited and value.strip() == "-1":
        return -1
    match = _SIZE.match(value)
    if not match:
        raise InvalidArgument(f"{field}: {value!r} is not a size (examples: 1048576, 512M, "
                              "1.5G)")
    number = float(match.group(1)) * _MULTIPLIERS[match.group(2).lower()]
    if number != int(number):
        raise InvalidArgument(f"{field}: {value!r} is not a whole number of bytes")
    return int(number)


@attrs.frozen
class Device:
    """A block device and a value for it (a weight, or a bytes/IO-per-second rate)."""

    major: int
    minor: int
    value: int

    @property
    def key(self) -> str:
        """``MAJOR:MINOR``, as cgroup files name devices."""
        return f"{self.major}:{self.minor}"

    @classmethod
    def parse(cls, spec: Any, field: str, *, size: bool = False) -> Device:
        """``"/dev/sda:200"``, ``"8:0 200"``, ``("8:0", 200)`` or a ``Device``."""
        if isinstance(spec, Device):
            return spec
        if isinstance(spec, tuple) and len(spec) == 2:
            where, raw = spec
        elif isinstance(spec, str):
            where, _sep, raw = spec.replace(" ", ":", 1).rpartition(":") \
                if spec.startswith("/") else _split_numeric(spec)
            if not where:
                raise InvalidArgument(f"{field}: expected DEVICE:VALUE, got {spec!r}")
        else:
            raise InvalidArgument(f"{field}: expected DEVICE:VALUE, got {spec!r}")
        major, minor = _device_numbers(str(where), field)
        value = parse_size(raw, field) if size else _int(raw, field)
        return cls(major, minor, value)


def _split_numeric(spec: str) -> tuple[str, str, str]:
    """``"8:0 200"`` or ``"8:0:200"`` → (``"8:0"``, sep, ``"200"``)."""
    text = spec.strip()
    if " " in text:
        device, _, value = text.partition(" ")
        return device, " ", value.strip()
    device, sep, value = text.rpartition(":")
    return device, sep, value


def _device_numbers(where: str, field: str) -> tuple[int, int]:
    if where.startswith("/"):
        try:
            info = os.stat(where)
        except OSError as err:
            raise InvalidArgument(f"{field}: cannot use {where}: {err.strerror}") from err
        if not stat.S_ISBLK(info.st_mode):
            raise InvalidArgument(f"{field}: {where} is not a block device")
        return os.major(info.st_rdev), os.minor(info.st_rdev)
    major, sep, minor = where.partition(":")
    if not sep or not major.isdigit() or not minor.isdigit():
        raise InvalidArgument(f"{field}: expected a device path or MAJOR:MINOR, got {where!r}")
    return int(major), int(minor)


def _int(value: Any, field: str) -> int:
    if isinstance(value, bool):
        raise InvalidArgument(f"{field}: expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        return int(value)
    raise InvalidArgument(f"{field}: expected an integer, got {value!r}")


def _optional_size(value: Any, field: str, *, unlimited: bool = False) -> int | None:
    return None if value is None else parse_size(value, field, allow_unlimited=unlimited)


def _optional_int(value: Any, field: str) -> int | None:
    return None if value is None else _int(value, field)


def _memory(value: Any) -> int | None:
    return _optional_size(value, "memory")


def _memory_reservation(value: Any) -> int | None:
    return _optional_size(value, "memory_reservation")


def _memory_swap(value: Any) -> int | None:
    return _optional_size(value, "memory_swap", unlimited=True)


def _cpu_period(value: Any) -> int | None:
    return _optional_int(value, "cpu_period")


def _cpu_shares(value: Any) -> int | None:
    return _optional_int(value, "cpu_shares")


def _blkio_weight(value: Any) -> int | None:
    return _optional_int(value, "blkio_weight")


def _pids_limit(value: Any) -> int | None:
    return _optional_int(value, "pids_limit")


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

    # -- the files ---------------------------------------------------------------------------

    def v2_files(self, has_file: Any = None) -> list[tuple[str, str]]:
        """``(file, value)`` to write in a cgroup v2 directory, in order.

        ``has_file(name)`` tells whether the cgroup offers a file (to choose
        ``io.bfq.weight`` over ``io.weight``); default: the BFQ files are absent.
        """
        exists = has_file or (lambda _name: False)
        files: list[tuple[str, str]] = []
        if self.memory_reservation is not None:
            files.append(("memory.low", str(self.memory_reservation)))
        if self.memory is not None:
            files.append(("memory.max", str(self.memory)))
        if self.memory_swap is not None and self.memory is not None:
            swap = "max" if self.memory_swap == -1 else str(self.memory_swap - self.memory)
            files.append(("memory.swap.max", swap))
        if self.cpus is not None:
            period = self.cpu_period or CPU_PERIOD
            files.append(("cpu.max", f"{round(self.cpus * period)} {period}"))
        if self.cpu_shares is not None:
            files.append(("cpu.weight", str(shares_to_weight(self.cpu_shares))))
        if self.cpuset_cpus is not None:
            files.append(("cpuset.cpus", self.cpuset_cpus))
        if self.cpuset_mems is not None:
            files.append(("cpuset.mems", self.cpuset_mems))
        bfq = exists("io.bfq.weight")
        if self.blkio_weight is not None:
            files.append(("io.bfq.weight", str(self.blkio_weight)) if bfq else
                         ("io.weight", str(blkio_to_io_weight(self.blkio_weight))))
        for device in self.blkio_weight_device:
            files.append(("io.bfq.weight", f"{device.key} {device.value}") if bfq else
                         ("io.weight", f"{device.key} {blkio_to_io_weight(device.value)}"))
        for key, devices in (("rbps", self.device_read_bps), ("wbps", self.device_write_bps),
                             ("riops", self.device_read_iops),
                             ("wiops", self.device_write_iops)):
            files.extend(("io.max", f"{d.key} {key}={d.value}") for d in devices)
        if self.pids_limit is not None:
            files.append(("pids.max", "max" if self.pids_limit == -1 else str(self.pids_limit)))
        files.extend(self.unified.items())
        return files

    def v1_settings(self) -> list[tuple[str, str, str]]:
        """``(controller, file, value)`` for cgroup v1 hierarchies, in order.

        Raises:
            Unsupported: ``unified`` settings (they exist only in cgroup v2).
        """
        if self.unified:
            raise Unsupported("unified limits are cgroup v2 settings; this host runs the "
                              f"controllers {', '.join(sorted(self.controllers()))} on "
                              "cgroup v1: " + ", ".join(sorted(self.unified)))
        out: list[tuple[str, str, str]] = []
        if self.memory is not None:
            out.append(("memory", "memory.limit_in_bytes", str(self.memory)))
        if self.memory_swap is not None:
            out.append(("memory", "memory.memsw.limit_in_bytes", str(self.memory_swap)))
        if self.memory_reservation is not None:
            out.append(("memory", "memory.soft_limit_in_bytes", str(self.memory_reservation)))
        if self.cpus is not None:
            period = self.cpu_period or CPU_PERIOD
            out.append(("cpu", "cpu.cfs_period_us", str(period)))
            out.append(("cpu", "cpu.cfs_quota_us", str(round(self.cpus * period))))
        if self.cpu_shares is not None:
            out.append(("cpu", "cpu.shares", str(self.cpu_shares)))
        if self.cpuset_cpus is not None:
            out.append(("cpuset", "cpuset.cpus", self.cpuset_cpus))
        if self.cpuset_mems is not None:
            out.append(("cpuset", "cpuset.mems", self.cpuset_mems))
        if self.blkio_weight is not None:
            out.append(("blkio", "blkio.weight", str(self.blkio_weight)))
        for device in self.blkio_weight_device:
            out.append(("blkio", "blkio.weight_device", f"{device.key} {device.value}"))
        for name, devices in (("read_bps", self.device_read_bps),
                              ("write_bps", self.device_write_bps),
                              ("read_iops", self.device_read_iops),
                              ("write_iops", self.device_write_iops)):
            out.extend(("blkio", f"blkio.throttle.{name}_device", f"{d.key} {d.value}")
                       for d in devices)
        if self.pids_limit is not None:
            out.append(("pids", "pids.max",
                        "max" if self.pids_limit == -1 else str(self.pids_limit)))
        return out

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
        """Read the limits of an Apptainer ``--apply-cgroups`` file (OCI ``LinuxResources``).

        Sections ``[memory]`` (limit, reservation, swap), ``[cpu]`` (shares,
        quota, period, cpus, mems), ``[pids]`` (limit), ``[blockIO]`` (weight,
        weightDevice, throttle{Read,Write}{Bps,IOPS}Device) and ``[unified]``.
        Anything else cannot be enforced here and is refused, never ignored.

        Raises:
            InvalidArgument: unreadable or malformed file, a bad value.
            Unsupported: a section or key instancelib does not enforce.
        """
        try:
            data = tomllib.loads(Path(path).read_text())
        except OSError as err:
            raise InvalidArgument(f"cannot read the cgroups file {path}: {err.strerror}") from err
        except tomllib.TOMLDecodeError as err:
            raise InvalidArgument(f"{path} is not valid TOML: {err}") from err
        return cls(**_from_resources(data, str(path)))


_TOML_KEYS = {
    "memory": {"limit", "reservation", "swap"},
    "cpu": {"shares", "quota", "period", "cpus", "mems"},
    "pids": {"limit"},
    "blockIO": {"weight", "weightDevice", "throttleReadBpsDevice", "throttleWriteBpsDevice",
                "throttleReadIOPSDevice", "throttleWriteIOPSDevice"},
    "unified": None,
}


def _from_resources(data: dict[str, Any], where: str) -> dict[str, Any]:
    for section, value in data.items():
        if section not in _TOML_KEYS:
            raise Unsupported(f"{where}: [{section}] limits are not supported by instancelib "
                              f"(supported: {', '.join(_TOML_KEYS)})")
        if not isinstance(value, dict):
            raise InvalidArgument(f"{where}: {section} must be a table")
        allowed = _TOML_KEYS[section]
        if allowed is not None:
            unknown = sorted(set(value) - allowed)
            if unknown:
                raise Unsupported(f"{where}: [{section}] {', '.join(unknown)} not supported "
                                  f"(supported: {', '.join(sorted(allowed))})")
    fields: dict[str, Any] = {}
    memory = data.get("memory", {})
    for key, field in (("limit", "memory"), ("reservation", "memory_reservation"),
                       ("swap", "memory_swap")):
        if key in memory:
            fields[field] = memory[key]
    cpu = data.get("cpu", {})
    if "shares" in cpu:
        fields["cpu_shares"] = cpu["shares"]
    if "quota" in cpu:
        quota = _int(cpu["quota"], "cpu.quota")
        period = _int(cpu.get("period", CPU_PERIOD), "cpu.period")
        if quota > 0:
            if period <= 0:
                raise InvalidArgument(f"{where}: cpu.period must be > 0")
            fields["cpus"] = quota / period
            if period != CPU_PERIOD:
                fields["cpu_period"] = period
    elif "period" in cpu:
        raise InvalidArgument(f"{where}: cpu.period without cpu.quota")
    if "cpus" in cpu:
        fields["cpuset_cpus"] = cpu["cpus"]
    if "mems" in cpu:
        fields["cpuset_mems"] = cpu["mems"]
    if "limit" in data.get("pids", {}):
        fields["pids_limit"] = data["pids"]["limit"]
    block = data.get("blockIO", {})
    if "weight" in block:
        fields["blkio_weight"] = block["weight"]
    for key, field, size in (
            ("weightDevice", "blkio_weight_device", False),
            ("throttleReadBpsDevice", "device_read_bps", True),
            ("throttleWriteBpsDevice", "device_write_bps", True),
            ("throttleReadIOPSDevice", "device_read_iops", False),
            ("throttleWriteIOPSDevice", "device_write_iops", False)):
        if key in block:
            fields[field] = tuple(_toml_device(item, f"blockIO.{key}", size, where)
                                  for item in block[key])
    if "unified" in data:
        fields["unified"] = data["unified"]
    return fields


def _toml_device(item: Any, field: str, size: bool, where: str) -> Device:
    if not isinstance(item, dict) or "major" not in item or "minor" not in item:
        raise InvalidArgument(f"{where}: {field} entries need major and minor")
    value = item.get("weight", item.get("rate"))
    if value is None:
        wanted = "weight" if field.endswith("weightDevice") else "rate"
        raise InvalidArgument(f"{where}: {field} entries need a {wanted}")
    number = parse_size(value, field) if size else _int(value, field)
    return Device(_int(item["major"], field), _int(item["minor"], field), number)


def shares_to_weight(shares: int) -> int:
    """cpu.shares (2..262144) to cpu.weight (1..10000), the OCI runtime conversion."""
    return 1 + ((shares - 2) * 9999) // 262142


def blkio_to_io_weight(weight: int) -> int:
    """blkio.weight (10..1000) to io.weight (1..10000), the OCI runtime conversion."""
    return 1 + ((weight - 10) * 9999) // 990
