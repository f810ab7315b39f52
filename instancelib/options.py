"""``StartOptions``: every option of ``Instance.start``, checked once, in one frozen value.

The launch plan (``launchplan``), the instance's record (``to_record``) and
the CLI (which builds one from its flags) all read this one class, so a
start option is spelled, converted and validated in one place.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from instancelib.binds import Bind, parse_binds
from instancelib.cgroups.limits import Limits
from instancelib.cgroups.tree import CGROUP_PARENTS
from instancelib.durations import seconds
from instancelib.environment import check_args, check_env
from instancelib.errors import InvalidArgument
from instancelib.healthcheck import HealthCheck, as_health_check
from instancelib.linux.supervisor import parse_policy
from instancelib.network.args import PortMap, parse_network_args, split_flag_values
from instancelib.readiness import HealthProbe, Probe, as_probe

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


def _cgroup_parent(value: str | None) -> str:
    if value is None:
        return CGROUP_PARENTS[0]
    if value not in CGROUP_PARENTS:
        choices = " or ".join(map(repr, CGROUP_PARENTS))
        raise InvalidArgument(f"cgroup_parent must be {choices} (got {value!r})")
    return str(value)


def _restart(value: str) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"restart must be a string such as 'on-failure:3' (got {value!r})")
    try:
        parse_policy(value)
    except ValueError as err:
        raise InvalidArgument(str(err)) from None
    return value


def _probe(value: Any) -> Probe | None:
    return as_probe(value) if value is not None else None


def _pid_file(value: str | os.PathLike[str] | None) -> str | None:
    return os.fspath(value) if value is not None else None


def _timeout(value: float) -> float:
    return seconds(value, "timeout")


_NETWORK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")


def _network(value: str | Sequence[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    names = split_flag_values(value) if isinstance(value, str) else list(value)
    if not names or not all(isinstance(n, str) and _NETWORK_NAME.match(n) for n in names):
        raise InvalidArgument(f"network must be None, 'none', a network name or a list of "
                              f"them (got {value!r})")
    if "none" in names and len(names) > 1:
        raise InvalidArgument("network 'none' cannot be combined with other networks")
    if len(set(names)) != len(names):
        raise InvalidArgument(f"a network is joined once (got {names})")
    return tuple(names)


def _network_args(value: str | PortMap | Sequence[str | PortMap]) -> tuple[str | PortMap, ...]:
    if isinstance(value, (str, PortMap)):
        return (value,)
    return tuple(value)


def _dns(value: str | Sequence[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    servers = split_flag_values(value) if isinstance(value, str) else list(value)
    checked = []
    for server in servers:
        try:
            checked.append(str(ipaddress.ip_address(str(server).strip())))
        except ValueError:
            raise InvalidArgument(f"dns: not an IP address: {server!r}") from None
    return tuple(checked)


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
    network: tuple[str, ...] | None = attrs.field(default=None, converter=_network)
    network_args: tuple[str | PortMap, ...] = attrs.field(default=(), converter=_network_args)
    dns: tuple[str, ...] = attrs.field(default=(), converter=_dns)
    service: bool = attrs.field(default=True, converter=bool)
    end_with_caller: bool = attrs.field(default=False, converter=bool)
    cgroup_parent: str = attrs.field(default=CGROUP_PARENTS[0], converter=_cgroup_parent)
    restart: str = attrs.field(default="no", converter=_restart)
    health: HealthCheck | None = attrs.field(default=None, converter=as_health_check)

    def __attrs_post_init__(self) -> None:
        if not self.service and (self.run or self.args or self.ready is not None
                                 or self.restart != "no" or self.health is not None):
            raise InvalidArgument("service=False runs no script: run, args, ready, restart "
                                  "and health do not apply")
        if isinstance(self.ready, HealthProbe) and self.health is None:
            raise InvalidArgument('ready="health" waits for the health check: give one '
                                  "(health=...)")
        if self.network_args and self.network in (None, ("none",)):
            has = "no network" if self.network else "the host's network"
            raise InvalidArgument(f"network_args need a network to apply to (network=...); "
                                  f"this instance has {has}")
        parse_network_args(self.network_args, list(self.network or ()))

    def to_record(self) -> dict[str, Any]:
        """The options an instance's record keeps (``Instance.options``)."""
        return {"run": self.run, "args": list(self.args), "writable_tmpfs": self.writable_tmpfs,
                "contain": self.contain, "hostname": self.hostname,
                "binds": [str(b) for b in self.binds], "fakeroot": self.fakeroot,
                "cleanenv": self.cleanenv, "env_digest": self.env_digest(),
                "limits": self.limits.to_dict() if self.limits else {},
                "network": list(self.network) if self.network is not None else None,
                "network_args": [str(a) if isinstance(a, str) else f"portmap={a}"
                                 for a in self.network_args],
                "dns": list(self.dns), "service": self.service,
                "end_with_caller": self.end_with_caller, "cgroup_parent": self.cgroup_parent,
                "restart": self.restart,
                "health": self.health.to_record() if self.health is not None else None}

    def env_digest(self) -> str:
        """A digest of ``env`` (the record keeps no values: they may be secrets), to tell
        whether two starts asked for the same variables."""
        text = json.dumps(sorted(self.env.items()), separators=(",", ":"))
        return "sha256:" + hashlib.sha256(text.encode()).hexdigest()

    def arguments(self) -> dict[str, Any]:
        """The options as ``Instance.start`` keyword arguments."""
        return {field.name: getattr(self, field.name) for field in attrs.fields(StartOptions)}
