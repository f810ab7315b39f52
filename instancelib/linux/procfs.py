"""Process identity from /proc: a PID plus its start time.

A PID alone is not an identity: once a process ends its PID may be given to a
new one.  The start time (field 22 of ``/proc/PID/stat``, in clock ticks after
boot) tells the two apart, so every record stores both and every action that
signals or enters a process first checks them (psutil does the same).  A
zombie counts as ended: on some hosts PID 1 reaps orphans only every few
seconds, and a dead instance must not look alive meanwhile.

Only the standard library is imported: the fork-server uses this module.
"""

from __future__ import annotations

import os
import select

__all__ = [
    "ProcStat",
    "children_of",
    "is_alive",
    "open_verified_pidfd",
    "read_stat",
    "wait_pidfd",
]

PROC_ROOT = "/proc"


class ProcStat:
    """The parts of ``/proc/PID/stat`` instancelib uses."""

    __slots__ = ("pid", "ppid", "starttime", "state", "uid")

    def __init__(self, pid: int, state: str, ppid: int, starttime: int, uid: int) -> None:
        self.pid = pid
        self.state = state
        self.ppid = ppid
        self.starttime = starttime
        self.uid = uid

    @property
    def running(self) -> bool:
        """Not ended: neither a zombie nor dead."""
        return self.state not in ("Z", "X")


def read_stat(pid: int, proc_root: str | None = None, *, owner: bool = False) -> ProcStat | None:
    """Read ``/proc/PID/stat``; ``None`` when the process does not exist.

    ``owner=True`` also reads the process's owner (one more syscall); else ``uid`` is -1.
    """
    root = proc_root or PROC_ROOT
    try:
        fd = os.open(f"{root}/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
        return None
    try:
        data = os.read(fd, 4096)
        uid = os.fstat(fd).st_uid if owner else -1
    except ProcessLookupError:
        return None
    finally:
        os.close(fd)
    # comm (field 2) may hold spaces and parentheses: split after the last ')'.
    tail = data[data.rfind(b")") + 2 :].split(b" ", 20)
    if len(tail) < 21:
        return None
    return ProcStat(pid, tail[0].decode(), int(tail[1]), int(tail[19]), uid)


def is_alive(pid: int, starttime: int, proc_root: str | None = None) -> bool:
    """True when ``pid`` is running and is the process that started at ``starttime``."""
    stat = read_stat(pid, proc_root)
    return stat is not None and stat.running and stat.starttime == starttime


def open_verified_pidfd(pid: int, starttime: int) -> int:
    """Open a pidfd for ``pid`` and check it is the process that started at ``starttime``.

    The pidfd is opened first and the identity checked after: if the check
    passes, the pidfd refers to that very process even if it exits later
    (signals sent through it can never reach a successor that reused the PID).

    Raises:
        ProcessLookupError: the process has ended, or the PID belongs to
            another process now.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        raise ProcessLookupError(3, f"process {pid} has ended") from None
    if not is_alive(pid, starttime):
        os.close(fd)
        raise ProcessLookupError(3, f"process {pid} has ended (or its PID was reused)")
    return fd


def wait_pidfd(pidfd: int, timeout: float | None) -> bool:
    """Wait until the process behind ``pidfd`` has exited; False on timeout."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    millis = None if timeout is None else max(0, int(timeout * 1000))
    return bool(poller.poll(millis))


def children_of(pid: int, proc_root: str | None = None) -> list[int]:
    """Host PIDs of the direct children of ``pid`` (its main thread's children)."""
    root = proc_root or PROC_ROOT
    try:
        with open(f"{root}/{pid}/task/{pid}/children", "rb") as f:
            return [int(x) for x in f.read().split()]
    except (FileNotFoundError, ProcessLookupError):
        return []
