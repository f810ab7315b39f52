"""Port maps: a forwarder process per instance relays host ports to the instance's address.

The caller binds every host port before anything starts (a port in use is a
typed error then, and nobody can take it meanwhile), and hands the bound
sockets to this process, which it starts detached: it must outlive the
caller, as the instance does.  It relays TCP connections and UDP datagrams to
``(instance address, container port)``, and exits as soon as the instance's
PID 1 does (it waits on a pidfd of it).  A user-space relay, not kernel NAT,
because a connection to the host's 127.0.0.1 cannot be DNATed to another
namespace without routing loopback traffic out (``route_localnet``), and
because it needs no firewall state to clean up; it costs throughput, which
``benchmarks/network.py`` measures.

For a user-mode network it also runs pasta (see ``pasta``) in the
foreground as its child: it waits until pasta has configured the namespace
(pasta writes its PID to the pipe given as its ``--pid`` file), passes
pasta's later messages to the instance's error log, and ends pasta when
PID 1 exits.

Started as ``python -c BOOTSTRAP PACKAGE NETWORK REPORT PID STARTTIME SPEC``
with the sockets as inherited descriptors.  ``SPEC`` is JSON: ``maps``, one
``[fd, protocol, address, port]`` per relayed map; ``pasta``, its command
line (or null), with ``fds`` (the namespaces it gets) and ``log``.  Once set
up, the process writes ``ok`` (or ``error: WHY``) to ``REPORT`` and closes
it.  Only the standard library and ``linux.procfs`` are imported.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from typing import Any

from instancelib.linux import procfs

__all__ = ["main"]

_BUFFER = 1 << 18
_UDP_IDLE = 60.0  # seconds a UDP client's relay socket is kept without traffic
_PASTA_READY = 20.0  # seconds pasta may take to configure the namespace
_PASTA_EXIT = 2.0  # seconds pasta may take to exit once told to
_SYSLOG_NOISE = b"bytes to syslog"  # pasta's note that it has no syslog, on every message


def _pump(source: socket.socket, target: socket.socket) -> None:
    try:
        while True:
            data = source.recv(_BUFFER)
            if not data:
                break
            target.sendall(data)
    except OSError:
        pass
    finally:
        for sock, how in ((target, socket.SHUT_WR), (source, socket.SHUT_RD)):
            with contextlib.suppress(OSError):
                sock.shutdown(how)


def _serve_tcp(listener: socket.socket, address: str, port: int) -> None:
    while True:
        try:
            client, _ = listener.accept()
        except OSError:
            return
        try:
            upstream = socket.create_connection((address, port), timeout=10)
            upstream.settimeout(None)
        except OSError:
            client.close()
            continue
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        forward = threading.Thread(target=_pump, args=(client, upstream), daemon=True)
        backward = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
        forward.start()
        backward.start()
        threading.Thread(target=_close_after, args=(forward, backward, client, upstream),
                         daemon=True).start()


def _close_after(first: threading.Thread, second: threading.Thread,
                 *sockets: socket.socket) -> None:
    first.join()
    second.join()
    for sock in sockets:
        # Both directions have ended: close without TIME_WAIT on our side, so the host
        # port can be bound again at once (by the next instance mapping it).
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


def _serve_udp(bound: socket.socket, address: str, port: int) -> None:
    """Relay datagrams: one connected socket to the instance per client, idle ones dropped."""
    relays: dict[tuple[str, int], tuple[socket.socket, float]] = {}
    owners: dict[int, tuple[str, int]] = {}
    poller = select.poll()
    poller.register(bound.fileno(), select.POLLIN)
    while True:
        for fd, _ in poller.poll(1000):
            if fd == bound.fileno():
                data, client = bound.recvfrom(65535)
                relay = relays.get(client)
                if relay is None:
                    upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    upstream.connect((address, port))
                    poller.register(upstream.fileno(), select.POLLIN)
                    owners[upstream.fileno()] = client
                    relay = (upstream, time.monotonic())
                relays[client] = (relay[0], time.monotonic())
                with contextlib.suppress(OSError):
                    relay[0].send(data)
            else:
                client = owners[fd]
                upstream = relays[client][0]
                with contextlib.suppress(OSError):
                    bound.sendto(upstream.recv(65535), client)
                relays[client] = (upstream, time.monotonic())
        now = time.monotonic()
        for client, (upstream, seen) in list(relays.items()):
            if now - seen > _UDP_IDLE:
                poller.unregister(upstream.fileno())
                owners.pop(upstream.fileno(), None)
                upstream.close()
                del relays[client]


def _drain(stream: Any, log_fd: int | None) -> None:
    """pasta's later messages: to the instance's error log (or nowhere), never blocking it."""
    for line in iter(stream.readline, b""):
        if log_fd is not None and _SYSLOG_NOISE not in line:
            with contextlib.suppress(OSError):
                os.write(log_fd, b"pasta: " + line)


def _start_pasta(command: list[str], fds: list[int], log_fd: int | None
                 ) -> tuple[subprocess.Popen[bytes] | None, str]:
    """pasta in the foreground, once it has configured the namespace; else (None, why)."""
    from instancelib.linux import syscalls  # noqa: PLC0415 (ctypes: only with pasta)

    ready_read, ready_write = os.pipe()
    try:
        # Not yet threaded here, so preexec_fn is safe: pasta ends if we are killed.
        child = subprocess.Popen([*command, "--pid", f"/proc/self/fd/{ready_write}"],
                                 pass_fds=[ready_write, *fds], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 preexec_fn=lambda: syscalls.die_with_parent(signal.SIGTERM))  # noqa: PLW1509
    except OSError as err:
        os.close(ready_read)
        return None, f"cannot run pasta: {err.strerror}"
    finally:
        os.close(ready_write)
        for fd in fds:
            os.close(fd)
    try:
        readable, _, _ = select.select([ready_read], [], [], _PASTA_READY)
        written = os.read(ready_read, 32) if readable else b""  # its PID, once it is set up
    finally:
        os.close(ready_read)
    assert child.stderr is not None
    if written.strip().isdigit():
        threading.Thread(target=_drain, args=(child.stderr, log_fd), daemon=True).start()
        return child, ""
    child.kill()
    child.wait()
    said = [line.strip() for line in child.stderr.read().decode(errors="replace").splitlines()
            if line.strip() and _SYSLOG_NOISE.decode() not in line]
    return None, "; ".join(said) or "pasta exited before it configured the namespace"


def _end(child: subprocess.Popen[bytes]) -> None:
    child.terminate()
    try:
        child.wait(_PASTA_EXIT)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def main(report: int, pid: int, starttime: int, spec: str) -> None:
    """Relay the maps of ``spec`` (and run its pasta) until the instance's PID 1 (``pid``,
    ``starttime``) ends; say on ``report`` when all is set up."""
    try:
        pidfd = procfs.open_verified_pidfd(pid, starttime)
    except OSError:
        os._exit(0)  # the instance is already gone
    parsed = json.loads(spec)
    child = None
    if parsed.get("pasta"):
        log_fd = parsed.get("log")
        child, why = _start_pasta(list(parsed["pasta"]), [int(fd) for fd in parsed["fds"]],
                                  int(log_fd) if log_fd is not None else None)
        if child is None:
            os.write(report, f"error: {why}".encode())
            os._exit(1)
    for fd, protocol, address, port in parsed.get("maps") or []:
        kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
        sock = socket.socket(socket.AF_INET, kind, fileno=int(fd))
        serve = _serve_tcp if protocol == "tcp" else _serve_udp
        threading.Thread(target=serve, args=(sock, str(address), int(port)), daemon=True).start()
    os.write(report, b"ok")
    os.close(report)
    select.select([pidfd], [], [])  # readable once PID 1 has exited
    if child is not None:
        _end(child)
    os._exit(0)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
