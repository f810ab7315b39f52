"""The caller's side of the fork-server (see ``forkserver``).

One server per caller process, started on first use and shared by all its
threads (requests are serialised by a lock; each one only costs a fork on
the server's side).  A forked caller gets a new server of its own: sharing
one socket between two processes would interleave their requests.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import socket
import subprocess
import sys
import threading
from typing import Any

from instancelib.errors import StartError, Unsupported
from instancelib.linux import wire
from instancelib.linux.cgroupdirs import leaf_owner, remove_empty

__all__ = ["ForkServer", "get_forkserver", "prestart", "prestart_enabled"]

log = logging.getLogger("instancelib")

# The server runs in an isolated interpreter (-I -S: no site-packages, no
# PYTHON* variables) that imports ``instancelib.linux`` without running
# ``instancelib/__init__.py`` (which pulls in attrs, psutil...): the package
# is registered as an empty module whose __path__ points at our sources.
_BOOTSTRAP = (
    "import sys\n"
    "pkg = type(sys)('instancelib')\n"
    "pkg.__path__ = [sys.argv[1]]\n"
    "sys.modules['instancelib'] = pkg\n"
    "from instancelib.linux import forkserver\n"
    "forkserver.main(int(sys.argv[2]))\n"
)
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SPARE_EXIT_WAIT = 1.0  # seconds a dead server's spare may take to exit
SERVER_ENVIRONMENT = {"LC_CTYPE": "C.UTF-8"}


class ForkServer:
    """A running fork-server and the socket to it."""

    def __init__(self) -> None:
        ours, theirs = wire.socketpair()
        debug = bool(os.environ.get("INSTANCELIB_DEBUG"))
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _BOOTSTRAP, _PACKAGE_DIR,
                 str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=None if debug else subprocess.DEVNULL,
                start_new_session=True,  # terminal signals (Ctrl-C) are not for it
                # Not the caller's environment: every PID 1 is a fork of this server, and a
                # service running as root inside can read PID 1's (/proc/1/environ).
                # What an instance gets travels in each plan instead.
                env=SERVER_ENVIRONMENT,
            )
        except OSError as err:
            ours.close()
            raise Unsupported(f"cannot start the fork-server ({sys.executable})",
                              errno=err.errno) from err
        finally:
            theirs.close()
        self.sock = ours
        self.owner_pid = os.getpid()
        self.broken = False
        self._lock = threading.Lock()
        self.cgroup_bases: set[str] = set()  # where its spares' cgroups are made

    def request(self, message: dict[str, Any],
                fds: list[int] | None = None) -> tuple[dict[str, Any], list[int]]:
        """Send one request; return the server's reply and the fds that came with it."""
        received: list[int] = []
        if message.get("op") in ("start", "spare"):
            self.cgroup_bases.update(message["plan"].get("cgroup_bases") or ())
        with self._lock:
            if self.broken:
                raise StartError("the fork-server connection was interrupted; retry")
            try:
                wire.send_message(self.sock, message, fds)
                reply, received = wire.recv_message(self.sock)
            except OSError as err:
                reply = None
                log.debug("fork-server request failed: %s", err)
            except BaseException:
                # Interrupted (KeyboardInterrupt...) between request and reply: the
                # reply would be read as the answer to the next request.  Retire
                # this server; the next caller gets a new one.
                self.broken = True
                self.close()
                raise
        if reply is None:
            code = self.process.poll()
            self.sweep_after_death()
            raise StartError(f"the fork-server died (exit status {code}); "
                             "set INSTANCELIB_DEBUG=1 to see its output")
        return reply, received

    def sweep_after_death(self) -> None:
        """Remove the cgroups of a dead server's spare (named ``i.UID.SERVERPID.*``).

        A killed server cannot remove them itself; its spare exits as the
        server's socket closes, which empties them.  Only empty cgroups are
        removed, and only before a new server (which could get the same PID)
        is started.
        """
        if self.process.poll() is None or not self.cgroup_bases:
            return
        ours = (os.geteuid(), self.process.pid)
        directories = []
        for base in self.cgroup_bases:
            with contextlib.suppress(OSError):
                directories += [os.path.join(base, e) for e in os.listdir(base)
                                if leaf_owner(e) == ours]
        remove_empty(directories, wait=_SPARE_EXIT_WAIT)
        self.cgroup_bases.clear()

    def alive(self) -> bool:
        return not self.broken and self.process.poll() is None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
        try:
            self.process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class _ProcessState:
    """This process's fork-server (one per process, created on first use)."""

    def __init__(self) -> None:
        self.server: ForkServer | None = None
        self.lock = threading.Lock()


_state = _ProcessState()


def get_forkserver() -> ForkServer:
    """The fork-server of this process, started if needed."""
    with _state.lock:
        server = _state.server
        if server is None or not server.alive() or server.owner_pid != os.getpid():
            if server is not None and server.owner_pid == os.getpid():
                server.sweep_after_death()
            server = _state.server = ForkServer()
        return server


def prestart_enabled() -> bool:
    """Whether the fork-server and a first spare may be started ahead
    (``INSTANCELIB_PRESTART=0``: not; see ``instancelib.warmup``)."""
    return os.environ.get("INSTANCELIB_PRESTART", "1") != "0"


def prestart() -> None:
    """Start this process's fork-server now, in the background, if it has none (its
    interpreter and imports, about 45 ms, then overlap the caller's own imports)."""
    with _state.lock:
        if _state.server is None:
            try:
                _state.server = ForkServer()
            except Unsupported as err:  # the first start says so, with the reason
                log.debug("no fork-server started ahead: %s", err)


def _forget_after_fork() -> None:
    if _state.server is not None:
        with contextlib.suppress(OSError):
            _state.server.sock.close()
    _state.server = None
    _state.lock = threading.Lock()


def _shutdown() -> None:
    """Stop this process's fork-server (it also stops by itself when we exit)."""
    server = _state.server
    if server is not None and server.owner_pid == os.getpid():
        _state.server = None
        dead = server.process.poll() is not None
        server.close()
        if dead:
            server.sweep_after_death()


os.register_at_fork(after_in_child=_forget_after_fork)
atexit.register(_shutdown)


def new_channel() -> tuple[socket.socket, socket.socket]:
    """A (caller end, instance end) pair for a start-up conversation."""
    return wire.socketpair()
