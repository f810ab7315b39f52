"""cgroup v2: plain files, no library.

The unified hierarchy's interface: ``cgroup.controllers`` and
``cgroup.subtree_control`` to pass controllers down (processes only in
leaves), ``cgroup.freeze`` with ``cgroup.events`` to pause, ``cgroup.kill``
to end every member, and the controllers' own files for limits and figures.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from collections.abc import Iterable

from instancelib.errors import InvalidArgument, PermissionDenied, Unsupported

__all__ = ["delegated_root", "enable_controllers", "freeze", "kill", "populated", "read",
           "set_value", "write"]

log = logging.getLogger("instancelib")


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def write(path: str, value: str) -> None:
    """One write(2) of ``value`` (cgroup files take a whole value per write).

    O_TRUNC as a shell's ``>`` (the kernel ignores it; a plain file then holds
    just the value).
    """
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def delegated_root(mount: str) -> str | None:
    """The top of the v2 subtree delegated to this user (owned by them), if any.

    The topmost ancestor of the caller's own cgroup whose directory the user
    owns and whose ``cgroup.procs`` they may write (what systemd's
    ``Delegate=yes`` hands over, e.g. ``user@UID.service``).
    """
    try:
        with open("/proc/self/cgroup") as f:
            own = next((line.strip()[3:] for line in f if line.startswith("0::")), None)
    except OSError:
        return None
    if not own:
        return None
    uid = os.geteuid()
    current = os.path.normpath(mount + own)
    top = None
    while current.startswith(mount) and current != mount:
        try:
            info = os.stat(current)
        except OSError:
            break
        if info.st_uid != uid or not os.access(os.path.join(current, "cgroup.procs"), os.W_OK):
            break
        top = current
        current = os.path.dirname(current)
    return top


def enable_controllers(base: str, wanted: Iterable[str], mount: str) -> set[str]:
    """Make ``base`` (and its parents up to the mount) pass ``wanted`` controllers down.

    Returns the controllers ``base``'s children get (those every level offers
    and lets us enable).
    """
    os.makedirs(base, exist_ok=True)
    chain = []
    current = base
    while current != mount and current.startswith(mount):
        chain.append(current)
        current = os.path.dirname(current)
    chain.append(mount)
    enabled: set[str] = set(wanted)
    for directory in reversed(chain):
        try:
            available = set(read(os.path.join(directory, "cgroup.controllers")).split())
            active = set(read(os.path.join(directory, "cgroup.subtree_control")).split())
        except OSError:
            return set()
        enabled &= available
        missing = enabled - active
        if missing:
            try:
                write(os.path.join(directory, "cgroup.subtree_control"),
                      " ".join(f"+{c}" for c in sorted(missing)))
            except OSError as err:
                log.debug("cannot enable %s in %s: %s", missing, directory, err.strerror)
                enabled -= missing
    return enabled


def set_value(path: str, value: str, filename: str) -> None:
    """Write one limit.

    Raises:
        Unsupported: the kernel has no such file here.
        InvalidArgument: the kernel refused the value.
        PermissionDenied: the file is not ours to write.
    """
    if not os.path.exists(path):
        raise Unsupported(f"cannot set {filename}: this kernel's cgroup has no such file")
    try:
        write(path, value)
    except OSError as err:
        if err.errno in (errno.EINVAL, errno.ERANGE, errno.EOVERFLOW):
            raise InvalidArgument(f"the kernel refused {filename} = {value!r} "
                                  f"({err.strerror})") from err
        if err.errno in (errno.EACCES, errno.EPERM):
            raise PermissionDenied(f"cannot set {filename}", path=path,
                                   errno=err.errno) from err
        raise Unsupported(f"cannot set {filename} = {value!r}: {err.strerror}") from err


def freeze(directory: str, frozen: bool, *, timeout: float = 5.0) -> None:
    """Freeze (or thaw) the cgroup and wait until ``cgroup.events`` says it is done.

    Nothing is written when the cgroup is already in that state (a write
    takes the kernel's cgroup lock: milliseconds while other cgroups change).
    """
    want = "1" if frozen else "0"
    events = os.path.join(directory, "cgroup.events")
    if (read(os.path.join(directory, "cgroup.freeze")).strip() == want
            and f"frozen {want}" in read(events)):
        return
    write(os.path.join(directory, "cgroup.freeze"), want)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if f"frozen {want}" in read(events):
            return
        time.sleep(0.001)
    raise TimeoutError("the cgroup did not finish freezing")


def kill(directory: str) -> bool:
    """SIGKILL every process in the cgroup through ``cgroup.kill``; False without one."""
    path = os.path.join(directory, "cgroup.kill")
    if not os.path.exists(path):
        return False
    with contextlib.suppress(FileNotFoundError):
        write(path, "1")
    return True


def populated(directory: str) -> bool:
    """Whether any process is in the cgroup (or below it)."""
    try:
        return "populated 1" in read(os.path.join(directory, "cgroup.events"))
    except OSError:
        return False
