"""Named networks from CNI-format files (``network/config.py``)."""

from __future__ import annotations

import ipaddress
import json

import pytest

from instancelib import InvalidArgument, Unsupported
from instancelib.network.config import BUILT_IN, load_network


def test_the_built_in_networks_equal_apptainers(tmp_path):
    bridge = load_network("bridge", tmp_path)
    assert (bridge.kind, bridge.bridge, str(bridge.subnet), str(bridge.gateway)) == (
        "bridge", "sbr0", "10.22.0.0/16", "10.22.0.1")
    assert bridge.routes == (ipaddress.IPv4Network("0.0.0.0/0"),)
    assert bridge.ip_masq and bridge.port_maps and bridge.source == "built-in"
    ptp = load_network("ptp", tmp_path)
    assert (ptp.kind, ptp.bridge, str(ptp.subnet)) == ("ptp", None, "10.23.0.0/16")


def _write(directory, filename, document):  # type: ignore[no-untyped-def]
    (directory / filename).write_text(json.dumps(document))


def test_a_file_defines_a_network_and_overrides_a_built_in(tmp_path):
    lab = json.loads(json.dumps(BUILT_IN["bridge"]))
    lab["name"] = "lab"
    lab["plugins"][0]["bridge"] = "labbr0"
    lab["plugins"][0]["ipam"]["subnet"] = "192.168.77.0/24"
    lab["plugins"][0]["ipam"]["gateway"] = "192.168.77.254"
    _write(tmp_path, "50_lab.conflist", lab)
    mine = json.loads(json.dumps(BUILT_IN["bridge"]))
    mine["plugins"][0]["ipam"]["subnet"] = "10.99.0.0/16"
    _write(tmp_path, "00_bridge.conflist", mine)
    network = load_network("lab", tmp_path)
    assert (network.bridge, str(network.subnet), str(network.gateway)) == (
        "labbr0", "192.168.77.0/24", "192.168.77.254")
    assert network.source.endswith("50_lab.conflist")
    assert str(load_network("bridge", tmp_path).subnet) == "10.99.0.0/16"


def test_a_single_plugin_conf_file_is_a_network(tmp_path):
    _write(tmp_path, "10-one.conf", {"cniVersion": "0.4.0", "name": "one", "type": "ptp",
                                     "ipam": {"type": "host-local", "subnet": "10.50.0.0/24"}})
    network = load_network("one", tmp_path)
    assert network.kind == "ptp" and not network.port_maps and network.routes == ()


@pytest.mark.parametrize(("change", "error", "match"), [
    (lambda d: d["plugins"][0].update(type="macvlan"), Unsupported, "'macvlan' plugin"),
    (lambda d: d["plugins"][0].update(mtu=1400), Unsupported, "plugin bridge: mtu"),
    (lambda d: d["plugins"][0]["ipam"].update(type="dhcp"), Unsupported, "host-local"),
    (lambda d: d["plugins"][0]["ipam"].update(rangeStart="10.22.0.10"), Unsupported,
     "ipam: rangeStart"),
    (lambda d: d["plugins"].append({"type": "tuning"}), Unsupported, "'tuning' plugin"),
    (lambda d: d["plugins"][2]["capabilities"].update(ips=True), Unsupported,
     "capabilities: ips"),
    (lambda d: d.update(runtimeConfig={}), Unsupported, "runtimeConfig"),
    (lambda d: d["plugins"][0]["ipam"].update(subnet="fd00::/64"), Unsupported, "IPv6"),
    (lambda d: d["plugins"][0]["ipam"].update(subnet="10.22.0.7/16"), InvalidArgument,
     "subnet"),
    (lambda d: d["plugins"][0]["ipam"].update(gateway="10.99.0.1"), InvalidArgument,
     "outside"),
    (lambda d: d["plugins"][0].update(bridge="a-name-far-too-long"), InvalidArgument,
     "interface name"),
    (lambda d: d["plugins"][0].update(isGateway=False), Unsupported, "isGateway"),
])
def test_what_instancelib_does_not_carry_out_is_refused_by_name(tmp_path, change, error, match):
    document = json.loads(json.dumps(BUILT_IN["bridge"]))
    document["name"] = "odd"
    change(document)
    _write(tmp_path, "odd.conflist", document)
    with pytest.raises(error, match=match):
        load_network("odd", tmp_path)


def test_an_unknown_network_names_the_known_ones(tmp_path):
    with pytest.raises(InvalidArgument, match=r"no network named 'nope' \(known: bridge, ptp"):
        load_network("nope", tmp_path)
    with pytest.raises(InvalidArgument, match="not a network name"):
        load_network("../etc", tmp_path)


def test_a_broken_file_is_an_error_naming_it(tmp_path):
    (tmp_path / "bad.conflist").write_text("{not json")
    with pytest.raises(InvalidArgument, match=r"bad\.conflist"):
        load_network("bridge", tmp_path)
