"""Whose is a listening TCP socket: the kernel's tables, read for a readiness probe.

``/proc/PID/net/tcp`` and ``tcp6`` list the sockets of PID's network namespace
(the host's, for an instance on the host's network); each listening socket's
inode is matched against the ``socket:[INODE]`` links in ``/proc/N/fd`` of the
processes of an instance's PID namespace.  Identities come from the live kernel:
nothing here trusts a file the instance could write.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os

__all__ = ["held_by_namespace_of", "listening", "own_network"]

_LISTEN = b"0A"
_WILDCARDS = (ipaddress.ip_address("0.0.0.0"), ipaddress.ip_address("::"))


def _address(field: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """A ``/proc/net/tcp`` address: 32-bit words in host (little-endian) order."""
    raw = bytes.fromhex(field)
    ordered = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    value = ipaddress.ip_address(ordered)
    if isinstance(value, ipaddress.IPv6Address) and value.ipv4_mapped is not None:
        return value.ipv4_mapped
    return value


def listening(pid: int | str, port: int, host: str) -> set[int]:
    """Inodes of the sockets listening on ``port`` in ``pid``'s network namespace, on
    ``host`` or on every address.

    The tables are read as bytes: PID 1 calls this after pivot_root, where no codec
    module can be imported any more.
    """
    wanted = ipaddress.ip_address(host)
    found: set[int] = set()
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}", "rb") as lines:
                next(lines, None)  # the header
                for line in lines:
                    fields = line.split()
                    if len(fields) < 10 or fields[3] != _LISTEN:
                        continue
                    address, _, hex_port = fields[1].partition(b":")
                    if int(hex_port, 16) != port:
                        continue
                    local = _address(address.decode())
                    if local == wanted or local in _WILDCARDS:
                        found.add(int(fields[9]))
        except FileNotFoundError:
            continue  # no IPv6 in this kernel or namespace
    return found


def own_network(pid: int) -> bool:
    """Whether ``pid`` has a network namespace other than ours."""
    return os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")


def held_by_namespace_of(pid: int | str) -> set[int]:
    """Inodes of the sockets that the processes of ``pid``'s PID namespace hold."""
    target = os.readlink(f"/proc/{pid}/ns/pid")
    inodes: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{entry}/ns/pid") != target:
                continue
            for fd in os.listdir(f"/proc/{entry}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{entry}/fd/{fd}")
                    if link.startswith("socket:["):
                        inodes.add(int(link[8:-1]))
    return inodes
