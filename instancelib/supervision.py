"""What PID 1 says of its service (``linux.supervisor``), read from the registry;
``Supervised``, the part of ``Instance`` that reads it and restarts the service.

An instance started with a restart policy has a ``<name>.state`` file beside its
record, which its PID 1 rewrites at every change (one JSON line).  Reading it needs
no daemon and no round trip: ``Instance.service_state`` opens it through the
registry's checked descriptors (never a link, only the owner's file, bounded in
size) and takes it as data about the service; which process is the instance is
always the kernel's answer (the record's PID and start time, checked live).
"""

from __future__ import annotations

import json
import os
import time

import attrs

from instancelib.durations import optional_seconds
from instancelib.errors import InvalidArgument, NotFound, PermissionDenied, Timeout
from instancelib.linux import syscalls
from instancelib.linux.supervisor import RESTART_SIGNAL, STATE_MAX
from instancelib.records.directory import InstanceRecords
from instancelib.records.record import InstanceRecord

__all__ = ["HealthState", "ServiceState", "Supervised", "read_state"]

_SERVICE_STATES = ("running", "restarting", "exited")
_HEALTH_STATES = ("starting", "healthy", "unhealthy")
_HEALTH_POLL = 0.02  # seconds between looks at the state file in wait_healthy


@attrs.frozen
class HealthState:
    """The health check's state, as PID 1 last wrote it.

    Attributes:
        status: ``"starting"``, ``"healthy"`` or ``"unhealthy"``.
        streak: failures in a row (0 after a pass).
        output: the last check's output (its first 4 KiB) and, for a failure, how it
            failed (``(exit status 1)``, ``(timed out after 5 s)``, ``(HTTP 503)``).
        checked_at: when the last check ended (seconds since the epoch; None before).
    """

    status: str
    streak: int
    output: str
    checked_at: float | None


@attrs.frozen
class ServiceState:
    """The service's state, as its PID 1 last wrote it.

    Attributes:
        service: ``"running"``, ``"restarting"`` (a restart is pending, at
            ``restart_at``) or ``"exited"`` (with ``exit_code``; not restarted).
        exit_code: the last exit status (negative: killed by that signal); None
            before the service ever ended.
        restarts: how many times the policy has started it again.
        restart: the policy (``"on-failure:3"``).
        restart_at: when a pending restart is due (seconds since the epoch).
        updated: when PID 1 wrote this.
        health: the health check's state (None without one).
    """

    service: str
    exit_code: int | None
    restarts: int
    restart: str
    restart_at: float | None
    updated: float
    health: HealthState | None = None


def read_state(registry: InstanceRecords, name: str) -> ServiceState | None:
    """The state file of ``name``, if its PID 1 keeps one (None: no policy, or unreadable)."""
    fd = registry.store.open_state(name, write=False)
    if fd is None:
        return None
    try:
        for _ in range(3):  # PID 1 may be rewriting it: a torn line is read again
            data = os.pread(fd, STATE_MAX + 1, 0)
            if len(data) > STATE_MAX:
                return None
            state = _parse(data.split(b"\n", 1)[0])
            if state is not None:
                return state
        return None
    finally:
        os.close(fd)


def _parse(line: bytes) -> ServiceState | None:
    try:
        value = json.loads(line)
        if not isinstance(value, dict) or value.get("service") not in _SERVICE_STATES:
            return None
        code = value.get("exit_code")
        at = value.get("restart_at")
        health = value.get("health")
        checked = health.get("checked_at") if isinstance(health, dict) else None
        return ServiceState(
            health=HealthState(
                status=str(health.get("status")), streak=max(0, int(health.get("streak", 0))),
                output=str(health.get("output", ""))[:8192],
                checked_at=float(checked) if isinstance(checked, (int, float)) else None)
            if isinstance(health, dict) and health.get("status") in _HEALTH_STATES else None,
            service=str(value["service"]),
            exit_code=int(code) if isinstance(code, int) else None,
            restarts=max(0, int(value.get("restarts", 0))),
            restart=str(value.get("restart", "no"))[:32],
            restart_at=float(at) if isinstance(at, (int, float)) else None,
            updated=float(value.get("updated", 0.0)))
    except (ValueError, TypeError):
        return None


class Supervised:
    """``Instance``'s service: its state, its restarts, a restart (see ``Instance``)."""

    name: str
    registry: InstanceRecords
    _record: InstanceRecord

    # Instance's own, used here.
    def _pidfd(self) -> int:
        raise NotImplementedError

    def is_running(self) -> bool:
        raise NotImplementedError

    @property
    def service_state(self) -> ServiceState | None:
        """What PID 1 last wrote of the service (instances with a restart policy; None for
        the others, whose service is left to itself as Singularity leaves it)."""
        return read_state(self.registry, self.name)

    @property
    def restarts(self) -> int:
        """How many times the restart policy has started the service again."""
        state = self.service_state
        return state.restarts if state is not None else 0

    @property
    def service_exit_code(self) -> int | None:
        """The service's last exit status (negative: the signal that killed it); None
        while it has not ended, or without a restart policy."""
        state = self.service_state
        return state.exit_code if state is not None else None

    @property
    def health(self) -> HealthState | None:
        """The health check's state (None without a check)."""
        state = self.service_state
        return state.health if state is not None else None

    def wait_healthy(self, timeout: float | None = None) -> HealthState:
        """Until the health check has passed (``healthy``); returns its state.

        Raises:
            InvalidArgument: the instance has no health check.
            NotFound: the instance ended meanwhile.
            Timeout: not healthy within ``timeout`` seconds (the message says its
                status, failing streak and last output).
        """
        limit = optional_seconds(timeout, "timeout")
        deadline = None if limit is None else time.monotonic() + limit
        while True:
            health = self.health
            if health is None and self._record.options.get("health") is None:
                raise InvalidArgument("the instance has no health check", name=self.name)
            if health is not None and health.status == "healthy":
                return health
            if not self.is_running():
                raise NotFound("the instance is not running", name=self.name)
            if deadline is not None and time.monotonic() >= deadline:
                said = "no check has ended yet" if health is None or health.checked_at is None \
                    else f"{health.status}, {health.streak} failures in a row"
                raise Timeout(f"not healthy within {limit:g} s ({said})", name=self.name,
                              detail=health.output if health is not None else None)
            time.sleep(_HEALTH_POLL)

    def _service_rows(self) -> list[tuple[str, str]]:
        """What a notebook shows of the service (instances with a policy or a check)."""
        state = self.service_state
        if state is None:
            return []
        service = state.service if state.exit_code is None or state.service == "running" \
            else f"{state.service} (status {state.exit_code})"
        rows = [("service", f"{service}, {state.restarts} restarts (restart={state.restart})")]
        if state.health is not None:
            rows.append(("health", state.health.status if not state.health.streak else
                         f"{state.health.status} ({state.health.streak} failures in a row)"))
        return rows

    def restart(self) -> None:
        """Restart the service in place: PID 1 sends its process group SIGTERM (SIGKILL
        after 10 s) and starts the start or run script again, with the start's
        environment and arguments, in the same namespaces, cgroup and address.  A
        service that is not running starts at once.  Not counted in ``restarts``.

        Raises:
            NotFound: the instance is not running.
        """
        pidfd = self._pidfd()
        try:
            syscalls.pidfd_send_signal(pidfd, RESTART_SIGNAL)
        except PermissionError as err:
            raise PermissionDenied("not allowed to signal the instance", name=self.name,
                                   errno=err.errno) from err
        finally:
            os.close(pidfd)
