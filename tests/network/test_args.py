"""``network_args`` in Apptainer's grammar and typed (``network/args.py``)."""

from __future__ import annotations

import ipaddress

import pytest

from instancelib import InvalidArgument
from instancelib.network.args import NetworkArgs, PortMap, parse_network_args, split_flag_values


@pytest.mark.parametrize(("args", "networks", "expected"), [
    (["portmap=8080:80/tcp"], ["bridge"],
     {"bridge": NetworkArgs((PortMap(host=8080, container=80),))}),
    (["portmap=53/udp"], ["bridge"],
     {"bridge": NetworkArgs((PortMap(host=53, container=53, protocol="udp"),))}),
    (["IP=10.22.0.9;portmap=2222:22/tcp"], ["bridge"],
     {"bridge": NetworkArgs((PortMap(host=2222, container=22),),
                            ipaddress.IPv4Address("10.22.0.9"))}),
    (["ptp:IP=10.23.0.5", "portmap=8000:80/tcp"], ["bridge", "ptp"],
     {"bridge": NetworkArgs((PortMap(host=8000, container=80),)),
      "ptp": NetworkArgs((), ipaddress.IPv4Address("10.23.0.5"))}),
    ([PortMap(host=9000, container=90, host_ip="127.0.0.1")], ["bridge"],
     {"bridge": NetworkArgs((PortMap(host=9000, container=90, host_ip="127.0.0.1"),))}),
    ("portmap=1:2/tcp", ["bridge"], {"bridge": NetworkArgs((PortMap(host=1, container=2),))}),
    ([], ["bridge"], {"bridge": NetworkArgs()}),
])
def test_arguments_are_parsed_per_network(args, networks, expected):
    assert parse_network_args(args, networks) == expected


@pytest.mark.parametrize(("args", "networks", "match"), [
    (["portmap=8080:80"], ["bridge"], "HOST"),
    (["portmap=8080:80/sctp"], ["bridge"], "tcp and udp"),
    (["portmap=0:80/tcp"], ["bridge"], "1..65535"),
    (["portmap=8080:70000/tcp"], ["bridge"], "1..65535"),
    (["portmap=a:b/tcp"], ["bridge"], "HOST"),
    (["IP=10.22.0"], ["bridge"], "IPv4"),
    (["IP=10.22.0.2;IP=10.22.0.3"], ["bridge"], "more than one"),
    (["foo=bar"], ["bridge"], "unsupported network argument 'foo'"),
    (["justtext"], ["bridge"], "KEY=VALUE"),
    (["ptp:IP=10.23.0.2"], ["bridge"], "does not join"),
    (["portmap=80/tcp", "portmap=80:81/tcp"], ["bridge"], "mapped twice"),
    (["portmap=80/tcp"], [], "need a network"),
    ([3], ["bridge"], "string or a PortMap"),
])
def test_bad_arguments_are_refused(args, networks, match):
    with pytest.raises(InvalidArgument, match=match):
        parse_network_args(args, networks)


@pytest.mark.parametrize(("value", "expected"), [
    ("portmap=8080:80/tcp", ["portmap=8080:80/tcp"]),
    ('"portmap=8080:80/tcp"', ["portmap=8080:80/tcp"]),      # singularity-compose's form
    ('"IP=10.22.0.5;portmap=80/tcp"', ["IP=10.22.0.5;portmap=80/tcp"]),
    ("portmap=80/tcp,portmap=53/udp", ["portmap=80/tcp", "portmap=53/udp"]),
    ('"a,b",c', ["a,b", "c"]),
    ("", []),
])
def test_flag_values_are_split_as_csv(value, expected):
    assert split_flag_values(value) == expected


def test_port_map_values_are_checked():
    with pytest.raises(InvalidArgument, match="host_ip"):
        PortMap(host=1, container=1, host_ip="localhost")
    assert str(PortMap(host=8080, container=80)) == "8080:80/tcp"
