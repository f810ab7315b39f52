"""``network_args``: port maps and requested addresses, in Apptainer's grammar or typed.

An argument is ``[NETWORK:]KEY=VALUE;KEY=VALUE`` (as ``--network-args``
takes it): without ``NETWORK:`` it is for the first network of the start.
The keys carried out are ``portmap=HOST[:CONTAINER]/tcp|udp`` (the container
port defaults to the host port) and ``IP=a.b.c.d`` (the address to take).
``PortMap`` objects may stand in the list too; they apply to the first network.

``split_flag_values`` splits one ``--network-args`` (or ``--network``,
``--dns``) value as Apptainer's flag library does: a CSV record, so commas
separate values and surrounding double quotes are removed (what
singularity-compose passes, literal quotes included).
"""

from __future__ import annotations

import csv
import ipaddress
from collections.abc import Sequence

import attrs

from instancelib.errors import InvalidArgument

__all__ = ["NetworkArgs", "PortMap", "parse_network_args", "split_flag_values"]

_PROTOCOLS = ("tcp", "udp")
_KEYS = ("IP", "portmap")


def _port(_instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise InvalidArgument(f"{attribute.name}: a port is 1..65535 (got {value!r})")


def _protocol(_instance: object, _attribute: attrs.Attribute[str], value: str) -> None:
    if value not in _PROTOCOLS:
        raise InvalidArgument(f"protocol must be tcp or udp (got {value!r})")


def _host_ip(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return str(ipaddress.IPv4Address(str(value)))
    except ValueError:
        raise InvalidArgument(f"host_ip must be an IPv4 address (got {value!r})") from None


@attrs.frozen(kw_only=True)
class PortMap:
    """Connections to ``host`` (on the host's addresses, or only ``host_ip``) reach ``container``.

    ``PortMap(host=8080, container=80)`` is Apptainer's ``portmap=8080:80/tcp``.
    """

    host: int = attrs.field(validator=_port)
    container: int = attrs.field(validator=_port)
    protocol: str = attrs.field(default="tcp", validator=_protocol)
    host_ip: str | None = attrs.field(default=None, converter=_host_ip)

    def __str__(self) -> str:
        return f"{self.host}:{self.container}/{self.protocol}"


@attrs.frozen
class NetworkArgs:
    """What the arguments ask of one network: port maps and a requested address."""

    port_maps: tuple[PortMap, ...] = ()
    ip: ipaddress.IPv4Address | None = None


def split_flag_values(value: str) -> list[str]:
    """One flag value as a CSV record: ``a,b`` -> [a, b]; ``"a;b"`` -> [a;b]."""
    try:
        rows = list(csv.reader([value], skipinitialspace=False, strict=True))
    except csv.Error as err:
        raise InvalidArgument(f"cannot parse {value!r}: {err}") from None
    return [field for field in (rows[0] if rows else []) if field != ""]


def _parse_port_map(value: str) -> PortMap:
    ports, slash, protocol = value.partition("/")
    if not slash:
        raise InvalidArgument(f"portmap={value}: expected portmap=HOST[:CONTAINER]/tcp|udp")
    if protocol not in _PROTOCOLS:
        raise InvalidArgument(f"portmap={value}: only tcp and udp can be mapped")
    parts = ports.split(":")
    if len(parts) not in (1, 2) or not all(p.isdigit() for p in parts):
        raise InvalidArgument(f"portmap={value}: expected portmap=HOST[:CONTAINER]/tcp|udp")
    host = int(parts[0])
    return PortMap(host=host, container=int(parts[-1]), protocol=protocol)


def parse_network_args(args: Sequence[str | PortMap] | str,
                       networks: Sequence[str]) -> dict[str, NetworkArgs]:
    """The arguments for each of ``networks`` (which are in the start's order).

    Raises:
        InvalidArgument: a malformed argument, an unknown key, a network the
            start does not join, two maps of one host port, or arguments
            without a network.
    """
    if isinstance(args, str):
        args = [args]
    found: dict[str, tuple[list[PortMap], list[ipaddress.IPv4Address]]] = {
        name: ([], []) for name in networks}
    for arg in args:
        if not networks:
            raise InvalidArgument("network_args need a network (network=...)")
        if isinstance(arg, PortMap):
            found[networks[0]][0].append(arg)
            continue
        if not isinstance(arg, str) or not arg.strip():
            raise InvalidArgument(f"a network argument is a string or a PortMap (got {arg!r})")
        colon, equals = arg.find(":"), arg.find("=")
        if colon != -1 and (equals == -1 or colon < equals):
            network, _, pairs = arg.partition(":")
        else:
            network, pairs = networks[0], arg
        if network not in found:
            raise InvalidArgument(f"network_args name the network {network!r}, which the "
                                  f"instance does not join (networks: {', '.join(networks)})")
        for pair in pairs.split(";"):
            key, sep, value = pair.partition("=")
            if not sep or not key or "=" in value:
                raise InvalidArgument(f"invalid network argument {pair!r}: expected KEY=VALUE")
            if key == "portmap":
                found[network][0].append(_parse_port_map(value))
            elif key == "IP":
                try:
                    found[network][1].append(ipaddress.IPv4Address(value))
                except ValueError:
                    raise InvalidArgument(f"IP={value}: not an IPv4 address") from None
            else:
                raise InvalidArgument(f"unsupported network argument {key!r} "
                                      f"(supported: {', '.join(_KEYS)})")
    result = {}
    seen: set[tuple[int, str]] = set()  # one host port is one map, whatever the network
    for name, (port_maps, ips) in found.items():
        if len(ips) > 1:
            raise InvalidArgument(f"network {name!r}: more than one IP= asked for")
        for port_map in port_maps:
            if (port_map.host, port_map.protocol) in seen:
                raise InvalidArgument(f"host port {port_map.host}/{port_map.protocol} is "
                                      "mapped twice")
            seen.add((port_map.host, port_map.protocol))
        result[name] = NetworkArgs(tuple(port_maps), ips[0] if ips else None)
    return result
