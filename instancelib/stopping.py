"""Stopping instances, one or many, and releasing what an ended instance leaves.

A stop signals every instance first and then waits for all of them, so N
instances take one grace period, not N (Singularity's defaults: SIGINT, 10 s,
then SIGKILL of the whole instance through its cgroup).  It returns once PID 1
has exited (the kernel lets it exit only after every process of its
namespace), the cgroup is removed and the record is gone.

An instance that ended without a stop (killed from outside) is forgotten on
one path, whoever notices: ``InstanceRecords.remove`` drops its files and
calls ``release_ended`` for its cgroup.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal as signals
import socket
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from instancelib.cgroups import control as cgroup_control
from instancelib.cgroups.tree import CgroupInfo
from instancelib.durations import seconds
from instancelib.errors import NotFound, PermissionDenied, Timeout, Unsupported
from instancelib.linux import procfs, syscalls
from instancelib.linux.userns import has_host_root
from instancelib.network import attach as network_attach
from instancelib.network import portmaps
from instancelib.process import check_signal
from instancelib.records.record import InstanceRecord

if TYPE_CHECKING:
    from instancelib.instance import Instance

__all__ = ["KILL_GRACE", "release_ended", "stop_instances"]

log = logging.getLogger("instancelib")

KILL_GRACE = 10.0  # how long SIGKILL of PID 1 may take to empty the namespace
_LOOP_RELEASE = 2.0  # how long a stopped instance's loop device may take to detach
_VETH_RELEASE = 2.0  # how long its network namespace (and veths) may take to go


def stop_instances(instances: Sequence[Instance], *, signal: int = signals.SIGINT,
                   timeout: float = 10.0, force: bool = False) -> None:
    """Stop several instances at once: signal them all, then wait for all.

    Whatever is still running after ``timeout`` seconds is sent SIGKILL.
    """
    sig = signals.SIGKILL if force else check_signal(signal)
    seconds(timeout, "timeout", allow_zero=True)
    pidfds: list[tuple[Instance, int]] = []
    cgroups: dict[str, CgroupInfo] = {}
    try:
        for instance in instances:
            try:
                pidfd = instance._pidfd()
            except NotFound:
                instance._forget()
                continue
            pidfds.append((instance, pidfd))
            cgroup = instance._live_cgroup()  # the pidfd proved PID 1 alive
            cgroups[instance.name] = cgroup
            if cgroup and sig != signals.SIGKILL:
                # A paused instance cannot act on a signal: thaw it first.
                with contextlib.suppress(OSError, TimeoutError, Unsupported):
                    cgroup_control.freeze(cgroup, False, timeout=1.0)
            log.debug("stopping instance %r (pid %d)", instance.name, instance.pid)
            try:
                syscalls.pidfd_send_signal(pidfd, sig)
            except ProcessLookupError:
                pass
            except PermissionError as err:
                raise PermissionDenied("not allowed to signal the instance",
                                       name=instance.name, errno=err.errno) from err
        deadline = time.monotonic() + timeout
        for instance, pidfd in pidfds:
            if procfs.wait_pidfd(pidfd, max(0.0, deadline - time.monotonic())):
                continue
            log.warning("instance %r still running %g s after signal %d: killing it",
                        instance.name, timeout, sig)
            # Every process of its cgroup, whatever namespace or group it is in.
            with contextlib.suppress(OSError):
                cgroup_control.kill(cgroups[instance.name])
            with contextlib.suppress(ProcessLookupError):
                syscalls.pidfd_send_signal(pidfd, signals.SIGKILL)
            if not procfs.wait_pidfd(pidfd, KILL_GRACE):
                raise Timeout("still running after SIGKILL", name=instance.name,
                              pid=instance.pid)
    finally:
        for _, pidfd in pidfds:
            os.close(pidfd)
    for stopped, _ in pidfds:
        cgroup = cgroups[stopped.name]
        # PID 1 is gone; anything of the instance still in its cgroup goes too.
        if cgroup_control.populated(cgroup):
            with contextlib.suppress(OSError):
                cgroup_control.kill(cgroup)
        cgroup_control.remove(cgroup)
        stopped._forget()
    _wait_for_loop_devices([i for i, _ in pidfds])
    _wait_for_network([i for i, _ in pidfds])


def release_ended(record: InstanceRecord) -> None:
    """Release the cgroup of an instance found ended (its PID 1 exited without a stop).

    Only removed, never killed: a record is no proof of what the cgroup holds
    (see ``cgroups.control.remove_dead``).  Another user's only for root.
    """
    if record.cgroup is not None and (has_host_root() or record.uid == os.geteuid()):
        cgroup_control.remove_dead(record.cgroup, record.uid)
    if record.interfaces and record.uid == os.geteuid():
        # Its veths went with its network namespace; its addresses are freed here
        # (only where that PID 1 still holds them: the holder is taken from the
        # allocation, never from the record alone).
        network_attach.release_recorded(record.interfaces,
                                        (record.pid, record.starttime, record.name))


def _wait_for_loop_devices(stopped: Sequence[Instance]) -> None:
    """Return once the loop devices only the stopped instances used are detached.

    Autoclear detaches a device when its last mount goes, with the instance's
    mount namespace; that can lag PID 1's exit by a moment.  A device another
    running instance of this registry still uses is not waited for.
    """
    devices = {i.record.loop for i in stopped if i.record.loop}
    if not devices:
        return
    for registry in {i.registry for i in stopped}:
        devices -= {record.loop for record in registry.records() if record.loop}
    left = _wait_until_gone(devices, _loop_attached, _LOOP_RELEASE)
    if left:
        log.debug("loop devices still attached after stop (shared?): %s", sorted(left))


def _wait_for_network(stopped: Sequence[Instance]) -> None:
    """Return once the stopped instances' veths and port forwarders are gone.

    PID 1 deletes its veths as it exits (a veth killed with SIGKILL goes with
    its namespace, shortly after); a forwarder exits when its PID 1 has.
    """
    interfaces = [i for s in stopped for i in s.record.interfaces]
    links = {str(i["host_ifname"]) for i in interfaces if i.get("host_ifname")}
    left = _wait_until_gone(links, _link_exists, _VETH_RELEASE)
    if left:
        log.warning("network links still present after stop: %s", sorted(left))
    for pid, starttime in {tuple(i["forwarder"]) for i in interfaces
                           if len(i.get("forwarder") or ()) == 2}:
        portmaps.wait_for_forwarder(int(pid), int(starttime))


def _wait_until_gone(things: set[str], present: Callable[[str], bool],
                     seconds: float) -> set[str]:
    """Poll until none of ``things`` is ``present`` any more, for ``seconds`` at most;
    return those still there."""
    deadline = time.monotonic() + seconds
    while things and time.monotonic() < deadline:
        things = {thing for thing in things if present(thing)}
        if things:
            time.sleep(0.001)
    return things


def _link_exists(name: str) -> bool:
    """Whether this process's network namespace has the link (sysfs may show another's)."""
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


def _loop_attached(device: str) -> bool:
    return os.path.exists(f"/sys/block/{os.path.basename(device)}/loop/backing_file")
