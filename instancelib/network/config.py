"""Named networks, read from CNI-format files the way Apptainer administrators write them.

A network is a ``.conflist`` (or a single-plugin ``.conf``/``.json``) in the
configuration directory: ``$INSTANCELIB_NETWORK_DIR``, else
``/etc/instancelib/network``.  Files are read in name order; the first that
defines a name wins.  Without a file of that name the built-in ``bridge`` and
``ptp`` apply, equal to the ones Apptainer ships (``00_bridge.conflist``,
``10_ptp.conflist``): bridge ``sbr0`` as gateway of 10.22.0.0/16, and
point-to-point links in 10.23.0.0/16, both with IP masquerade, a default
route and port maps.

The netlink work is instancelib's own, so only what it carries out is
accepted: the first plugin ``bridge`` (``bridge``, ``isGateway``,
``ipMasq``) or ``ptp`` (``ipMasq``) with ``host-local`` IPAM (``subnet``,
``gateway``, ``routes``); then ``portmap`` (the ``portMappings``
capability), ``firewall`` and ``loopback``.  Any other plugin or field is
refused with ``Unsupported`` naming it, never ignored.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from pathlib import Path
from typing import Any

import attrs

from instancelib.errors import InvalidArgument, Unsupported

__all__ = ["BUILT_IN", "Network", "config_dir", "load_network"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
_SUFFIXES = (".conflist", ".conf", ".json")
_TOP_FIELDS = {"cniVersion", "name", "plugins", "disableCheck"}
_MAIN_FIELDS = {
    "bridge": {"type", "bridge", "isGateway", "ipMasq", "ipam"},
    "ptp": {"type", "ipMasq", "ipam"},
}
_IPAM_FIELDS = {"type", "subnet", "gateway", "routes"}
_EXTRA_FIELDS = {
    "portmap": {"type", "capabilities", "snat"},
    "firewall": {"type"},
    "loopback": {"type"},
}


@attrs.frozen(kw_only=True)
class Network:
    """A named network: how an instance's interface on it is made.

    Attributes:
        name: the network's name (``network="bridge"``).
        kind: ``"bridge"`` (a veth whose host end joins a bridge) or
            ``"ptp"`` (a veth pair routed on the host).
        bridge: the bridge's name (``kind="bridge"``).
        subnet: the range addresses are allocated from.
        gateway: the host side's address (the instances' default route).
        routes: routes the instance gets through ``gateway``.
        ip_masq: masquerade the instances' traffic leaving the subnet.
        port_maps: whether ``portmap=`` arguments are allowed.
        source: the file it came from, or ``"built-in"``.
    """

    name: str
    kind: str
    bridge: str | None
    subnet: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address
    routes: tuple[ipaddress.IPv4Network, ...]
    ip_masq: bool
    port_maps: bool
    source: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for records and plans."""
        return {"name": self.name, "kind": self.kind, "bridge": self.bridge,
                "subnet": str(self.subnet), "gateway": str(self.gateway),
                "routes": [str(r) for r in self.routes], "ip_masq": self.ip_masq,
                "port_maps": self.port_maps, "source": self.source}


def _built_in(name: str, kind: str, subnet: str) -> dict[str, Any]:
    main: dict[str, Any] = {"type": kind, "ipMasq": True,
                            "ipam": {"type": "host-local", "subnet": subnet,
                                     "routes": [{"dst": "0.0.0.0/0"}]}}
    if kind == "bridge":
        main.update(bridge="sbr0", isGateway=True)
    return {"cniVersion": "1.0.0", "name": name,
            "plugins": [main, {"type": "firewall"},
                        {"type": "portmap", "capabilities": {"portMappings": True},
                         "snat": True}]}


BUILT_IN: dict[str, dict[str, Any]] = {
    "bridge": _built_in("bridge", "bridge", "10.22.0.0/16"),
    "ptp": _built_in("ptp", "ptp", "10.23.0.0/16"),
}


def config_dir() -> Path:
    """The directory of named networks (``$INSTANCELIB_NETWORK_DIR``, else the default)."""
    configured = os.environ.get("INSTANCELIB_NETWORK_DIR")
    return Path(configured) if configured else Path("/etc/instancelib/network")


def load_network(name: str, directory: Path | None = None) -> Network:
    """The network ``name``: from the configuration directory, else a built-in one.

    Raises:
        InvalidArgument: a malformed name, file or value; no such network.
        Unsupported: a plugin or field instancelib does not carry out.
    """
    if not isinstance(name, str) or not _NAME.match(name) or name == "none":
        raise InvalidArgument(f"not a network name: {name!r}")
    where = directory if directory is not None else config_dir()
    for path, document in _documents(where):
        if document.get("name") == name:
            return _parse(document, str(path))
    if name in BUILT_IN:
        return _parse(BUILT_IN[name], "built-in")
    known = sorted({str(d.get("name")) for _, d in _documents(where)} | set(BUILT_IN))
    raise InvalidArgument(f"no network named {name!r} (known: {', '.join(known)}; "
                          f"definitions are read from {where})")


def _documents(directory: Path) -> list[tuple[Path, dict[str, Any]]]:
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    except OSError as err:
        raise InvalidArgument(f"cannot read the network directory {directory}: "
                              f"{err.strerror}") from err
    found = []
    for entry in names:
        if not entry.endswith(_SUFFIXES):
            continue
        path = directory / entry
        try:
            document = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise InvalidArgument(f"cannot read the network definition {path}: {err}") from err
        if not isinstance(document, dict):
            raise InvalidArgument(f"{path}: a network definition is a JSON object")
        if not entry.endswith(".conflist"):  # a single plugin: the list of one
            plugin = {k: v for k, v in document.items() if k not in ("cniVersion", "name")}
            document = {"cniVersion": document.get("cniVersion"), "name": document.get("name"),
                        "plugins": [plugin]}
        found.append((path, document))
    return found


def _unknown(fields: dict[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(fields) - allowed)
    if extra:
        raise Unsupported(f"{where}: {', '.join(extra)} not supported by instancelib "
                          f"(supported: {', '.join(sorted(allowed))})")


def _parse(document: dict[str, Any], source: str) -> Network:
    name = str(document.get("name"))
    _unknown(document, _TOP_FIELDS, source)
    plugins = document.get("plugins")
    if not isinstance(plugins, list) or not plugins or not all(isinstance(p, dict)
                                                              for p in plugins):
        raise InvalidArgument(f"{source}: network {name!r} needs a list of plugins")
    main, extras = plugins[0], plugins[1:]
    kind = main.get("type")
    if kind not in _MAIN_FIELDS:
        raise Unsupported(f"{source}: the {kind!r} plugin is not supported by instancelib "
                          "(supported first plugins: bridge, ptp)")
    _unknown(main, _MAIN_FIELDS[kind], f"{source}: plugin {kind}")
    port_maps = False
    for extra in extras:
        plugin = extra.get("type")
        if plugin not in _EXTRA_FIELDS:
            raise Unsupported(f"{source}: the {plugin!r} plugin is not supported by "
                              f"instancelib (supported after {kind}: "
                              f"{', '.join(sorted(_EXTRA_FIELDS))})")
        _unknown(extra, _EXTRA_FIELDS[plugin], f"{source}: plugin {plugin}")
        if plugin == "portmap":
            capabilities = extra.get("capabilities") or {}
            if not isinstance(capabilities, dict):
                raise InvalidArgument(f"{source}: portmap capabilities must be an object")
            _unknown(capabilities, {"portMappings"}, f"{source}: plugin portmap capabilities")
            port_maps = bool(capabilities.get("portMappings"))
    ipam = main.get("ipam")
    if not isinstance(ipam, dict) or ipam.get("type") != "host-local":
        raise Unsupported(f"{source}: plugin {kind}: only host-local IPAM is supported "
                          f"(got {ipam.get('type') if isinstance(ipam, dict) else ipam!r})")
    _unknown(ipam, _IPAM_FIELDS, f"{source}: plugin {kind} ipam")
    subnet = _subnet(ipam.get("subnet"), source)
    gateway = _address(ipam.get("gateway") or str(next(subnet.hosts())), f"{source}: gateway")
    if gateway not in subnet:
        raise InvalidArgument(f"{source}: the gateway {gateway} is outside {subnet}")
    routes = []
    for route in ipam.get("routes") or []:
        if not isinstance(route, dict):
            raise InvalidArgument(f"{source}: a route is an object with dst")
        _unknown(route, {"dst"}, f"{source}: plugin {kind} ipam route")
        routes.append(_subnet(route.get("dst"), source, strict=False))
    if kind == "bridge":
        bridge = main.get("bridge", "cni0")
        if not isinstance(bridge, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,15}", bridge):
            raise InvalidArgument(f"{source}: not an interface name: {bridge!r}")
        if main.get("isGateway") is False:
            raise Unsupported(f"{source}: plugin bridge: isGateway false (a bridge without the "
                              "host's address) is not supported by instancelib")
    else:
        bridge = None
    return Network(name=name, kind=kind, bridge=bridge, subnet=subnet, gateway=gateway,
                   routes=tuple(routes), ip_masq=bool(main.get("ipMasq", False)),
                   port_maps=port_maps, source=source)


def _subnet(value: Any, source: str, *, strict: bool = True) -> ipaddress.IPv4Network:
    try:
        network = ipaddress.ip_network(str(value), strict=strict)
    except ValueError as err:
        raise InvalidArgument(f"{source}: not an IPv4 subnet: {value!r}") from err
    if not isinstance(network, ipaddress.IPv4Network):
        raise Unsupported(f"{source}: IPv6 subnets are not supported by instancelib ({value})")
    if strict and network.num_addresses < 4:
        raise InvalidArgument(f"{source}: the subnet {network} is too small")
    return network


def _address(value: Any, where: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(str(value))
    except ValueError as err:
        raise InvalidArgument(f"{where}: not an IPv4 address: {value!r}") from err
