"""The launcher: make a PID 1 in new namespaces, ready to become an instance.

Runs in a child of the fork-server.  ``unshare(CLONE_NEWPID)`` only applies
to children, so the launcher forks once more; that child is PID 1 of the new
PID namespace.  The launcher reports the child's host PID to the fork-server
and exits, so the PID 1 is re-parented to the host's reaper and outlives
everything that made it, as a background service must.

For an ordinary user the launcher first enters a new user namespace (with the
ID maps of the plan's ``userns`` part, see ``userns``), so that the other
namespaces, and everything PID 1 mounts, belong to it.

The PID 1 made here is a *spare* (``init.run_spare``): it waits for a plan.
The fork-server keeps one ready, so a start does not pay for two forks and
three unshares.  The spare is still in the host's mount namespace: it
unshares its own only when a plan arrives, so it never works on a stale copy
of the host's mounts.

Only the standard library is imported.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Sequence
from typing import Any

from instancelib.linux import advice, cgroupdirs, container, syscalls, userns, wire
from instancelib.linux.init import run_spare

__all__ = ["NAMESPACES", "SPARE_NAMESPACES", "run_launcher"]

# What an instance gets; the spare unshares all but the mount namespace.
NAMESPACES = (
    syscalls.CLONE_NEWNS | syscalls.CLONE_NEWUTS | syscalls.CLONE_NEWIPC | syscalls.CLONE_NEWPID
)
SPARE_NAMESPACES = NAMESPACES & ~syscalls.CLONE_NEWNS

def run_launcher(control: socket.socket, user_namespace: dict[str, Any] | None,
                 cgroup_bases: Sequence[str] = ()) -> None:
    """Unshare, fork a spare PID 1, report its host PID over ``control``; never returns.

    ``user_namespace`` is ``None`` (host root: no user namespace) or
    ``{"uid_map", "gid_map", "helpers"}`` (see ``userns.enter_user_namespace``).
    With ``cgroup_bases`` the launcher first moves into a new cgroup
    ``i.UID.FORKSERVER.RANDOM`` under each, so the spare is born in it (the
    report names it); the instance it becomes keeps it.  Should that fail,
    the spare is made without one.
    """
    leaf = _enter_spare_cgroup(cgroup_bases) if cgroup_bases else None
    if user_namespace is not None:
        try:
            userns.enter_user_namespace(user_namespace["uid_map"], user_namespace["gid_map"],
                                        helpers=bool(user_namespace["helpers"]))
        except OSError as err:
            wire.send_message(control, {
                "event": "error", "step": "enter a user namespace", "unsupported": True,
                "message": err.strerror or str(err), "errno": err.errno, "path": None,
            })
            os._exit(1)
    try:
        syscalls.unshare(SPARE_NAMESPACES)
    except OSError as err:
        wire.send_message(control, {
            "event": "error", "step": "unshare namespaces",
            "message": advice.explain("unshare", err),
            "errno": err.errno, "path": None,
        })
        os._exit(1)
    pid = os.fork()
    if pid == 0:
        try:
            run_spare(control)
        finally:
            os._exit(1)  # run_spare never returns
    # Only we can reap the child, so this pidfd surely refers to it; it travels
    # with the PID to the fork-server and on to the caller.
    pidfd = os.pidfd_open(pid)
    wire.send_message(control, {"event": "spare", "pid": pid, "cgroup_leaf": leaf}, [pidfd])
    os._exit(0)


def _enter_spare_cgroup(bases: Sequence[str]) -> str | None:
    """Make a cgroup under each base and move in; None (and nothing left) on failure."""
    leaf = cgroupdirs.leaf_name(os.geteuid(), os.getppid())
    made: list[str] = []
    try:
        for base in bases:
            directory = os.path.join(base, leaf)
            os.mkdir(directory)
            made.append(directory)
        cgroupdirs.join(os.path.join(d, "cgroup.procs") for d in made)
    except (OSError, container.SetupError):
        for directory in made:
            with contextlib.suppress(OSError):
                os.rmdir(directory)
        return None
    return leaf
