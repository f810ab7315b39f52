"""``HealthCheck``: what ``Instance.start(..., health=...)`` asks PID 1 to check.

The check runs inside the instance, by its PID 1 (``linux.health``), every
``interval`` seconds after the previous one finished, for as long as the instance
runs, also after the caller has exited.  Its forms:

- a command list, run inside (exec semantics): healthy when it exits 0;
- ``("tcp", port)``: healthy while the instance listens on the port (its own
  listening socket, or one in its own network namespace);
- ``("http", port)`` or ``("http", port, "/path")``: healthy when a GET of
  ``http://127.0.0.1:port/path`` inside the instance answers 2xx or 3xx.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import attrs

from instancelib.durations import seconds
from instancelib.errors import InvalidArgument

__all__ = ["HealthCheck", "as_health_check", "parse_duration"]

_KINDS = ("tcp", "http")
_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str, what: str) -> float:
    """``"30s"``, ``"1m"``, ``"500ms"``, ``"2h"`` or plain seconds, as docker's flags take."""
    match = _DURATION.match(text)
    if not match:
        raise InvalidArgument(f"{what} must be a duration such as 30s, 1m or 500ms "
                              f"(got {text!r})")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _test(value: Any) -> tuple[Any, ...]:
    if isinstance(value, list) and value and all(isinstance(a, str) for a in value):
        return ("cmd", *value)
    if isinstance(value, tuple) and value and isinstance(value[0], str):
        kind = value[0]
        if kind not in _KINDS:
            raise InvalidArgument(f"unknown health check kind {kind!r}: the kinds are "
                                  f"{', '.join(_KINDS)} (a command is a list)")
        if len(value) not in (2, 3 if kind == "http" else 2):
            raise InvalidArgument(f"a {kind} health check is ({kind!r}, port"
                                  + (", '/path')" if kind == "http" else ")")
                                  + f" (got {value!r})")
        port = value[1]
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise InvalidArgument(f"a health check's port must be an integer in 1-65535 "
                                  f"(got {port!r})")
        if kind == "http":
            path = value[2] if len(value) == 3 else "/"
            if not isinstance(path, str) or not path.startswith("/") \
                    or any(c in path for c in " \r\n"):
                raise InvalidArgument(f"an http health check's path must start with / and "
                                      f"hold no spaces or line ends (got {path!r})")
            return ("http", port, path)
        return ("tcp", port)
    raise InvalidArgument("health must be a command list, ('tcp', port), ('http', port) or "
                          f"('http', port, '/path') (got {value!r})")


def _interval(value: Any) -> float:
    return seconds(value, "interval")


def _timeout(value: Any) -> float:
    return seconds(value, "timeout")


def _start_period(value: Any) -> float:
    return seconds(value, "start_period", allow_zero=True)


@attrs.frozen
class HealthCheck:
    """A health check (see the module doc) and its timing, as docker's.

    Attributes:
        test: a command list, ``("tcp", port)``, ``("http", port[, "/path"])``.
        interval: seconds between the end of a check and the start of the next.
        timeout: seconds a check may take; longer is a failure (a command is killed).
        retries: failures in a row that make the instance ``unhealthy``.
        start_period: seconds after the service starts in which failures do not count.
    """

    test: tuple[Any, ...] = attrs.field(converter=_test)
    interval: float = attrs.field(default=30.0, converter=_interval)
    timeout: float = attrs.field(default=30.0, converter=_timeout)
    retries: int = attrs.field(default=3)
    start_period: float = attrs.field(default=0.0, converter=_start_period)

    @retries.validator
    def _retries(self, _attribute: Any, value: Any) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidArgument(f"retries must be a whole number ≥ 1 (got {value!r})")

    def to_plan(self) -> dict[str, Any]:
        """What PID 1 gets (``linux.health.Health``'s spec)."""
        timing = {"interval": self.interval, "timeout": self.timeout, "retries": self.retries,
                  "start_period": self.start_period}
        kind = self.test[0]
        if kind == "cmd":
            return {"kind": "cmd", "argv": list(self.test[1:]), **timing}
        if kind == "tcp":
            return {"kind": "tcp", "port": self.test[1], **timing}
        return {"kind": "http", "port": self.test[1], "path": self.test[2], **timing}

    def to_record(self) -> dict[str, Any]:
        return {"test": list(self.test), "interval": self.interval, "timeout": self.timeout,
                "retries": self.retries, "start_period": self.start_period}


def as_health_check(value: Any) -> HealthCheck | None:
    """``health=``'s value as a ``HealthCheck`` (a check, a test of one, or None)."""
    if value is None or isinstance(value, HealthCheck):
        return value
    if isinstance(value, (list, tuple)):
        return HealthCheck(value)
    if isinstance(value, Sequence) and not isinstance(value, str):
        return HealthCheck(list(value))
    raise InvalidArgument(f"health must be a HealthCheck or its test (got {value!r})")
