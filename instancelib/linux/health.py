"""PID 1's health checks: a command, a TCP port or an HTTP request, checked from inside.

PID 1 runs them itself (it is inside every namespace of the instance), so they go on
after the process that started the instance has exited, and no daemon is needed.
Nothing here blocks PID 1's loop: a command runs as a child (its output read from a
pipe as it comes), an HTTP request is a non-blocking socket, and each has a deadline.

- A check starts ``interval`` seconds after the previous one finished (the first one
  ``interval`` after the service started); it fails when it exits non-zero, when the
  port is not the instance's, when the answer is not a 2xx/3xx, or when it exceeds
  ``timeout``.
- ``starting`` becomes ``healthy`` at the first pass, and ``unhealthy`` after
  ``retries`` failures in a row; failures within ``start_period`` of the service's
  start do not count.  Each change of status is an ``instancelib:`` line in the
  ``.err`` log; the state (status, the failing streak, the last output's first 4 KiB,
  when) goes into the state file with the service's (``linux.supervisor``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

from instancelib.linux import sockets

__all__ = ["OUTPUT_MAX", "Health"]

OUTPUT_MAX = 4096  # bytes of a check's output kept


class Health:
    """The instance's health check, as PID 1 runs it (``spec``: the plan's ``health``)."""

    def __init__(self, spec: dict[str, Any], env: dict[str, str], cwd: str, *,
                 own_network: bool, note: Callable[[str], None],
                 changed: Callable[[], None]) -> None:
        self.kind = str(spec["kind"])
        self.spec = spec
        self.interval = float(spec["interval"])
        self.timeout = float(spec["timeout"])
        self.retries = int(spec["retries"])
        self.start_period = float(spec["start_period"])
        self._env, self._cwd, self._own_network = env, cwd, own_network
        self._note, self._changed = note, changed
        self.status = "starting"
        self.streak = 0
        self.output = ""
        self.checked_at: float | None = None
        self.service_began = time.monotonic()
        self.next_at: float | None = self.service_began + self.interval
        self._deadline: float | None = None
        self._pid: int | None = None      # a running command check
        self._pipe: int | None = None     # its output
        self._sock: socket.socket | None = None  # a running HTTP check
        self._sent = False
        self._buffer = b""

    # -- what PID 1's loop asks -----------------------------------------------------------------

    def wait(self) -> float | None:
        """Seconds until something is due (a check to start, a deadline)."""
        due = [t for t in (self.next_at, self._deadline) if t is not None]
        return max(0.0, min(due) - time.monotonic()) if due else None

    def fds(self) -> list[tuple[int, int]]:
        """What to poll for a running check: (fd, events)."""
        if self._pipe is not None:
            return [(self._pipe, select.POLLIN)]
        if self._sock is not None:
            return [(self._sock.fileno(), select.POLLIN if self._sent else select.POLLOUT)]
        return []

    def ready(self, fd: int) -> None:
        """``fd`` (one of ``fds``) has something."""
        with self._guarded():
            if self._pipe is not None and fd == self._pipe:
                self._read_pipe()
            elif self._sock is not None and fd == self._sock.fileno():
                self._step_http()

    def exited(self, pid: int, status: int) -> bool:
        """A child ended; True if it was the running command check (then done with)."""
        if pid != self._pid:
            return False
        self._pid = None
        self._read_pipe(to_end=True)
        if status == 0:
            self._finish(True, self._buffer)
        else:
            how = f"killed by signal {-status}" if status < 0 else f"exit status {status}"
            self._finish(False, self._buffer, f"({how})")
        return True

    def tick(self) -> None:
        """Start a check that is due; end one that ran out of time."""
        with self._guarded():
            now = time.monotonic()
            if self._deadline is not None and now >= self._deadline:
                self._give_up()
            if self.next_at is not None and now >= self.next_at and not self._running():
                self.next_at = None
                self._start()

    @contextlib.contextmanager
    def _guarded(self) -> Iterator[None]:
        """A check that breaks in an unforeseen way is a failed check: PID 1 goes on."""
        try:
            yield
        except Exception as err:
            self._give_up(quiet=True)
            self._finish(False, b"", f"(the check itself failed: {type(err).__name__}: {err})")

    def service_started(self) -> None:
        """The service was started again: a new start period."""
        self.service_began = time.monotonic()

    def stop(self) -> None:
        """The instance stops: no more checks."""
        self.next_at = None
        self._give_up(quiet=True)

    def state(self) -> dict[str, Any]:
        return {"status": self.status, "streak": self.streak, "output": self.output,
                "checked_at": self.checked_at}

    # -- checks --------------------------------------------------------------------------------

    def _running(self) -> bool:
        return self._pid is not None or self._sock is not None

    def _start(self) -> None:
        self._buffer = b""
        self._deadline = time.monotonic() + self.timeout
        try:
            if self.kind == "cmd":
                self._spawn()
            elif self.kind == "tcp":
                self._check_tcp()
            else:
                self._connect_http()
        except OSError as err:
            self._finish(False, b"", f"({err.strerror or err})")

    def _spawn(self) -> None:
        read_end, write_end = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        actions = [(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                   (os.POSIX_SPAWN_DUP2, write_end, 1), (os.POSIX_SPAWN_DUP2, write_end, 2)]
        argv = list(self.spec["argv"])
        program = _search(argv[0], self._env.get("PATH", "/usr/bin:/bin"))
        os.chdir(self._cwd)
        try:
            self._pid = os.posix_spawn(program, argv, self._env, file_actions=actions,
                                       setsid=True, setsigmask=())
        except OSError:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
            os.chdir("/")
        self._pipe = read_end

    def _read_pipe(self, *, to_end: bool = False) -> None:
        if self._pipe is None:
            return
        while True:
            try:
                chunk = os.read(self._pipe, 65536)
            except BlockingIOError:
                if not to_end:
                    return
                chunk = b""
            if chunk:
                if len(self._buffer) < OUTPUT_MAX:
                    self._buffer += chunk[:OUTPUT_MAX - len(self._buffer)]
                continue
            if to_end or not chunk:
                os.close(self._pipe)
                self._pipe = None
                return

    def _check_tcp(self) -> None:
        port = int(self.spec["port"])
        listening = sockets.listening("self", port, "127.0.0.1")
        if listening and (self._own_network or listening & sockets.held_by_namespace_of("self")):
            self._finish(True, f"listening on port {port}".encode())
        elif listening:
            self._finish(False, f"port {port} is another program's".encode())
        else:
            self._finish(False, f"nothing listens on port {port}".encode())

    def _connect_http(self) -> None:
        port = int(self.spec["port"])
        if not self._own_network:
            listening = sockets.listening("self", port, "127.0.0.1")
            if not listening & sockets.held_by_namespace_of("self"):
                self._finish(False, f"the instance does not listen on port {port}".encode())
                return
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self._sock.setblocking(False)
        self._sent = False
        code = self._sock.connect_ex(("127.0.0.1", port))
        if code not in (0, errno.EINPROGRESS):
            self._close_socket()
            self._finish(False, os.strerror(code).encode())

    def _step_http(self) -> None:
        assert self._sock is not None
        if not self._sent:
            code = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                self._close_socket()
                self._finish(False, os.strerror(code).encode())
                return
            path = str(self.spec.get("path") or "/")
            request = (f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{self.spec['port']}\r\n"
                       "User-Agent: instancelib-health\r\nConnection: close\r\n\r\n")
            try:
                self._sock.send(request.encode())
            except OSError as err:
                self._close_socket()
                self._finish(False, (err.strerror or str(err)).encode())
                return
            self._sent = True
            return
        try:
            chunk = self._sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as err:
            chunk, self._buffer = b"", self._buffer or (err.strerror or "").encode()
        if chunk and len(self._buffer) < OUTPUT_MAX:
            self._buffer += chunk[:OUTPUT_MAX - len(self._buffer)]
        if chunk and len(self._buffer) < OUTPUT_MAX:
            return  # more to come: the answer ends when the server closes (HTTP/1.0)
        self._close_socket()
        status_line = self._buffer.split(b"\r\n", 1)[0].split()
        code = int(status_line[1]) if len(status_line) > 1 and status_line[1].isdigit() else 0
        self._finish(200 <= code < 400, self._buffer.split(b"\r\n\r\n", 1)[-1],
                     f"(HTTP {code})" if code else "(no HTTP answer)")

    def _close_socket(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def _give_up(self, *, quiet: bool = False) -> None:
        if self._pid is not None:
            with contextlib.suppress(OSError):
                os.killpg(self._pid, signal.SIGKILL)
            # Its exit is reaped by PID 1's loop (and ignored: no check is running then).
            self._pid = None
        if self._pipe is not None:
            with contextlib.suppress(OSError):
                os.close(self._pipe)
            self._pipe = None
        self._close_socket()
        self._deadline = None
        if not quiet:
            self._finish(False, self._buffer, f"(timed out after {self.timeout:g} s)")

    def _finish(self, passed: bool, output: bytes, how: str = "") -> None:
        self._deadline = None
        text = output.decode(errors="replace")[:OUTPUT_MAX]
        self.output = f"{text.rstrip()}\n{how}".strip() if how else text.rstrip()
        self.checked_at = time.time()
        before = self.status
        if passed:
            self.streak = 0
            self.status = "healthy"
        elif time.monotonic() - self.service_began < self.start_period \
                and self.status == "starting":
            pass  # the start period: not counted
        else:
            self.streak += 1
            if self.streak >= self.retries:
                self.status = "unhealthy"
        if self.status != before:
            first = self.output.splitlines()[0] if self.output else ""
            self._note(f"health: {self.status}" + (
                f" ({self.streak} failures in a row): {first}" if self.status == "unhealthy"
                else ""))
        self.next_at = time.monotonic() + self.interval
        self._changed()


def _search(program: str, path: str) -> str:
    """``program`` found on the instance's ``PATH`` (as exec would), or as given."""
    if "/" in program:
        return program
    for directory in path.split(":"):
        candidate = os.path.join(directory or ".", program)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return program
