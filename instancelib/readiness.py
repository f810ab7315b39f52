"""Readiness probes: wait for the service inside an instance, not just its process.

``Instance.start(..., ready=...)`` accepts:

- ``("tcp", port)`` or ``TcpProbe(port, host="127.0.0.1")``: the instance listens on the
  port: a listening socket of one of its own processes (on the host's network), or one in
  its own network namespace.  Another program listening on that port (the instance's
  server having died with "Address already in use") does not count;
- ``("file", path)`` or ``FileProbe(path)``: ``path`` exists inside the instance;
- a command, as a list (``["pg_isready"]`` or ``CommandProbe(argv)``): it exits 0 inside;
  while it fails, its last output goes into the timeout's error;
- any callable taking the ``Instance`` and returning a bool.

A two-item tuple is always ``(kind, value)``: an unknown kind is an error naming the kinds,
never a command to run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, Union

import attrs

from instancelib.errors import InvalidArgument
from instancelib.linux import pathwalk, sockets

if TYPE_CHECKING:
    from instancelib.instance import Instance

__all__ = ["CommandProbe", "FileProbe", "HealthProbe", "Probe", "ReadySpec", "TcpProbe",
           "as_probe", "failure_of"]


class Probe(Protocol):
    """Anything with ``check(instance) -> bool``; called until it returns True."""

    def check(self, instance: Instance, timeout: float) -> bool: ...


def _port(_instance: object, _attribute: attrs.Attribute[int], value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 65536:
        raise InvalidArgument(f"ready port must be an integer in 1-65535 (got {value!r})")


@attrs.frozen
class TcpProbe:
    """Ready when the instance listens on ``port`` (on ``host`` or on every address): a
    listening socket in the instance's own network namespace, or, on the host's network,
    one that a process of the instance holds."""

    port: int = attrs.field(validator=_port)
    host: str = "127.0.0.1"

    def check(self, instance: Instance, timeout: float) -> bool:
        try:
            listening = sockets.listening(instance.pid, self.port, self.host)
            if not listening:
                return False
            if sockets.own_network(instance.pid):
                return True  # nothing but the instance's processes listen in its namespace
            return bool(listening & sockets.held_by_namespace_of(instance.pid))
        except OSError:
            return False


def _absolute(_instance: object, _attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not value.startswith("/"):
        raise InvalidArgument(f"ready file must be an absolute path inside the instance "
                              f"(got {value!r})")


@attrs.frozen
class FileProbe:
    """Ready when ``path`` exists inside the instance (symlinks resolved inside it)."""

    path: str = attrs.field(validator=_absolute)

    def check(self, instance: Instance, timeout: float) -> bool:
        try:
            _, exists = pathwalk.resolve_in_root(f"/proc/{instance.pid}/root", self.path)
        except OSError:
            return False
        return exists


def _argv(value: Sequence[str]) -> tuple[str, ...]:
    if isinstance(value, str) or not value or not all(isinstance(a, str) for a in value):
        raise InvalidArgument(f"ready command must be a non-empty list of strings "
                              f"(got {value!r})")
    return tuple(value)


@attrs.frozen
class CommandProbe:
    """Ready when ``argv`` run inside the instance exits with status 0."""

    argv: tuple[str, ...] = attrs.field(converter=_argv)
    # The last failing run's exit status and output (for the timeout's error).
    _last: list[str] = attrs.field(factory=list, init=False, eq=False, repr=False)

    def check(self, instance: Instance, timeout: float) -> bool:
        result = instance.exec(list(self.argv), timeout=max(timeout, 0.1))
        if not result.ok:
            output = (result.stdout + result.stderr).strip()[-_OUTPUT_MAX:]
            self._last[:] = [f"the probe {list(self.argv)} ended with exit status "
                             f"{result.returncode}" + (f":\n{output}" if output else "")]
        return result.ok

    def failure(self) -> str | None:
        """What the last failing run said, if it failed."""
        return self._last[0] if self._last else None


class HealthProbe:
    """``ready="health"``: ready once the instance's health check has passed."""

    def check(self, instance: Instance, timeout: float) -> bool:
        health = instance.health
        return health is not None and health.status == "healthy"

    def failure(self) -> str | None:
        return None

    def __repr__(self) -> str:
        return "HealthProbe()"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HealthProbe)

    def __hash__(self) -> int:
        return hash(HealthProbe)


class _CallableProbe:
    def __init__(self, function: Callable[[Instance], bool]) -> None:
        self.function = function

    def check(self, instance: Instance, timeout: float) -> bool:
        return bool(self.function(instance))


_KINDS: dict[str, Callable[[Any], Probe]] = {"tcp": TcpProbe, "file": FileProbe}
_OUTPUT_MAX = 4096  # characters of a failing command probe's output kept


def failure_of(probe: Probe) -> str | None:
    """What a probe's last failing check said (a command's output), if it says."""
    explain = getattr(probe, "failure", None)
    return explain() if callable(explain) else None


ReadySpec: TypeAlias = Union[  # noqa: UP007 (a runtime alias: "|" fails on a string forward ref)
    Probe, tuple[str, Any], Sequence[str], Callable[["Instance"], bool]
]


def as_probe(spec: Any) -> Probe:
    """Turn a ``ready=`` value into a probe.

    Raises:
        InvalidArgument: a value of none of the accepted forms.
    """
    if isinstance(spec, (TcpProbe, FileProbe, CommandProbe, HealthProbe)):
        return spec
    if spec == "health":
        return HealthProbe()
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str):
        if spec[0] not in _KINDS:
            raise InvalidArgument(f"unknown probe kind {spec[0]!r}: the kinds are "
                                  f"{', '.join(_KINDS)} (a command is a list: "
                                  f"[{spec[0]!r}, ...])")
        return _KINDS[spec[0]](spec[1])
    if isinstance(spec, (list, tuple)):
        return CommandProbe(spec)
    if hasattr(spec, "check"):
        return spec  # type: ignore[no-any-return]
    if callable(spec):
        return _CallableProbe(spec)
    raise InvalidArgument(
        "ready must be ('tcp', port), ('file', path), a command list, a probe or a callable "
        f"(got {spec!r})"
    )
