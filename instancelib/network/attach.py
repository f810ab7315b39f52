"""Joining an instance to its networks: addresses, the host side's veths, PID 1's part.

For each network of the plan, in ``eth0``, ``eth1``... order: an address
is allocated (the caller holds it while the start runs, PID 1 once it is
recorded), the network helper makes the bridge and a veth pair whose inner
end is born in the instance's namespace, and PID 1 addresses and routes the
inner end before anything of the image runs.  When the instance ends its
namespace goes, and the veths with it; the addresses are released by the
stop (or, for an instance killed from outside, when it is pruned).
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
from typing import Any

import attrs

from instancelib.errors import StartError, Unsupported
from instancelib.linux import procfs
from instancelib.network import firewall, pasta, portmaps
from instancelib.network.args import PortMap
from instancelib.network.client import get_helper
from instancelib.network.config import Network
from instancelib.network.ipam import Allocator, Holder
from instancelib.network.plan import PASTA, NetworkPlan, UserModeNetwork

__all__ = ["Attachment", "allocate", "attach", "bind_ports", "check_ports_free", "hand_over",
           "release", "release_recorded", "start_pasta", "user_mode_record"]


@attrs.frozen
class Attachment:
    """One interface of an instance: ``ifname`` inside, ``host_ifname`` outside."""

    network: Network
    ifname: str
    host_ifname: str
    address: ipaddress.IPv4Address

    def to_record(self) -> dict[str, Any]:
        return {"network": self.network.name, "ifname": self.ifname,
                "host_ifname": self.host_ifname, "address": str(self.address)}

    def for_pid1(self) -> dict[str, Any]:
        """What PID 1 needs to address and route the inner end.

        On a bridge the subnet is on the link.  On a ptp link only the gateway
        is (CNI's ptp): the instance has a /32, a link route to the gateway,
        and the subnet and the network's routes through it.
        """
        network = self.network
        gateway = str(network.gateway)
        routes: list[list[Any]] = []
        prefix = network.subnet.prefixlen
        if network.kind == "ptp":
            prefix = 32
            routes += [[gateway, 32, None],
                       [str(network.subnet.network_address), network.subnet.prefixlen, gateway]]
        routes += [[str(r.network_address), r.prefixlen, gateway] for r in network.routes]
        return {"ifname": self.ifname, "address": str(self.address), "prefix": prefix,
                "routes": routes}


def _caller(name: str) -> Holder:
    stat = procfs.read_stat(os.getpid())
    assert stat is not None
    return os.getpid(), stat.starttime, name


def allocate(plan: NetworkPlan, name: str) -> list[Attachment]:
    """Addresses for each network of ``plan`` (held by the caller); all or none.

    Raises:
        Unsupported: the caller may not make these networks here.
        InvalidArgument, NameConflict: a requested address outside the range, or taken.
    """
    for network in plan.networks:
        if network.ip_masq and firewall.find_nft() is None:
            raise Unsupported(f"network {network.name!r} ({network.source}) masquerades "
                              "(ipMasq): that needs nftables' nft, not found (Debian: "
                              "apt-get install nftables; or define the network with "
                              '"ipMasq": false)', name=name)
    made: list[Attachment] = []
    try:
        for index, network in enumerate(plan.networks):
            requested = plan.args.get(network.name)
            address = Allocator(network).allocate(
                _caller(name), requested.ip if requested is not None else None)
            made.append(Attachment(network, f"eth{index}",
                                   f"vi{secrets.token_hex(5)}{index}", address))
    except BaseException:
        release(made, _caller(name))
        raise
    return made


def bind_ports(plan: NetworkPlan, attachments: list[Attachment],
               name: str) -> list[tuple[socket.socket, PortMap, str]]:
    """The host ports of every network's port maps, bound (see ``portmaps.bind``)."""
    bound: list[tuple[socket.socket, PortMap, str]] = []
    try:
        for attachment in attachments:
            asked = plan.args.get(attachment.network.name)
            if asked is not None and asked.port_maps:
                bound += [(sock, port_map, str(attachment.address))
                          for sock, port_map in portmaps.bind(asked.port_maps, name)]
    except BaseException:
        for sock, _, _ in bound:
            sock.close()
        raise
    return bound


def attach(attachments: list[Attachment], netns_fd: int, name: str) -> None:
    """Make each network's bridge (if missing) and the veth pair into ``netns_fd``."""
    for attachment in attachments:
        network = attachment.network
        reply = get_helper().request(
            {"op": "attach", "kind": network.kind, "bridge": network.bridge,
             "gateway": str(network.gateway), "prefix": network.subnet.prefixlen,
             "subnet": str(network.subnet), "ip_masq": network.ip_masq,
             "address": str(attachment.address), "host_ifname": attachment.host_ifname,
             "ifname": attachment.ifname}, [netns_fd])
        if not reply.get("ok"):
            raise StartError(f"cannot join network {network.name!r}: {reply.get('error')}",
                             name=name, step=f"make {attachment.ifname}",
                             errno=reply.get("errno"))


def check_ports_free(network: UserModeNetwork, name: str) -> None:
    """Raise as ``portmaps.bind`` does if a host port of ``network``'s maps is taken."""
    for sock, _ in portmaps.bind(network.port_maps, name):
        sock.close()


def start_pasta(network: UserModeNetwork, namespaces: tuple[int, int], pid1: tuple[int, int],
                log_fd: int, name: str) -> tuple[int, int]:
    """pasta for the ``namespaces`` (network, user: descriptors) of PID 1 (``pid1``: PID,
    start time), under its forwarder; the forwarder's identity, once pasta has configured
    the namespace.

    The user namespace goes to pasta only when it is not the caller's own (an
    ordinary user's instance, or fakeroot).
    """
    netns_fd, userns_fd = namespaces
    own = os.stat("/proc/self/ns/user").st_ino == os.fstat(userns_fd).st_ino
    command = pasta.argv(network.name, network.port_maps, netns_fd,
                         None if own else userns_fd)
    fds = [netns_fd] if own else [netns_fd, userns_fd]
    return portmaps.start_forwarder([], pid1[0], pid1[1], name, pasta=(command, fds, log_fd))


def user_mode_record(network: UserModeNetwork, forwarder: list[int]) -> dict[str, Any]:
    """The record's interface of a pasta network (its address is the host's: not recorded)."""
    return {"network": network.name, "kind": PASTA, "ifname": "eth0", "host_ifname": "",
            "address": "", "port_maps": [str(m) for m in network.port_maps],
            "forwarder": forwarder}


def hand_over(attachments: list[Attachment], holder: Holder) -> None:
    """Make the instance's PID 1 the holder of its addresses (once it is recorded)."""
    for attachment in attachments:
        Allocator(attachment.network).hand_over(attachment.address, holder)


def release(attachments: list[Attachment], holder: Holder | None = None) -> None:
    for attachment in attachments:
        Allocator(attachment.network).release(attachment.address, holder)


def release_recorded(interfaces: list[dict[str, Any]], holder: Holder) -> None:
    """Release the addresses a record names, where ``holder`` (its PID 1) still holds them."""
    for interface in interfaces:
        try:
            address = ipaddress.IPv4Address(str(interface["address"]))
            name = str(interface["network"])
        except (KeyError, ValueError):
            continue
        Allocator.named(name).release(address, holder)
