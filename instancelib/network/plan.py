"""What an instance's network will be: its namespace, networks, ``/etc/hosts``, ``resolv.conf``.

Decided in the caller (``launchplan``), before anything starts, so a bad
network name, definition or argument is a typed error with nothing to undo.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import attrs

from instancelib.errors import Unsupported
from instancelib.linux.userns import has_host_root
from instancelib.network import pasta
from instancelib.network.args import NetworkArgs, PortMap, parse_network_args
from instancelib.network.config import Network, load_network

__all__ = ["PASTA", "NetworkPlan", "UserModeNetwork", "hosts_file", "plan_network",
           "resolv_conf"]

PASTA = "pasta"
"""The network name of user-mode networking through pasta (anyone's; ordinary users' named
networks become it)."""

log = logging.getLogger("instancelib.network")


@attrs.frozen(kw_only=True)
class UserModeNetwork:
    """An instance's user-mode network (pasta): ``eth0`` with the host's address.

    ``name`` is the network asked for (``"pasta"``, or the named network it
    stands in for); ``port_maps`` are forwarded from the host's ports.
    """

    name: str
    port_maps: tuple[PortMap, ...] = ()


@attrs.frozen(kw_only=True)
class NetworkPlan:
    """``namespace``: the instance gets a network namespace of its own; ``networks`` (in
    ``eth0``, ``eth1``... order) and their ``args`` are joined in it."""

    namespace: bool
    networks: tuple[Network, ...] = ()
    args: dict[str, NetworkArgs] = attrs.field(factory=dict)
    user_mode: UserModeNetwork | None = None

    def to_wire(self) -> dict[str, Any]:
        # host_side: PID 1 hands its namespaces over and waits until the host's side (the
        # veths, or pasta) is ready before anything of the image runs.
        return {"namespace": self.namespace,
                "host_side": bool(self.networks) or self.user_mode is not None,
                "interfaces": [{"name": f"eth{i}", "network": n.to_dict()}
                               for i, n in enumerate(self.networks)]}


def plan_network(network: Sequence[str] | None,
                 network_args: Sequence[str | PortMap]) -> NetworkPlan:
    """The plan for ``network`` (None: the host's; ``("none",)``: only ``lo``).

    Raises:
        InvalidArgument: an unknown network, a malformed definition or argument.
        Unsupported: a definition instancelib cannot carry out, port maps on a
            network whose definition has no portmap plugin, or user-mode networking
            (``"pasta"``, an ordinary user's named network) where pasta cannot serve.
    """
    if network is None:
        return NetworkPlan(namespace=False)
    if tuple(network) == ("none",):
        return NetworkPlan(namespace=True)
    if PASTA in network or not has_host_root():
        return _user_mode(list(network), network_args)
    networks = tuple(load_network(name) for name in network)
    args = parse_network_args(network_args, [n.name for n in networks])
    for joined in networks:
        asked = args.get(joined.name)
        if asked is not None and asked.port_maps and not joined.port_maps:
            raise Unsupported(f"network {joined.name!r} ({joined.source}) has no portmap "
                              "plugin with the portMappings capability: it maps no ports")
    return NetworkPlan(namespace=True, networks=networks, args=args)


def _user_mode(names: list[str], network_args: Sequence[str | PortMap]) -> NetworkPlan:
    """The plan of a pasta network: ``"pasta"``, or an ordinary user's named network."""
    if len(names) != 1:
        raise Unsupported(f"networks {', '.join(names)}: a user-mode network (pasta) is the "
                          "instance's only one")
    name = names[0]
    named = load_network(name) if name != PASTA else None  # it must exist
    if named is not None:
        log.info("network %r: an ordinary user's instance gets a user-mode network (pasta) "
                 "in its place", name)
    args = parse_network_args(network_args, [name]).get(name) or NetworkArgs()
    if named is not None and args.port_maps and not named.port_maps:
        raise Unsupported(f"network {name!r} ({named.source}) has no portmap plugin with the "
                          "portMappings capability: it maps no ports")
    if args.ip is not None:
        raise Unsupported(f"network {name!r}: IP={args.ip}: a user-mode network (pasta) gives "
                          "the instance the host's address, it cannot take another")
    pasta.check_usable(name)
    return NetworkPlan(namespace=True, user_mode=UserModeNetwork(name=name,
                                                                 port_maps=args.port_maps))


def hosts_file(hostname: str) -> str:
    """``/etc/hosts`` of an instance with a network of its own: localhost, and its name."""
    return ("127.0.0.1\tlocalhost\n"
            "::1\tlocalhost ip6-localhost ip6-loopback\n"
            f"127.0.1.1\t{hostname}\n")


def resolv_conf(servers: Sequence[str]) -> str:
    """A ``resolv.conf`` naming only ``servers`` (as Apptainer's ``--dns`` writes it)."""
    return "".join(f"nameserver {server}\n" for server in servers)
