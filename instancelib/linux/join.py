"""Run a command inside a running instance (``exec instance://NAME``).

Runs in a child of the fork-server (never in the caller: ``setns`` into a
mount namespace fails in a multi-threaded process).  It opens a pidfd for the
instance's PID 1, checks the PID still belongs to it (start time), joins its
cgroup, takes the owner's identity when root enters a user's instance
(``become_owner``), joins all its namespaces at once through that pidfd,
changes directory, and spawns the command; the PID namespace applies to
children only, hence the spawn.  It
stays as the command's parent to report its exit status to the caller over
the status socket, then exits.

Status messages (one datagram each): ``started PID`` with a pidfd of the
command attached (so the caller can signal it without any PID-reuse race),
``exited CODE``, ``signaled SIG``, ``error ERRNO MESSAGE``.  The command is
reaped as soon as it exits: when an instance stops, the kernel waits for
every process of its PID namespace to be reaped before PID 1 is gone.

Only the standard library is imported.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import socket
import termios
from typing import Any

from instancelib.linux import cgroupdirs, envscripts, procfs, syscalls

__all__ = ["become_owner", "join_namespaces", "run_join"]

_NAMESPACE_FILES = (
    (syscalls.CLONE_NEWUSER, "user"),
    (syscalls.CLONE_NEWIPC, "ipc"),
    (syscalls.CLONE_NEWUTS, "uts"),
    (syscalls.CLONE_NEWNET, "net"),
    (syscalls.CLONE_NEWPID, "pid"),
    (syscalls.CLONE_NEWCGROUP, "cgroup"),
    (syscalls.CLONE_NEWNS, "mnt"),
)


def _report(fd: int, line: str, fds: list[int] | None = None) -> None:
    sock = socket.socket(fileno=os.dup(fd))
    try:
        if fds:
            socket.send_fds(sock, [line.encode()], fds)
        else:
            sock.send(line.encode())
    finally:
        sock.close()


def _fail(fd: int, err: OSError, message: str) -> None:
    _report(fd, f"error {err.errno or 0} {message}")
    os._exit(1)


def run_join(request: dict[str, Any], status_fd: int, stdio: list[int]) -> None:
    """Join the instance, spawn the command, report its fate; never returns."""
    try:
        pidfd = procfs.open_verified_pidfd(request["pid"], request["starttime"],
                                           uid=request["uid"], init=True)
    except OSError as err:
        _fail(status_fd, err, "the instance is not running")
    try:
        cgroupdirs.join(request.get("cgroup_procs") or ())
    except OSError as err:
        _fail(status_fd, err, f"cannot join the instance's cgroup: {err.strerror}")
    if os.geteuid() != request["uid"]:
        try:
            become_owner(pidfd, request["pid"], request["uid"])
        except OSError as err:
            _fail(status_fd, err, f"cannot take the instance owner's identity: {err.strerror}")
    try:
        join_namespaces(pidfd, request["pid"], request["namespaces"])
    except OSError as err:
        _fail(status_fd, err, f"cannot join the instance's namespaces: {err.strerror}")
    finally:
        os.close(pidfd)
    try:
        os.chdir(request["cwd"])
    except OSError as err:
        _fail(status_fd, err, f"working directory {request['cwd']} not found in the instance")
    argv: list[str] = request["argv"]
    env: dict[str, str] = request["env"]
    path = _which(argv[0], env.get("PATH", envscripts.DEFAULT_PATH))
    if path is None:
        _report(status_fd, f"error 2 {argv[0]}: executable file not found in $PATH")
        os._exit(1)
    try:
        if request.get("tty"):
            child = _spawn_with_terminal(path, argv, env, stdio)
        else:
            actions = [(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(stdio)]
            child = os.posix_spawn(path, argv, env, file_actions=actions, setsigmask=(),
                                   setsigdef=envscripts.RESET_SIGNALS)
    except OSError as err:
        _fail(status_fd, err, f"{argv[0]}: {err.strerror}")
    for fd in stdio:
        os.close(fd)
    child_pidfd = os.pidfd_open(child)  # valid: only we can reap the child
    _report(status_fd, f"started {child}", [child_pidfd])
    os.close(child_pidfd)
    _, status = os.waitpid(child, 0)
    if os.WIFSIGNALED(status):
        _report(status_fd, f"signaled {os.WTERMSIG(status)}")
    else:
        _report(status_fd, f"exited {os.waitstatus_to_exitcode(status)}")
    os._exit(0)


def become_owner(pidfd: int, pid: int, uid: int) -> None:
    """Take the identity of the instance's owner: its PID 1's UID and GID, no other groups.

    Root entering an ordinary user's instance must not bring host root's
    credentials into the user's namespaces: files outside that reach it (the
    user's binds) would be checked against UID 0.  So the command runs as the
    user would run it.  The identity is read from the live PID 1 (checked
    through ``pidfd`` to be still that process), never from a record.
    """
    ids = procfs.credentials(pid)
    if ids is None or procfs.wait_pidfd(pidfd, 0):
        raise ProcessLookupError(errno.ESRCH, "the instance ended")
    owner, group = ids
    if owner != uid:
        raise PermissionError(errno.EPERM,
                              f"the instance's PID 1 belongs to UID {owner}, not {uid}")
    os.setgroups([])
    os.setresgid(group, group, group)
    os.setresuid(owner, owner, owner)


def join_namespaces(pidfd: int, pid: int, flags: int) -> None:
    """Enter the namespaces ``flags`` of the process behind ``pidfd``."""
    try:
        syscalls.setns(pidfd, flags)  # Linux >= 5.8: all at once, atomically
        return
    except OSError as err:
        if err.errno != errno.EINVAL:  # a kernel without setns(pidfd)
            raise
    fds = []
    try:
        for flag, name in _NAMESPACE_FILES:
            if flags & flag:
                fds.append(os.open(f"/proc/{pid}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC))
        # The pidfd was verified before these opens: if its process is still
        # running now, the files above belong to that same process.
        if procfs.wait_pidfd(pidfd, 0):
            raise ProcessLookupError(errno.ESRCH, "the instance ended")
        for fd in fds:
            syscalls.setns(fd, 0)
    finally:
        for fd in fds:
            os.close(fd)


def _which(command: str, search_path: str) -> str | None:
    if "/" in command:
        return command
    for directory in search_path.split(":"):
        candidate = os.path.join(directory or ".", command)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def _spawn_with_terminal(path: str, argv: list[str], env: dict[str, str],
                         stdio: list[int]) -> int:
    """Fork (not spawn): the child needs its own session with the terminal as controlling tty."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            os.setsid()
            for target, fd in enumerate(stdio):
                os.dup2(fd, target)
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
            for sig in envscripts.RESET_SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            os.execve(path, argv, env)
        except OSError as err:
            with contextlib.suppress(OSError):
                os.write(write_end, f"{err.errno}".encode())
        os._exit(127)
    os.close(write_end)
    failure = os.read(read_end, 32)
    os.close(read_end)
    if failure:
        os.waitpid(pid, 0)
        code = int(failure)
        raise OSError(code, os.strerror(code))
    return pid
