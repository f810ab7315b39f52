"""Process identity from /proc: a PID plus its start time.

A PID alone is not an identity: once a process ends its PID may be given to a
new one.  The start time (field 22 of ``/proc/PID/stat``, in clock ticks after
boot) tells the two apart, so every record stores both and every action that
signals or enters a process first checks them (psutil does the same).  A
zombie counts as ended: on some hosts PID 1 reaps orphans only every few
seconds, and a dead instance must not look alive meanwhile.

Before instancelib signals or enters a process it also checks that the
process belongs to the expected user and is an instance's PID 1 (its name,
``comm``, is ``INIT_COMM``): a record can point anywhere, a check cannot.

Only the standard library is imported: the fork-server uses this module.
"""

from __future__ import annotations

import errno
import os
import select

__all__ = [
    "INIT_COMM",
    "ProcStat",
    "children_of",
    "credentials",
    "is_alive",
    "open_files",
    "open_verified_pidfd",
    "processes_named",
    "read_stat",
    "wait_pidfd",
]

PROC_ROOT = "/proc"
INIT_COMM = "instancelib-init"[:15]  # the kernel keeps 15 bytes of a process name


class ProcStat:
    """The parts of ``/proc/PID/stat`` instancelib uses (``uid`` is -1 unless asked for)."""

    __slots__ = ("comm", "pid", "ppid", "starttime", "state", "uid")

    def __init__(self, pid: int, comm: str, state: str, *, ppid: int, starttime: int,
                 uid: int) -> None:
        self.pid = pid
        self.comm = comm
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
    end = data.rfind(b")")
    tail = data[end + 2 :].split(b" ", 20)
    if len(tail) < 21:
        return None
    comm = data[data.find(b"(") + 1 : end].decode(errors="replace")
    return ProcStat(pid, comm, tail[0].decode(), ppid=int(tail[1]), starttime=int(tail[19]),
                    uid=uid)


def is_alive(pid: int, starttime: int, proc_root: str | None = None, *,
             uid: int | None = None, init: bool = False) -> bool:
    """True when ``pid`` (> 1) runs and started at ``starttime``.

    ``uid`` also requires the process's owner; ``init`` requires it to be an
    instance's PID 1 (its name, from the same read, costs nothing more).
    """
    if pid <= 1:
        return False
    stat = read_stat(pid, proc_root, owner=uid is not None)
    return (stat is not None and stat.running and stat.starttime == starttime
            and (uid is None or stat.uid == uid) and (not init or stat.comm == INIT_COMM))


def open_verified_pidfd(pid: int, starttime: int, *, uid: int | None = None,
                        init: bool = False) -> int:
    """Open a pidfd for ``pid`` and check it is the process that started at ``starttime``.

    The pidfd is opened first and the identity checked after: if the check
    passes, the pidfd refers to that very process even if it exits later
    (signals sent through it can never reach a successor that reused the PID).
    ``uid`` also requires the process's owner; ``init`` requires it to be an
    instance's PID 1.

    Raises:
        ProcessLookupError: the process has ended, or the PID belongs to
            another process (or owner) now.
    """
    if pid <= 1:
        raise ProcessLookupError(errno.ESRCH, f"refusing PID {pid}")
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        raise ProcessLookupError(errno.ESRCH, f"process {pid} has ended") from None
    stat = read_stat(pid, owner=uid is not None)
    if (stat is None or not stat.running or stat.starttime != starttime
            or (uid is not None and stat.uid != uid) or (init and stat.comm != INIT_COMM)):
        os.close(fd)
        raise ProcessLookupError(errno.ESRCH,
                                 f"process {pid} has ended (or is not the instance now)")
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


def processes_named(comm: str, *, uid: int | None = None) -> list[ProcStat]:
    """Every running process whose kernel name is ``comm`` (and owner ``uid``).

    A scan of all of /proc: for rare paths (finding an instance whose record
    was lost), never for a hot one.
    """
    found = []
    with os.scandir(PROC_ROOT) as entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            stat = read_stat(int(entry.name), owner=uid is not None)
            if (stat is not None and stat.running and stat.comm == comm
                    and (uid is None or stat.uid == uid)):
                found.append(stat)
    return found


def open_files(pid: int) -> list[tuple[int, str, tuple[int, int]]]:
    """(fd, what it names, (device, inode) of the open file) for each descriptor of ``pid``.

    Needs the right to look at the process's descriptors (its owner, or root).
    """
    directory = f"{PROC_ROOT}/{pid}/fd"
    found = []
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, ProcessLookupError):
        return []
    for name in names:
        try:
            target = os.readlink(f"{directory}/{name}")
            info = os.stat(f"{directory}/{name}")
        except OSError:
            continue
        found.append((int(name), target, (info.st_dev, info.st_ino)))
    return found


def credentials(pid: int) -> tuple[int, int] | None:
    """The effective UID and GID of ``pid`` (from ``/proc/PID/status``); None if it is gone."""
    try:
        with open(f"{PROC_ROOT}/{pid}/status", "rb") as f:
            lines = f.read().splitlines()
    except (FileNotFoundError, ProcessLookupError):
        return None
    ids: dict[bytes, int] = {}
    for line in lines:
        key, _, values = line.partition(b":")
        if key in (b"Uid", b"Gid"):
            ids[key] = int(values.split()[1])
    if len(ids) != 2:
        return None
    return ids[b"Uid"], ids[b"Gid"]
