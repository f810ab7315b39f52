"""The values limits are made of: sizes (``512M``), block devices with a value, integers."""

from __future__ import annotations

import math
import os
import re
import stat
from typing import Any

import attrs

from instancelib.errors import InvalidArgument

__all__ = ["CPU_PERIOD", "Device", "integer", "parse_size"]

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtTpP]?)(?:i?[bB])?\s*$")
_MULTIPLIERS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
CPU_PERIOD = 100_000  # µs, the kernel's (and Apptainer's) default CFS period


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
        value = parse_size(raw, field) if size else integer(raw, field)
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


def integer(value: Any, field: str) -> int:
    if isinstance(value, bool):
        raise InvalidArgument(f"{field}: expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        return int(value)
    raise InvalidArgument(f"{field}: expected an integer, got {value!r}")
