"""The launcher: enter new namespaces and fork the instance's PID 1.

Runs in a child of the fork-server.  ``unshare(CLONE_NEWPID)`` only applies
to children, so the launcher forks once more; that child is PID 1 of the new
namespace.  The launcher tells the caller the init's host PID and exits, so
the init is re-parented to the host's reaper and outlives everything that
started it, as a background service must.

Only the standard library is imported.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from instancelib.linux import syscalls, wire
from instancelib.linux.init import run_init

__all__ = ["NAMESPACES", "run_launcher"]

NAMESPACES = (
    syscalls.CLONE_NEWNS | syscalls.CLONE_NEWUTS | syscalls.CLONE_NEWIPC | syscalls.CLONE_NEWPID
)

_UNSHARE_ADVICE = {
    1: "creating namespaces needs root (CAP_SYS_ADMIN)",
    22: "the kernel refused the namespace flags",
    28: "a namespace limit is reached; check /proc/sys/user/max_*_namespaces",
}


def run_launcher(plan: dict[str, Any], channel: socket.socket, out_fd: int, err_fd: int) -> None:
    """Unshare, fork PID 1, report its host PID; never returns."""
    try:
        syscalls.unshare(NAMESPACES)
    except OSError as err:
        advice = _UNSHARE_ADVICE.get(err.errno or 0)
        message = err.strerror or str(err)
        wire.send_message(channel, {
            "event": "error", "step": "unshare namespaces",
            "message": f"{message} ({advice})" if advice else message,
            "errno": err.errno, "path": None,
        })
        os._exit(1)
    pid = os.fork()
    if pid == 0:
        run_init(plan, channel, out_fd, err_fd)
        os._exit(1)  # run_init never returns
    wire.send_message(channel, {"event": "init", "pid": pid})
    os._exit(0)
