"""The caller's side of the network helper (see ``helper``): one per caller process.

Started on first use and shared by the caller's threads (requests are
serialised by a lock); a forked caller starts its own.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import subprocess
import sys
import threading
from typing import Any

from instancelib.errors import StartError, Unsupported
from instancelib.linux import wire

__all__ = ["NetworkHelper", "get_helper"]

# As the fork-server's: the helper imports what it uses (pyroute2, linux.wire) without
# running the package's __init__ (attrs, psutil, the whole API).
_BOOTSTRAP = (
    "import sys\n"
    "for name, path in (('instancelib', sys.argv[1]), ('instancelib.network', sys.argv[2])):\n"
    "    pkg = type(sys)(name)\n"
    "    pkg.__path__ = [path]\n"
    "    sys.modules[name] = pkg\n"
    "from instancelib.network import helper\n"
    "helper.main(int(sys.argv[3]))\n"
)
_NETWORK_DIR = os.path.dirname(os.path.abspath(__file__))


class NetworkHelper:
    """A running network helper and the socket to it."""

    def __init__(self) -> None:
        ours, theirs = wire.socketpair()
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _BOOTSTRAP, os.path.dirname(_NETWORK_DIR), _NETWORK_DIR,
                 str(theirs.fileno())],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=None if os.environ.get("INSTANCELIB_DEBUG") else subprocess.DEVNULL,
                start_new_session=True)
        except OSError as err:
            ours.close()
            raise Unsupported("cannot start the network helper", errno=err.errno) from err
        finally:
            theirs.close()
        self.sock = ours
        self.owner_pid = os.getpid()
        self._lock = threading.Lock()

    def request(self, message: dict[str, Any], fds: list[int] | None = None) -> dict[str, Any]:
        """Send one request and return the reply; ``StartError`` if the helper is gone."""
        with self._lock:
            try:
                wire.send_message(self.sock, message, fds or [])
                reply, received = wire.recv_message(self.sock)
            except OSError as err:
                reply, received = None, []
                failure: OSError | None = err
            else:
                failure = None
        for fd in received:
            os.close(fd)
        if reply is None:
            raise StartError("the network helper exited", step="set up the network",
                             errno=failure.errno if failure else None)
        return reply

    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            self.process.wait(timeout=2)


_helper: list[NetworkHelper] = []
_guard = threading.Lock()


def get_helper() -> NetworkHelper:
    """This process's network helper, started (again) when needed."""
    with _guard:
        if _helper and (_helper[0].owner_pid != os.getpid() or not _helper[0].alive()):
            _helper.pop()  # a forked caller's parent's, or one that died
        if not _helper:
            _helper.append(NetworkHelper())
        return _helper[0]


@atexit.register
def _shutdown() -> None:
    if _helper and _helper[0].owner_pid == os.getpid():
        _helper.pop().close()
