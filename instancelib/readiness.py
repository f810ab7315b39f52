"""Readiness probes: wait for the service inside an instance, not just its process.

``Instance.start(..., ready=...)`` accepts:

- ``("tcp", port)`` or ``TcpProbe(port, host="127.0.0.1")``: a TCP connect succeeds;
- ``("file", path)`` or ``FileProbe(path)``: ``path`` exists inside the instance;
- a command (``["pg_isready"]`` or ``CommandProbe(argv)``): it exits 0 inside;
- any callable taking the ``Instance`` and returning a bool.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, Union

import attrs

from instancelib.errors import InvalidArgument
from instancelib.linux import pathwalk

if TYPE_CHECKING:
    from instancelib.instance import Instance

__all__ = ["CommandProbe", "FileProbe", "Probe", "ReadySpec", "TcpProbe", "as_probe"]


class Probe(Protocol):
    """Anything with ``check(instance) -> bool``; called until it returns True."""

    def check(self, instance: Instance, timeout: float) -> bool: ...


def _port(_instance: object, _attribute: attrs.Attribute[int], value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 65536:
        raise InvalidArgument(f"ready port must be an integer in 1-65535 (got {value!r})")


@attrs.frozen
class TcpProbe:
    """Ready when a TCP connection to ``host:port`` succeeds."""

    port: int = attrs.field(validator=_port)
    host: str = "127.0.0.1"

    def check(self, instance: Instance, timeout: float) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=min(timeout, 1.0)):
                return True
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

    def check(self, instance: Instance, timeout: float) -> bool:
        return instance.exec(list(self.argv), timeout=max(timeout, 0.1), text=False).ok


class _CallableProbe:
    def __init__(self, function: Callable[[Instance], bool]) -> None:
        self.function = function

    def check(self, instance: Instance, timeout: float) -> bool:
        return bool(self.function(instance))


ReadySpec: TypeAlias = Union[  # noqa: UP007 (a runtime alias: "|" fails on a string forward ref)
    Probe, tuple[str, Any], Sequence[str], Callable[["Instance"], bool]
]


def as_probe(spec: Any) -> Probe:
    """Turn a ``ready=`` value into a probe.

    Raises:
        InvalidArgument: a value of none of the accepted forms.
    """
    if isinstance(spec, (TcpProbe, FileProbe, CommandProbe)):
        return spec
    if isinstance(spec, tuple) and len(spec) == 2 and spec[0] in ("tcp", "file"):
        return TcpProbe(spec[1]) if spec[0] == "tcp" else FileProbe(spec[1])
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
