"""What an instance's network will be: its namespace, networks, ``/etc/hosts``, ``resolv.conf``.

Decided in the caller (``launchplan``), before anything starts, so a bad
network name, definition or argument is a typed error with nothing to undo.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from instancelib.errors import Unsupported
from instancelib.network.args import NetworkArgs, PortMap, parse_network_args
from instancelib.network.config import Network, load_network

__all__ = ["NetworkPlan", "hosts_file", "plan_network", "resolv_conf"]


@attrs.frozen(kw_only=True)
class NetworkPlan:
    """``namespace``: the instance gets a network namespace of its own; ``networks`` (in
    ``eth0``, ``eth1``... order) and their ``args`` are joined in it."""

    namespace: bool
    networks: tuple[Network, ...] = ()
    args: dict[str, NetworkArgs] = attrs.field(factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return {"namespace": self.namespace,
                "interfaces": [{"name": f"eth{i}", "network": n.to_dict()}
                               for i, n in enumerate(self.networks)]}


def plan_network(network: Sequence[str] | None,
                 network_args: Sequence[str | PortMap]) -> NetworkPlan:
    """The plan for ``network`` (None: the host's; ``("none",)``: only ``lo``).

    Raises:
        InvalidArgument: an unknown network, a malformed definition or argument.
        Unsupported: a definition instancelib cannot carry out, or port maps on a
            network whose definition has no portmap plugin.
    """
    if network is None:
        return NetworkPlan(namespace=False)
    if tuple(network) == ("none",):
        return NetworkPlan(namespace=True)
    networks = tuple(load_network(name) for name in network)
    args = parse_network_args(network_args, [n.name for n in networks])
    for joined in networks:
        asked = args.get(joined.name)
        if asked is not None and asked.port_maps and not joined.port_maps:
            raise Unsupported(f"network {joined.name!r} ({joined.source}) has no portmap "
                              "plugin with the portMappings capability: it maps no ports")
    return NetworkPlan(namespace=True, networks=networks, args=args)


def hosts_file(hostname: str) -> str:
    """``/etc/hosts`` of an instance with a network of its own: localhost, and its name."""
    return ("127.0.0.1\tlocalhost\n"
            "::1\tlocalhost ip6-localhost ip6-loopback\n"
            f"127.0.1.1\t{hostname}\n")


def resolv_conf(servers: Sequence[str]) -> str:
    """A ``resolv.conf`` naming only ``servers`` (as Apptainer's ``--dns`` writes it)."""
    return "".join(f"nameserver {server}\n" for server in servers)
