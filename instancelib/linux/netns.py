"""An instance's own network namespace, made by its PID 1 (standard library only).

PID 1 unshares the namespace itself, before it builds the root filesystem,
so nothing of the instance ever runs in the host's network; a new
namespace has only ``lo``, down, which is brought up here (an ``ioctl`` on
``struct ifreq``: 16 bytes of name, then the flags).
"""

from __future__ import annotations

import fcntl
import socket
import struct

from instancelib.linux import syscalls

__all__ = ["bring_up", "enter_new_network_namespace"]

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_IFREQ = struct.Struct("16sH22x")  # ifr_name, ifr_flags, the rest of the 40-byte union


def enter_new_network_namespace() -> None:
    """Move the calling process into a new network namespace (``lo`` is up afterwards)."""
    syscalls.unshare(syscalls.CLONE_NEWNET)
    bring_up("lo")


def bring_up(name: str) -> None:
    """Set ``IFF_UP`` on the interface ``name`` of the current network namespace."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        request = _IFREQ.pack(name.encode(), 0)
        _, flags = _IFREQ.unpack(fcntl.ioctl(sock, _SIOCGIFFLAGS, request))
        if not flags & _IFF_UP:
            fcntl.ioctl(sock, _SIOCSIFFLAGS, _IFREQ.pack(name.encode(), flags | _IFF_UP))
