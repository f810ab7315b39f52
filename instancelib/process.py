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
import time
from collections.abc import Sequence
from typing import IO, Any, NoReturn

import attrs

from instancelib.durations import optional_seconds
from instancelib.errors import ExecError, NotFound, PermissionDenied, Timeout
from instancelib.linux import syscalls, wire

__all__ = ["ExecResult", "InstanceProcess"]


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

    Obtained from ``Instance.popen``; not constructed directly.

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
        status.setblocking(False)

    def __repr__(self) -> str:
        state = "running" if self.returncode is None else f"returncode={self.returncode}"
        return f"<InstanceProcess pid={self.pid} args={self.args!r} {state}>"

    # -- status pipe ------------------------------------------------------------------------

    def _consume_status(self) -> None:
        """Read whatever the joiner has reported; set ``returncode`` on exit."""
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
        self._close_status()

    def _close_status(self) -> None:
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

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the process (nothing happens once it has ended)."""
        if self.poll() is None and self._pidfd >= 0:
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

    def __exit__(self, *exc_info: object) -> None:
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
