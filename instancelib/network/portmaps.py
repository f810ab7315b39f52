"""The caller's side of port maps: host ports bound before the start, the forwarder after.

See ``forwarder`` for why a user-space relay.  Binding happens before
anything starts, in the caller: a host port already in use raises
``NameConflict``, a port below 1024 that the caller may not bind
``PermissionDenied``; the bound sockets go to the forwarder, so the ports
are never free in between.
"""

from __future__ import annotations

import errno
import json
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

from instancelib.errors import NameConflict, PermissionDenied, StartError
from instancelib.linux import procfs
from instancelib.network.args import PortMap

__all__ = ["bind", "start_forwarder", "wait_for_forwarder"]

_NETWORK_DIR = os.path.dirname(os.path.abspath(__file__))
# The forwarder imports only the standard library and linux.procfs (not the package's
# __init__), and is detached from the caller by a fork whose parent exits at once.
_LAUNCH = (
    "import os, sys\n"
    "for name, path in (('instancelib', sys.argv[1]), ('instancelib.network', sys.argv[2])):\n"
    "    pkg = type(sys)(name)\n"
    "    pkg.__path__ = [path]\n"
    "    sys.modules[name] = pkg\n"
    "child = os.fork()\n"
    "if child:\n"
    "    os.write(int(sys.argv[3]), str(child).encode() + b'\\n')\n"
    "    os._exit(0)\n"
    "from instancelib.network import forwarder\n"
    "forwarder.main(int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])\n"
)
_REPORT_WAIT = 30.0  # seconds the forwarder may take to say it is set up
_FORWARDER_EXIT = 4.0  # seconds the forwarder may take to see its instance end (and pasta's)


def bind(port_maps: Sequence[PortMap], name: str) -> list[tuple[socket.socket, PortMap]]:
    """Bind (and for TCP, listen on) each map's host port; all or none."""
    bound: list[tuple[socket.socket, PortMap]] = []
    try:
        for port_map in port_maps:
            kind = socket.SOCK_STREAM if port_map.protocol == "tcp" else socket.SOCK_DGRAM
            sock = socket.socket(socket.AF_INET, kind)
            bound.append((sock, port_map))
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            where = port_map.host_ip or "0.0.0.0"
            try:
                sock.bind((where, port_map.host))
            except OSError as err:
                if err.errno == errno.EADDRINUSE:
                    raise NameConflict(f"host port {port_map.host}/{port_map.protocol} is in "
                                       "use", name=name) from None
                if err.errno == errno.EACCES:
                    raise PermissionDenied(f"host port {port_map.host}/{port_map.protocol}: "
                                           "ports below 1024 are root's", name=name) from None
                raise StartError(f"cannot bind host port {port_map.host}", name=name,
                                 errno=err.errno) from err
            if kind == socket.SOCK_STREAM:
                sock.listen(128)
    except BaseException:
        for sock, _ in bound:
            sock.close()
        raise
    return bound


def start_forwarder(bound: list[tuple[socket.socket, PortMap, str]], pid: int, starttime: int,
                    name: str, *, pasta: tuple[list[str], list[int], int] | None = None
                    ) -> tuple[int, int]:
    """Start the instance's forwarder (detached) for ``(socket, map, instance address)``s and,
    with ``pasta`` (its command line, the descriptors it gets, the error log's descriptor),
    the instance's pasta; return the forwarder's (PID, start time) once all is set up.

    Raises:
        StartError: the forwarder or pasta could not be started (pasta's words in it).
    """
    spec = {"maps": [[sock.fileno(), m.protocol, address, m.container]
                     for sock, m, address in bound],
            "pasta": pasta[0] if pasta else None, "fds": pasta[1] if pasta else [],
            "log": pasta[2] if pasta else None}
    inherited = [sock.fileno() for sock, _, _ in bound] + (
        [*pasta[1], pasta[2]] if pasta else [])
    read_end, write_end = os.pipe()
    try:
        launcher = subprocess.Popen(
            [sys.executable, "-c", _LAUNCH, os.path.dirname(_NETWORK_DIR), _NETWORK_DIR,
             str(write_end), str(pid), str(starttime), json.dumps(spec)],
            pass_fds=[write_end, *inherited],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=None if os.environ.get("INSTANCELIB_DEBUG") else subprocess.DEVNULL,
            start_new_session=True, env={"LC_CTYPE": "C.UTF-8"})
        os.close(write_end)
        write_end = -1
        launcher.wait(timeout=30)
        said = _read_report(read_end)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise StartError("cannot start the port forwarder", name=name,
                         errno=getattr(err, "errno", None)) from err
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
    child, _, report = said.partition("\n")
    stat = procfs.read_stat(int(child)) if child.isdigit() else None
    if report != "ok" or stat is None:
        what = "pasta" if pasta else "the port forwarder"
        raise StartError(f"{what} did not start: {report.removeprefix('error: ') or 'exited'}",
                         name=name, step="set up the network")
    return int(child), stat.starttime


def _read_report(fd: int) -> str:
    """Everything written to the report pipe until its last writer closes it (bounded)."""
    chunks = []
    deadline = time.monotonic() + _REPORT_WAIT
    while (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([fd], [], [], left)
        chunk = os.read(fd, 4096) if readable else b""
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace").strip()


def wait_for_forwarder(pid: int, starttime: int) -> None:
    """Return once the forwarder (which ends with its instance) has exited, bounded.

    Waited for on a pidfd, readable once all its threads have exited and so its
    sockets are closed (the host ports free again).  The main thread may show
    as a zombie while the others still end: the identity check takes the
    start time only, not "running".
    """
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return  # already gone
    stat = procfs.read_stat(pid)
    if stat is None or stat.starttime != starttime:
        os.close(pidfd)
        return  # another process has the PID now: ours is gone
    try:
        procfs.wait_pidfd(pidfd, _FORWARDER_EXIT)
    finally:
        os.close(pidfd)
