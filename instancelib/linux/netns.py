"""An instance's own network namespace, made by its PID 1 (standard library only).

PID 1 unshares the namespace itself, before it builds the root filesystem,
so nothing of the instance ever runs in the host's network; a new
namespace has only ``lo``, down, which is brought up here (an ``ioctl`` on
``struct ifreq``: 16 bytes of name, then the flags).  The interfaces the host
side moves in (the inner end of a veth, already named ``eth0``...) are
addressed and routed by PID 1 too, with two rtnetlink requests of its own:
no netlink library runs in PID 1.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
from typing import Any

from instancelib.linux import syscalls

__all__ = ["NFPROTO_IPV4", "add_address", "add_route", "bring_up", "configure",
           "enter_new_network_namespace", "nft_exists"]

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_IFREQ = struct.Struct("16sH22x")  # ifr_name, ifr_flags, the rest of the 40-byte union


def enter_new_network_namespace() -> None:
    """Move the calling process into a new network namespace (``lo`` is up afterwards).

    Its ports are all the instance's, so its services may bind those below 1024
    whatever user they run as (``net.ipv4.ip_unprivileged_port_start=0`` in this
    namespace only, as Docker sets it): a web server image's port 80 works in an
    ordinary user's instance too.
    """
    syscalls.unshare(syscalls.CLONE_NEWNET)
    bring_up("lo")
    try:
        with open("/proc/sys/net/ipv4/ip_unprivileged_port_start", "w") as setting:
            setting.write("0")
    except OSError:
        pass  # an older kernel (< 4.11) or a read-only /proc/sys: the default stays


def bring_up(name: str) -> None:
    """Set ``IFF_UP`` on the interface ``name`` of the current network namespace."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        request = _IFREQ.pack(name.encode(), 0)
        _, flags = _IFREQ.unpack(fcntl.ioctl(sock, _SIOCGIFFLAGS, request))
        if not flags & _IFF_UP:
            fcntl.ioctl(sock, _SIOCSIFFLAGS, _IFREQ.pack(name.encode(), flags | _IFF_UP))


# rtnetlink (rtnetlink(7)): the two messages PID 1 sends inside its own namespace.
_NETLINK_ROUTE = 0
_RTM_NEWADDR, _RTM_NEWROUTE, _NLMSG_ERROR = 20, 24, 2
_NLM_F_REQUEST, _NLM_F_ACK, _NLM_F_EXCL, _NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
_IFA_ADDRESS, _IFA_LOCAL = 1, 2
_RTA_DST, _RTA_OIF, _RTA_GATEWAY = 1, 4, 5
_RT_TABLE_MAIN, _RTPROT_BOOT, _RT_SCOPE_UNIVERSE, _RTN_UNICAST = 254, 3, 0, 1
_RT_SCOPE_LINK = 253
_NLMSGHDR = struct.Struct("=IHHII")
_IFADDRMSG = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")
_RTATTR = struct.Struct("=HH")


def _attribute(kind: int, payload: bytes) -> bytes:
    length = _RTATTR.size + len(payload)
    return _RTATTR.pack(length, kind) + payload + b"\0" * ((4 - length % 4) % 4)


def _request(kind: int, body: bytes, *, create: bool = True,
             protocol: int = _NETLINK_ROUTE) -> None:
    """Send one netlink request and wait for its acknowledgement (an ``OSError`` if refused);
    replies before the acknowledgement (a ``GET``'s object) are skipped."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                       protocol) as sock:
        sock.bind((0, 0))
        flags = _NLM_F_REQUEST | _NLM_F_ACK | (_NLM_F_CREATE | _NLM_F_EXCL if create else 0)
        sock.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, flags, 1, 0) + body)
        for _ in range(8):  # the object, then the acknowledgement: bounded
            reply = sock.recv(65536)
            while reply:
                length, message_type, _flags, _seq, _pid = _NLMSGHDR.unpack_from(reply)
                if message_type == _NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", reply, _NLMSGHDR.size)
                    if code:
                        raise OSError(-code, os.strerror(-code))
                    return
                reply = reply[max(length, _NLMSGHDR.size):]
    raise OSError(errno.EPROTO, "no acknowledgement from the kernel")


def add_address(interface: str, address: str, prefix: int) -> None:
    """Give ``interface`` the IPv4 ``address``/``prefix`` (``ip addr add``)."""
    index = socket.if_nametoindex(interface)
    packed = socket.inet_aton(address)
    body = _IFADDRMSG.pack(socket.AF_INET, prefix, 0, _RT_SCOPE_UNIVERSE, index)
    _request(_RTM_NEWADDR, body + _attribute(_IFA_LOCAL, packed)
             + _attribute(_IFA_ADDRESS, packed))


def add_route(interface: str, destination: str, prefix: int, gateway: str | None) -> None:
    """Route ``destination``/``prefix`` through ``gateway`` on ``interface`` (``ip route add``);
    without a gateway, a route of the link itself (``scope link``)."""
    index = socket.if_nametoindex(interface)
    scope = _RT_SCOPE_UNIVERSE if gateway else _RT_SCOPE_LINK
    body = _RTMSG.pack(socket.AF_INET, prefix, 0, 0, _RT_TABLE_MAIN, _RTPROT_BOOT,
                       scope, _RTN_UNICAST, 0)
    if prefix:
        body += _attribute(_RTA_DST, socket.inet_aton(destination))
    if gateway:
        body += _attribute(_RTA_GATEWAY, socket.inet_aton(gateway))
    body += _attribute(_RTA_OIF, struct.pack("=i", index))
    _request(_RTM_NEWROUTE, body)


def configure(interfaces: list[dict[str, Any]]) -> None:
    """Address, bring up and route each interface the host side moved into our namespace.

    Each item: ``ifname``, ``address``, ``prefix``, ``routes``: ``[destination,
    prefix, gateway]`` in order (a ``None`` gateway: a route of the link itself).
    """
    for interface in interfaces:
        name = str(interface["ifname"])
        add_address(name, str(interface["address"]), int(interface["prefix"]))
        bring_up(name)
        for destination, prefix, gateway in interface.get("routes") or []:
            add_route(name, str(destination), int(prefix), str(gateway) if gateway else None)


# nf_tables over nfnetlink: only the question whether a table or chain exists (the
# rules themselves are made by nftables' own ``nft``, see network/firewall.py).
_NETLINK_NETFILTER = 12
_NFT_MSG_GETTABLE, _NFT_MSG_GETCHAIN = (10 << 8) | 1, (10 << 8) | 4  # NFNL_SUBSYS_NFTABLES
_NFTA_TABLE_NAME, _NFTA_CHAIN_TABLE, _NFTA_CHAIN_NAME = 1, 1, 3
_NFGENMSG = struct.Struct("=BBH")
NFPROTO_IPV4 = 2


def nft_exists(family: int, table: str, chain: str | None = None) -> bool:
    """Whether nf_tables has ``table`` (of ``family``), or ``chain`` in it, in this namespace."""
    def name(kind: int, value: str) -> bytes:
        return _attribute(kind, value.encode() + b"\0")

    if chain is None:
        kind, attributes = _NFT_MSG_GETTABLE, name(_NFTA_TABLE_NAME, table)
    else:
        kind = _NFT_MSG_GETCHAIN
        attributes = name(_NFTA_CHAIN_TABLE, table) + name(_NFTA_CHAIN_NAME, chain)
    try:
        _request(kind, _NFGENMSG.pack(family, 0, 0) + attributes, create=False,
                 protocol=_NETLINK_NETFILTER)
    except OSError as err:
        # No such object, or no nfnetlink at all (nf_tables not loaded yet): none there.
        if err.errno in (errno.ENOENT, errno.EPROTONOSUPPORT):
            return False
        raise
    return True
