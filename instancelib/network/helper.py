"""The network helper: a process of the caller's that does the host side of networks.

Started on first use by ``network.client`` (``python -m
instancelib.network.helper FD``), it runs pyroute2 in a single-threaded
process of its own, so no netlink code ever runs on the caller's threads or
event loop.  A request is one ``wire`` message:

- ``attach``: with the instance's network namespace as a descriptor, a veth
  pair whose inner end is born in that namespace under its final name
  (``eth0``).  For a ``bridge`` network the bridge is made if missing (its
  gateway address, up) and the host end joins it; for ``ptp`` the host end
  holds the gateway address itself and a route to the instance's address.  PID 1 addresses and
  routes the inner end itself (``linux/netns.py``).
- ``ping``.

For a network with ``ipMasq`` the helper also makes its masquerade chain and
turns IPv4 forwarding on (``firewall``), both checked at every attach.

The veth goes away with the namespace when the instance ends; nothing has to
be detached.  The helper exits when the caller's end of its socket closes.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import sys
from typing import Any

from instancelib.linux import wire
from instancelib.network import firewall

__all__ = ["main"]


class _Links:
    def __init__(self) -> None:
        from pyroute2 import IPRoute  # noqa: PLC0415 (only the helper loads pyroute2)

        self.ipr = IPRoute()
        self.bridges: dict[tuple[str, str, int], int] = {}  # made or checked: its index

    @staticmethod
    def route_out(subnet: str, masquerade: bool) -> None:
        # Checked at every attach (a /proc read and one nfnetlink question, ~50 µs):
        # a ruleset flushed meanwhile is made again.
        firewall.ensure_forwarding()
        if masquerade:
            firewall.ensure_masquerade(ipaddress.IPv4Network(subnet))

    def index(self, name: str) -> int | None:
        found = self.ipr.link_lookup(ifname=name)
        return int(found[0]) if found else None

    def ensure_bridge(self, name: str, gateway: str, prefix: int) -> int:
        known = self.bridges.get((name, gateway, prefix))
        if known is not None and self.index(name) == known:
            return known  # checked before, and still the same link
        index = self.index(name)
        if index is None:
            try:
                self.ipr.link("add", ifname=name, kind="bridge")
            except Exception as err:  # pyroute2's NetlinkError: made meanwhile?
                if self.index(name) is None:
                    raise OSError(getattr(err, "code", errno.EIO), str(err)) from err
            index = self.index(name)
            assert index is not None
        addresses = {(a.get_attr("IFA_ADDRESS"), a["prefixlen"])
                     for a in self.ipr.get_addr(index=index, family=socket.AF_INET)}
        if (gateway, prefix) not in addresses:
            self.ipr.addr("add", index=index, address=gateway, mask=prefix)
        self.ipr.link("set", index=index, state="up")
        self.bridges[(name, gateway, prefix)] = index
        return index

    def attach(self, request: dict[str, Any], netns_fd: int) -> None:
        host_end = str(request["host_ifname"])
        peer = {"ifname": str(request["ifname"]), "net_ns_fd": netns_fd}
        self.route_out(str(request["subnet"]), bool(request.get("ip_masq")))
        if request["kind"] == "bridge":
            bridge = self.ensure_bridge(str(request["bridge"]), str(request["gateway"]),
                                        int(request["prefix"]))
            # One request: the pair, its host end on the bridge and up.
            self.ipr.link("add", ifname=host_end, kind="veth", peer=peer, master=bridge,
                          state="up")
            return
        self.ipr.link("add", ifname=host_end, kind="veth", peer=peer)
        index = self.index(host_end)
        assert index is not None
        # ptp: the host end holds the gateway address (on every instance's link, as
        # CNI's ptp does) and routes the instance's address to it.
        self.ipr.addr("add", index=index, address=str(request["gateway"]), mask=32)
        self.ipr.link("set", index=index, state="up")
        self.ipr.route("add", dst=f"{request['address']}/32", oif=index)


def _serve(sock: socket.socket) -> None:
    links: _Links | None = None
    while True:
        message, fds = wire.recv_message(sock)
        if message is None:
            return
        try:
            if message.get("op") == "ping":
                reply: dict[str, Any] = {"ok": True}
            elif message.get("op") == "attach" and len(fds) == 1:
                links = links or _Links()
                links.attach(message, fds[0])
                reply = {"ok": True}
            else:
                reply = {"ok": False, "error": f"bad request {message.get('op')!r}"}
        except Exception as err:  # everything is reported to the caller
            code = getattr(err, "code", None) or getattr(err, "errno", None)
            reply = {"ok": False, "error": str(err) or type(err).__name__,
                     "errno": code if isinstance(code, int) else None}
        finally:
            for fd in fds:
                os.close(fd)
        wire.send_message(sock, reply)


def main(fd: int) -> None:
    """Serve requests on socket ``fd`` until the caller goes away."""
    sock = socket.socket(fileno=fd)
    try:
        _serve(sock)
    finally:
        sock.close()


if __name__ == "__main__":
    main(int(sys.argv[1]))
