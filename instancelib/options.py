"""``StartOptions``: every option of ``Instance.start``, checked once, in one frozen value.

The launch plan (``launchplan``), the instance's record (``to_record``) and
the CLI (which builds one from its flags) all read this one class, so a
start option is spelled, converted and validated in one place.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import attrs

from instancelib.binds import Bind, parse_binds
from instancelib.cgroups.limits import Limits
from instancelib.durations import seconds
from instancelib.environment import check_args, check_env
from instancelib.errors import InvalidArgument
from instancelib.readiness import Probe, as_probe

__all__ = ["StartOptions"]


def _hostname(value: str | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= 64 or any(
        not (c.isalnum() or c in "-.") for c in value
    ):
        raise InvalidArgument(f"hostname must be 1-64 letters, digits, '-' or '.' "
                              f"(got {value!r})")
    return value


def _limits(value: Limits | None) -> Limits | None:
    if value is not None and not isinstance(value, Limits):
        raise InvalidArgument(f"limits must be a Limits object (got {value!r})")
    return value


def _probe(value: Any) -> Probe | None:
    return as_probe(value) if value is not None else None


def _pid_file(value: str | os.PathLike[str] | None) -> str | None:
    return os.fspath(value) if value is not None else None


def _timeout(value: float) -> float:
    return seconds(value, "timeout")


@attrs.frozen(kw_only=True)
class StartOptions:
    """How to start an instance (see ``Instance.start`` for each option).

    Every value is converted and checked as the object is made: an invalid
    one raises ``InvalidArgument`` and no ``StartOptions`` exists.
    """

    args: tuple[str, ...] = attrs.field(default=(), converter=check_args)
    run: bool = attrs.field(default=False, converter=bool)
    writable_tmpfs: bool = attrs.field(default=False, converter=bool)
    binds: tuple[Bind, ...] = attrs.field(default=(), converter=parse_binds)
    env: Mapping[str, str] = attrs.field(factory=dict, converter=check_env)
    cleanenv: bool = attrs.field(default=False, converter=bool)
    contain: bool = attrs.field(default=False, converter=bool)
    hostname: str | None = attrs.field(default=None, converter=_hostname)
    pid_file: str | None = attrs.field(default=None, converter=_pid_file)
    ready: Probe | None = attrs.field(default=None, converter=_probe)
    timeout: float = attrs.field(default=30.0, converter=_timeout)
    fakeroot: bool = attrs.field(default=False, converter=bool)
    limits: Limits | None = attrs.field(default=None, converter=_limits)

    def to_record(self) -> dict[str, Any]:
        """The options an instance's record keeps (``Instance.options``)."""
        return {"run": self.run, "args": list(self.args), "writable_tmpfs": self.writable_tmpfs,
                "contain": self.contain, "hostname": self.hostname,
                "binds": [str(b) for b in self.binds], "fakeroot": self.fakeroot,
                "limits": self.limits.to_dict() if self.limits else {}}

    def arguments(self) -> dict[str, Any]:
        """The options as ``Instance.start`` keyword arguments."""
        return {field.name: getattr(self, field.name) for field in attrs.fields(StartOptions)}
