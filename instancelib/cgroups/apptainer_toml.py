"""Apptainer's ``--apply-cgroups`` TOML file (OCI ``LinuxResources``) read into ``Limits`` fields.

Sections ``[memory]`` (limit, reservation, swap), ``[cpu]`` (shares, quota,
period, cpus, mems), ``[pids]`` (limit), ``[blockIO]`` (weight, weightDevice,
throttle{Read,Write}{Bps,IOPS}Device) and ``[unified]``.  Anything else cannot
be enforced here and is refused, never ignored.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from instancelib.cgroups.values import CPU_PERIOD, Device, integer, parse_size
from instancelib.errors import InvalidArgument, Unsupported

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

__all__ = ["read_fields"]


def read_fields(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``Limits`` keyword arguments the file at ``path`` sets.

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
    return _from_resources(data, str(path))


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
        quota = integer(cpu["quota"], "cpu.quota")
        period = integer(cpu.get("period", CPU_PERIOD), "cpu.period")
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
    number = parse_size(value, field) if size else integer(value, field)
    return Device(integer(item["major"], field), integer(item["minor"], field), number)
