"""Messages between the caller, the fork-server and an instance's PID 1.

Each message is one JSON object in one ``SOCK_SEQPACKET`` datagram, with
file descriptors attached as ``SCM_RIGHTS``.  Datagram boundaries make framing
free, and a closed peer reads as an empty datagram (EOF), which is how a
starting instance notices that its caller died.  Received descriptors are
close-on-exec (``MSG_CMSG_CLOEXEC``): nothing passed to a launcher or joiner
may leak into an instance's programs.  (``socket.recv_fds`` takes a flags
argument but never passes it on, hence ``recv_fds`` here.)

A datagram is bounded by the socket's buffer (about 208 KiB), while a plan
or an exec request carries arguments and an environment of up to ARG_MAX
(2 MiB): a message larger than ``INLINE`` travels in a memfd sent as the
first descriptor, announced by ``{"__carried__": SIZE}``.
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import socket
from typing import Any

__all__ = ["MAX_MESSAGE", "recv_fds", "recv_message", "send_message", "socketpair"]

MAX_MESSAGE = 1 << 20
INLINE = 48 << 10
_MAX_FDS = 16
_MAX_CARRIED = 64 << 20
_CARRIED = "__carried__"


def socketpair() -> tuple[socket.socket, socket.socket]:
    """A connected pair of close-on-exec ``SOCK_SEQPACKET`` sockets."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def send_message(
    sock: socket.socket, message: dict[str, Any], fds: list[int] | None = None
) -> None:
    """Send ``message`` (JSON-serialisable) with ``fds`` attached."""
    data = json.dumps(message, separators=(",", ":")).encode()
    if len(data) > INLINE:
        carrier = os.memfd_create("instancelib-message", os.MFD_CLOEXEC)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(carrier, view):]
            header = json.dumps({_CARRIED: len(data)}).encode()
            socket.send_fds(sock, [header], [carrier, *(fds or [])])
        finally:
            os.close(carrier)
        return
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.sendall(data)


def recv_fds(sock: socket.socket, bufsize: int, maxfds: int) -> tuple[bytes, list[int]]:
    """Receive data and up to ``maxfds`` descriptors, which arrive close-on-exec."""
    fds = array.array("i")
    data, ancillary, flags, _addr = sock.recvmsg(
        bufsize, socket.CMSG_LEN(maxfds * fds.itemsize), socket.MSG_CMSG_CLOEXEC)
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    if flags & socket.MSG_CTRUNC:
        for fd in fds:
            _close_quietly(fd)
        raise OSError("descriptors were dropped (more were sent than expected)")
    return data, list(fds)


def recv_message(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    """Receive one message; ``(None, [])`` when the peer has closed its end."""
    data, fds = recv_fds(sock, MAX_MESSAGE, _MAX_FDS)
    if not data:
        for fd in fds:
            _close_quietly(fd)
        return None, []
    message = json.loads(data)
    if not isinstance(message, dict):
        raise ValueError("protocol message is not a JSON object")
    if list(message) == [_CARRIED]:
        size = message[_CARRIED]
        if not fds or not isinstance(size, int) or not 0 < size <= _MAX_CARRIED:
            for fd in fds:
                _close_quietly(fd)
            raise ValueError("malformed carried message")
        carrier, *fds = fds
        try:
            payload = os.pread(carrier, size, 0)
        finally:
            os.close(carrier)
        message = json.loads(payload)
        if not isinstance(message, dict):
            raise ValueError("protocol message is not a JSON object")
    return message, list(fds)


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
