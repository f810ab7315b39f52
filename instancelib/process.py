"""Processes started inside an instance: ``ExecResult`` and ``InstanceProcess``.

``InstanceProcess`` behaves like ``subprocess.Popen`` (``pid``, ``stdin``,
``stdout``, ``stderr``, ``returncode``, ``poll``, ``wait``, ``communicate``,
``send_signal``, ``terminate``, ``kill``, context manager).  The process is
not our child (the fork-server's joiner spawned it inside the instance's
namespaces); its fate arrives over a status socket, one datagram per event,
and signals go through a pidfd, so they can never reach a process that
reused its PID.
"""

from __future__ import annotations

import contextlib
import io
import os
import selectors
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from typing import IO, Any, NoReturn

import attrs

from instancelib.durations import optional_seconds
from instancelib.errors import (
    ExecError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    StartError,
    Timeout,
    Unsupported,
)
from instancelib.linux import client, syscalls, wire

__all__ = ["ExecResult", "InstanceProcess", "Stdio", "check_signal", "first_status",
           "raise_exec_failure", "spawn"]


@attrs.frozen
class ExecResult:
    """The outcome of ``Instance.exec``: exit status and captured output.

    ``returncode`` is the exit status, or ``-N`` when signal N ended the
    process (as ``subprocess``).  ``stdout``/``stderr`` are ``str`` when the
    call used ``text=True`` (the default), else ``bytes``.
    """

    returncode: int
    stdout: Any
    stderr: Any

    @property
    def ok(self) -> bool:
        """True when the command exited with status 0."""
        return self.returncode == 0


class InstanceProcess:
    """A command running inside an instance, with a ``subprocess.Popen``-like API.

    Obtained from ``Instance.popen``; not constructed directly.  As a context
    manager it waits for the command at the end of the block, and kills it
    first when the block raised (``KeyboardInterrupt`` included).

    Attributes:
        args: the command line.
        pid: its PID on the host.
        stdin, stdout, stderr: file objects for pipes requested with
            ``subprocess.PIPE``, else ``None``.
        returncode: ``None`` while it runs; the exit status, or ``-N`` if
            signal N ended it.
    """

    def __init__(self, args: Sequence[str], *, pid: int, pidfd: int, status: socket.socket,
                 stdin: IO[Any] | None, stdout: IO[Any] | None, stderr: IO[Any] | None,
                 instance_name: str) -> None:
        self.args = list(args)
        self.pid = pid
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.returncode: int | None = None
        self._pidfd = pidfd
        self._status: socket.socket | None = status
        self._instance_name = instance_name
        # Held while the status is read or the pidfd used or closed: another thread may
        # signal the command (kill() from an event loop) while this one waits for it.
        self._lock = threading.RLock()
        status.setblocking(False)

    def __repr__(self) -> str:
        state = "running" if self.returncode is None else f"returncode={self.returncode}"
        return f"<InstanceProcess pid={self.pid} args={self.args!r} {state}>"

    # -- status pipe ------------------------------------------------------------------------

    def _consume_status(self) -> None:
        """Read whatever the joiner has reported; set ``returncode`` on exit."""
        with self._lock:
            self._consume_status_locked()

    def _consume_status_locked(self) -> None:
        while self._status is not None and self.returncode is None:
            try:
                data, fds = wire.recv_fds(self._status, 256, 1)
            except BlockingIOError:
                return
            for fd in fds:
                os.close(fd)
            if not data:
                self.returncode = -signal.SIGKILL  # the joiner vanished: assume killed
                break
            kind, _, value = data.decode().partition(" ")
            if kind == "exited":
                self.returncode = int(value)
            elif kind == "signaled":
                self.returncode = -int(value)
        self._close_status_locked()

    def _close_status(self) -> None:
        with self._lock:
            self._close_status_locked()

    def _close_status_locked(self) -> None:
        if self._status is not None:
            self._status.close()
            self._status = None
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1

    # -- Popen API --------------------------------------------------------------------------

    def poll(self) -> int | None:
        """Return ``returncode`` if the process has ended, else ``None``."""
        if self.returncode is None:
            self._consume_status()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the process to end and return its ``returncode``.

        Raises:
            Timeout: it is still running after ``timeout`` seconds.
        """
        timeout = optional_seconds(timeout, "timeout")
        deadline = None if timeout is None else time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            while self.poll() is None:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise Timeout(f"command {self.args[0]!r} still running after {timeout:g} s",
                                  name=self._instance_name, pid=self.pid)
                if not selector.get_map() and self._status is not None:
                    selector.register(self._status, selectors.EVENT_READ)
                selector.select(remaining)
        return self.returncode  # type: ignore[return-value]  # set by poll()

    def communicate(self, input: bytes | str | None = None,
                    timeout: float | None = None) -> tuple[Any, Any]:
        """Send ``input``, read stdout/stderr to EOF, wait; return ``(stdout, stderr)``.

        Raises:
            Timeout: the process did not finish within ``timeout`` seconds
                (it keeps running; call ``kill()``).
        """
        timeout = optional_seconds(timeout, "timeout")
        deadline = None if timeout is None else time.monotonic() + timeout
        text = isinstance(self.stdout or self.stderr or self.stdin, io.TextIOBase)
        outputs: dict[int, list[bytes]] = {}
        payload = b""
        if input is not None:
            payload = input.encode() if isinstance(input, str) else input
        with selectors.DefaultSelector() as selector:
            if self.stdin is not None:
                self.stdin.flush()
                if payload:
                    selector.register(self.stdin.fileno(), selectors.EVENT_WRITE)
                else:
                    self.stdin.close()
            for stream in (self.stdout, self.stderr):
                if stream is not None:
                    outputs[stream.fileno()] = []
                    selector.register(stream.fileno(), selectors.EVENT_READ)
            while selector.get_map():
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise Timeout(f"command {self.args[0]!r} still running after {timeout:g} s",
                                  name=self._instance_name, pid=self.pid)
                for key, _events in selector.select(remaining):
                    fd = key.fd
                    if fd in outputs:
                        data = os.read(fd, 65536)
                        if data:
                            outputs[fd].append(data)
                        else:
                            selector.unregister(fd)
                    else:
                        try:
                            written = os.write(fd, payload[:65536])
                        except BrokenPipeError:
                            written = len(payload)
                        payload = payload[written:]
                        if not payload:
                            selector.unregister(fd)
                            assert self.stdin is not None
                            self.stdin.close()
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        self.wait(remaining)
        results: list[Any] = []
        for stream in (self.stdout, self.stderr):
            if stream is None:
                results.append(None)
                continue
            data = b"".join(outputs[stream.fileno()])
            stream.close()
            results.append(data.decode(errors="replace") if text else data)
        return results[0], results[1]

    def finish(self, input: bytes | str | None = None,
               timeout: float | None = None) -> tuple[Any, Any]:
        """``communicate``, as ``subprocess.run`` uses it: interrupted by anything (a
        timeout, Ctrl-C, another thread's kill), the command is killed and reaped before
        the exception goes on."""
        try:
            return self.communicate(input, timeout)
        except BaseException:
            self.kill()
            with contextlib.suppress(OSError):
                self.communicate()
            raise

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the process (nothing happens once it has ended).

        Safe from another thread than the one waiting for the process: the
        signal goes through the command's pidfd, which is not closed meanwhile.
        """
        with self._lock:
            if self.returncode is None and self._pidfd >= 0:
                with contextlib.suppress(ProcessLookupError):
                    syscalls.pidfd_send_signal(self._pidfd, sig)

    def terminate(self) -> None:
        """Send SIGTERM."""
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """Send SIGKILL."""
        self.send_signal(signal.SIGKILL)

    def __enter__(self) -> InstanceProcess:
        return self

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        if exc_type is not None:
            # The block raised (Ctrl-C, an error, a cancelled task): the command must
            # not outlive it, as subprocess.run's does not.
            self.kill()
        for stream in (self.stdin, self.stdout, self.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self.wait()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self._close_status()


def raise_exec_failure(line: str, argv: Sequence[str], name: str) -> NoReturn:
    """Turn the joiner's ``error ERRNO MESSAGE`` line into an ``ExecError``."""
    _, errno_text, message = [*line.split(" ", 2), "", ""][:3]
    code = int(errno_text) if errno_text.isdigit() and int(errno_text) else None
    if code == 3:  # ESRCH: the instance ended under us
        raise NotFound(f"the instance is not running ({message})", name=name)
    if code in (1, 13) and "join" in message:  # EPERM/EACCES entering its namespaces
        raise PermissionDenied(message, name=name, errno=code)
    raise ExecError(message or f"cannot run {argv[0]!r}", name=name, errno=code)


def check_signal(sig: int) -> int:
    """``sig`` as a signal number this kernel knows (0, the "probe" signal, is refused)."""
    valid = {int(s) for s in signal.valid_signals()}
    if not isinstance(sig, int) or int(sig) not in valid or int(sig) == 0:
        raise InvalidArgument(f"not a signal number: {sig!r}")
    return int(sig)


# -- stdio plumbing for a command started inside ------------------------------------------------


class Stdio:
    """Turn subprocess-style stdio arguments into fds for the child and streams for us."""

    def __init__(self, stdin: Any, stdout: Any, stderr: Any, text: bool) -> None:
        self.text = text
        self.child_fds: list[int] = []
        self._parent: list[IO[Any] | None] = [None, None, None]
        self._to_close: list[int] = []
        self._keep = False
        try:
            for index, spec in enumerate((stdin, stdout, stderr)):
                self.child_fds.append(self._child_fd(index, spec))
        except BaseException:  # a bad argument after a pipe was made: nothing leaks
            self.__exit__()
            raise

    def _child_fd(self, index: int, spec: Any) -> int:
        if spec is None:
            try:
                os.fstat(index)
                return index
            except OSError:  # this process has no such descriptor: the command gets /dev/null
                spec = subprocess.DEVNULL
        if spec == subprocess.PIPE:
            read_end, write_end = os.pipe2(os.O_CLOEXEC)
            child, parent = (read_end, write_end) if index == 0 else (write_end, read_end)
            self._to_close.append(child)
            stream: IO[Any]
            if self.text:
                stream = open(parent, "w" if index == 0 else "r", encoding="utf-8",  # noqa: SIM115
                              errors="replace")
            else:
                stream = open(parent, "wb" if index == 0 else "rb", buffering=0)  # noqa: SIM115
            self._parent[index] = stream
            return child
        if spec == subprocess.DEVNULL:
            fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
            self._to_close.append(fd)
            return fd
        if spec == subprocess.STDOUT:
            if index != 2:
                raise InvalidArgument("subprocess.STDOUT is only valid for stderr")
            return self.child_fds[1]
        if isinstance(spec, int) and spec >= 0:
            return spec
        if hasattr(spec, "fileno"):
            return int(spec.fileno())
        raise InvalidArgument(f"unsupported stdio argument {spec!r}")

    def parent_streams(self) -> tuple[IO[Any] | None, IO[Any] | None, IO[Any] | None]:
        return self._parent[0], self._parent[1], self._parent[2]

    def keep_parent_streams(self) -> None:
        self._keep = True

    def __enter__(self) -> Stdio:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for fd in self._to_close:
            os.close(fd)
        if not self._keep:  # popen failed: nobody will read these
            for stream in self._parent:
                if stream is not None:
                    stream.close()


def first_status(status: socket.socket, timeout: float = 60.0) -> tuple[str, int]:
    """The joiner's first report: ``started PID`` with a pidfd, or ``error ...``."""
    status.settimeout(timeout)
    try:
        data, fds = wire.recv_fds(status, 4096, 1)
    except TimeoutError:
        raise ExecError("no answer from the fork-server's joiner") from None
    if not data:
        return "error 0 the joiner exited without reporting", -1
    if not fds:
        return data.decode(), -1
    return data.decode(), fds[0]


def spawn(request: dict[str, Any], stdio: Stdio, name: str) -> InstanceProcess:
    """Have the fork-server's joiner start ``request["argv"]`` in an instance (see ``popen``).

    The joiner enters the instance and reports over a status socket: first
    ``started PID`` with a pidfd of the command, later its exit.  ``stdio``'s
    child ends go to the joiner and are closed here; its parent ends become
    the process's streams.
    """
    command = list(request["argv"])
    with stdio:
        status, theirs = wire.socketpair()
        try:
            try:
                reply, _ = client.get_forkserver().request(
                    request, [theirs.fileno(), *stdio.child_fds])
            except (StartError, Unsupported) as err:  # the fork-server itself failed
                raise ExecError(f"cannot start the command: {err.message}", name=name,
                                errno=err.errno) from err
            if not reply.get("ok"):
                raise ExecError(f"cannot start the command: {reply.get('error')}", name=name)
            theirs.close()
            first, pidfd = first_status(status)
            if not first.startswith("started "):
                raise_exec_failure(first, command, name)
        except BaseException:
            status.close()
            raise
        finally:
            theirs.close()
        streams = stdio.parent_streams()
        process = InstanceProcess(command, pid=int(first.split()[1]), pidfd=pidfd,
                                  status=status, stdin=streams[0], stdout=streams[1],
                                  stderr=streams[2], instance_name=name)
        stdio.keep_parent_streams()
    return process
