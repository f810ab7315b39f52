"""The fork-server: a warm, single-threaded process that forks launchers and joiners.

A caller may be a notebook kernel with a dozen threads and a running event
loop.  There ``unshare(CLONE_NEWNS)`` moves only one thread, ``setns`` into a
mount namespace fails with EINVAL and ``fork()`` can deadlock.  So the caller
never forks for us: it talks to this server, started once per caller process
as a fresh interpreter with only the standard library and these modules
loaded, and this server forks.

Requests arrive on a ``SOCK_SEQPACKET`` socket (see ``wire``):

- ``{"op": "start", "plan": ...}`` with fds [channel, stdout log, stderr log]:
  fork a launcher (``launch.run_launcher``), wait for it (it exits as soon as
  the instance's PID 1 exists) and reply ``{"ok": true}``.  The launcher and
  the init talk to the caller directly over the channel.
- ``{"op": "exec", ...}`` with fds [status pipe, stdin, stdout, stderr]: fork
  a joiner (``join.run_join``) and reply ``{"ok": true}``; the joiner reports
  over the status pipe and is reaped here when it exits.

The server exits when the caller closes its end (the caller exited).
Only the standard library is imported.
"""

from __future__ import annotations

import contextlib
import gc
import os
import select
import signal
import socket
from typing import Any

from instancelib.linux import syscalls, wire
from instancelib.linux.join import run_join
from instancelib.linux.launch import run_launcher

__all__ = ["main"]


class _Server:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.wake_read, self.wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.signal(signal.SIGCHLD, _noop)
        signal.set_wakeup_fd(self.wake_write, warn_on_full_buffer=False)

    def serve(self) -> None:
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLIN)
        poller.register(self.wake_read, select.POLLIN)
        while True:
            for fd, _events in poller.poll():
                if fd == self.wake_read:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self.wake_read, 4096)
                    _reap_children()
                else:
                    message, fds = wire.recv_message(self.sock)
                    if message is None:
                        return
                    try:
                        reply = self.handle(message, fds)
                    except Exception as err:  # reply with the failure; keep serving
                        reply = {"ok": False, "error": f"{type(err).__name__}: {err}",
                                 "errno": getattr(err, "errno", None)}
                    finally:
                        for received in fds:
                            with contextlib.suppress(OSError):
                                os.close(received)
                    wire.send_message(self.sock, reply)

    def handle(self, message: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        op = message.get("op")
        if op == "ping":
            return {"ok": True, "pid": os.getpid()}
        if op == "start":
            channel_fd, out_fd, err_fd = fds
            pid = self.fork_child()
            if pid == 0:
                try:
                    run_launcher(message["plan"], socket.socket(fileno=channel_fd), out_fd, err_fd)
                finally:
                    os._exit(1)  # never fall back into the server loop in a child
            _, status = os.waitpid(pid, 0)
            return {"ok": os.waitstatus_to_exitcode(status) == 0}
        if op == "exec":
            status_fd, *stdio = fds
            pid = self.fork_child()
            if pid == 0:
                try:
                    run_join(message, status_fd, stdio)
                finally:
                    os._exit(1)
            return {"ok": True, "joiner": pid}
        raise ValueError(f"unknown request {op!r}")

    def fork_child(self) -> int:
        pid = os.fork()
        if pid == 0:
            # Nothing of the server survives in the child but the received fds.
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            os.close(self.wake_read)
            os.close(self.wake_write)
            self.sock.close()
        return pid


def _noop(_signum: int, _frame: object) -> None:
    return None


def _reap_children() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def main(fd: int) -> None:
    """Serve requests on the inherited socket ``fd`` until the caller goes away."""
    server = _Server(socket.socket(fileno=fd))
    with contextlib.suppress(OSError):
        syscalls.set_process_title(f"instancelib-forkserver (for pid {os.getppid()})")
    # Objects alive now are shared with every forked child; keeping the
    # collector off them keeps those pages shared (lower PSS per instance).
    gc.freeze()
    server.serve()
