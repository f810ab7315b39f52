"""User namespaces: who is privileged, and how IDs are mapped into an instance.

An ordinary user gets instances in a user namespace of their own.  Two maps
(``[inside, outside, count]`` rows, as ``/proc/PID/uid_map`` takes them):

- the default: the user's own UID and GID, unchanged inside (Singularity's
  user-namespace mode); a process may write such a one-row map for itself;
- ``fakeroot``: the user is root inside, and, where ``/etc/subuid`` and
  ``/etc/subgid`` give the user a range, the range is mapped too.  Only the
  setuid helpers ``newuidmap``/``newgidmap`` (Debian's ``uidmap``) may write
  such maps, from outside the namespace.

Only the standard library is imported (the launcher uses this module).
"""

from __future__ import annotations

import errno
import os
import pwd
import select
from typing import Any

from instancelib.linux import advice, syscalls

__all__ = [
    "IdMap",
    "UserNamespaceError",
    "enter_user_namespace",
    "explain_unshare_error",
    "has_host_root",
    "user_namespace_plan",
]

IdMap = list[list[int]]  # rows of [inside, outside, count]
_FULL_MAP = "0 0 4294967295"
_HELPER_TIMEOUT = 10.0


class UserNamespaceError(OSError):
    """Entering or mapping a user namespace failed; ``strerror`` explains it."""


def has_host_root() -> bool:
    """True for root of the host: UID 0 in the initial user namespace.

    UID 0 inside a container's user namespace (rootless podman, ``unshare -r``)
    cannot mount sysfs or write arbitrary ID maps: it takes the unprivileged path.
    """
    if os.geteuid() != 0:
        return False
    try:
        with open("/proc/self/uid_map") as f:
            return " ".join(f.read().split()) == _FULL_MAP
    except OSError:
        return False


def explain_unshare_error(err: OSError) -> str:
    """Why ``unshare(CLONE_NEWUSER)`` failed, and which setting to look at."""
    return advice.advice_for("user namespace", err) or err.strerror or str(err)


def _format(id_map: IdMap) -> str:
    return "".join(f"{inside} {outside} {count}\n" for inside, outside, count in id_map)


def enter_user_namespace(uid_map: IdMap, gid_map: IdMap, *, helpers: bool) -> None:
    """Move the calling (single-threaded) process into a new, mapped user namespace.

    With ``helpers`` the maps (which may hold subordinate ranges) are written
    by ``newuidmap``/``newgidmap`` run from a child left outside the namespace;
    otherwise the process writes its own one-row maps.

    Raises:
        UserNamespaceError: with the reason and the setting to look at.
    """
    if helpers:
        _enter_with_helpers(uid_map, gid_map)
        return
    try:
        syscalls.unshare(syscalls.CLONE_NEWUSER)
    except OSError as err:
        raise UserNamespaceError(err.errno, explain_unshare_error(err)) from err
    try:
        # An unprivileged process must give up setgroups(2) before it may map its GID.
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", _format(uid_map))
        _write("/proc/self/gid_map", _format(gid_map))
    except OSError as err:
        raise UserNamespaceError(
            err.errno, f"cannot write the user namespace's ID maps ({err.strerror}); an "
            "AppArmor policy that restricts unprivileged user namespaces has this effect "
            "(kernel.apparmor_restrict_unprivileged_userns)") from err


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _enter_with_helpers(uid_map: IdMap, gid_map: IdMap) -> None:
    """unshare, then have a child that stayed outside run newuidmap/newgidmap on us."""
    target = os.getpid()
    go_read, go_write = os.pipe2(os.O_CLOEXEC)
    report_read, report_write = os.pipe2(os.O_CLOEXEC)
    child = os.fork()
    if child == 0:
        code = 1
        try:
            os.close(go_write)
            os.close(report_read)
            if os.read(go_read, 1) == b"u":
                failure = _run_helpers(target, uid_map, gid_map)
                if failure:
                    os.write(report_write, failure.encode()[:4000])
                else:
                    code = 0
        finally:
            os._exit(code)
    os.close(go_read)
    os.close(report_write)
    try:
        try:
            syscalls.unshare(syscalls.CLONE_NEWUSER)
        except OSError as err:
            raise UserNamespaceError(err.errno, explain_unshare_error(err)) from err
        os.write(go_write, b"u")
        failure = os.read(report_read, 4000).decode(errors="replace")
        _, status = os.waitpid(child, 0)
        if failure or os.waitstatus_to_exitcode(status) != 0:
            raise UserNamespaceError(errno.EPERM, failure.strip() or "newuidmap/newgidmap failed")
    finally:
        os.close(go_write)
        os.close(report_read)


def _run_helpers(pid: int, uid_map: IdMap, gid_map: IdMap) -> str:
    """Run newuidmap and newgidmap for ``pid``; return their complaint, or "" on success."""
    for helper, id_map in (("newuidmap", uid_map), ("newgidmap", gid_map)):
        argv = [helper, str(pid)] + [str(n) for row in id_map for n in row]
        path = _which(helper)
        if path is None:
            return f"{helper} not found (Debian package uidmap)"
        err_read, err_write = os.pipe2(os.O_CLOEXEC)
        try:
            child = os.posix_spawn(path, argv, {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                                   file_actions=[(os.POSIX_SPAWN_DUP2, err_write, 2)])
        finally:
            os.close(err_write)
        try:
            ready, _, _ = select.select([err_read], [], [], _HELPER_TIMEOUT)
            message = os.read(err_read, 4000).decode(errors="replace") if ready else ""
        finally:
            os.close(err_read)
        _, status = os.waitpid(child, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            return f"{helper} failed: {message.strip() or 'exit status ' + str(status)}"
    return ""


def _which(name: str) -> str | None:
    for directory in ("/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin"):
        candidate = os.path.join(directory, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _subordinate_range(path: str, user: str, uid: int) -> tuple[int, int] | None:
    """The first ``user:start:count`` (or ``uid:start:count``) range of /etc/subuid-style files."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.strip().split(":")
        if len(fields) == 3 and fields[0] in (user, str(uid)):
            try:
                start, count = int(fields[1]), int(fields[2])
            except ValueError:
                continue
            if count > 0:
                return start, count
    return None


def user_namespace_plan(*, fakeroot: bool) -> tuple[dict[str, Any] | None, str | None]:
    """The user namespace an instance of this caller gets, and a note for its log.

    Host root gets none (``fakeroot`` changes nothing for root).  An ordinary
    user keeps their own UID/GID inside; with ``fakeroot`` they are root
    inside, and their subordinate ranges are mapped after root when
    /etc/subuid and /etc/subgid have one and newuidmap/newgidmap exist.
    """
    if has_host_root():
        return None, None
    uid, gid = os.geteuid(), os.getegid()
    if not fakeroot:
        return {"uid_map": [[uid, uid, 1]], "gid_map": [[gid, gid, 1]], "helpers": False}, None
    user = pwd.getpwuid(uid).pw_name
    sub_uids = _subordinate_range("/etc/subuid", user, uid)
    sub_gids = _subordinate_range("/etc/subgid", user, uid)
    helpers = _which("newuidmap") is not None and _which("newgidmap") is not None
    if sub_uids and sub_gids and helpers:
        return {"uid_map": [[0, uid, 1], [1, *sub_uids]],
                "gid_map": [[0, gid, 1], [1, *sub_gids]], "helpers": True}, None
    missing = ("newuidmap/newgidmap (Debian package uidmap)" if not helpers else
               f"a range for {user} in /etc/subuid and /etc/subgid")
    note = (f"fakeroot without {missing}: only root is mapped inside, so changing a "
            "file's owner to any other user or group fails")
    return {"uid_map": [[0, uid, 1]], "gid_map": [[0, gid, 1]], "helpers": False}, note
