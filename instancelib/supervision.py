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

import attrs

from instancelib.errors import PermissionDenied
from instancelib.linux import syscalls
from instancelib.linux.supervisor import RESTART_SIGNAL, STATE_MAX
from instancelib.records.directory import InstanceRecords
from instancelib.records.record import InstanceRecord

__all__ = ["ServiceState", "Supervised", "read_state"]

_SERVICE_STATES = ("running", "restarting", "exited")


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
    """

    service: str
    exit_code: int | None
    restarts: int
    restart: str
    restart_at: float | None
    updated: float


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
        return ServiceState(
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
