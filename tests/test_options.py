"""``StartOptions`` (``options.py``): each start option converted and checked once."""

from __future__ import annotations

import math

import pytest

from instancelib import Bind, InvalidArgument, Limits, PortMap, TcpProbe
from instancelib.options import StartOptions
from instancelib.readiness import CommandProbe


@pytest.mark.parametrize(("given", "field", "expected"), [
    ({"args": ["a", "b"]}, "args", ("a", "b")),
    ({"binds": "/a:/b:ro,/c"}, "binds", (Bind(source="/a", destination="/b", read_only=True),
                                         Bind(source="/c", destination="/c"))),
    ({"binds": [Bind(source="/x", destination="/y")]}, "binds",
     (Bind(source="/x", destination="/y"),)),
    ({"env": {"A": "1"}}, "env", {"A": "1"}),
    ({"env": None}, "env", {}),
    ({"run": 1}, "run", True),
    ({"hostname": "a-b.c"}, "hostname", "a-b.c"),
    ({"ready": ("tcp", 80)}, "ready", TcpProbe(80)),
    ({"ready": ["true"]}, "ready", CommandProbe(["true"])),
    ({"timeout": 3}, "timeout", 3.0),
    ({"limits": Limits(pids_limit=4)}, "limits", Limits(pids_limit=4)),
    ({}, "limits", None),
])
def test_values_are_converted(given, field, expected):
    assert getattr(StartOptions(**given), field) == expected


@pytest.mark.parametrize(("given", "match"), [
    ({"args": "not a list"}, "list of strings"),
    ({"args": ["nul\0"]}, "NUL"),
    ({"binds": "/a:relative"}, "absolute"),
    ({"env": {"1BAD": "x"}}, "variable name"),
    ({"env": {"A": "nul\0"}}, "NUL"),
    ({"hostname": "bad host"}, "hostname"),
    ({"hostname": "x" * 65}, "hostname"),
    ({"ready": 42}, "ready must be"),
    ({"timeout": 0}, "timeout"),
    ({"timeout": math.nan}, "timeout"),
    ({"timeout": "30"}, "timeout"),
    ({"limits": {"memory": "1G"}}, "Limits object"),
])
def test_bad_values_are_refused_at_construction(given, match):
    with pytest.raises(InvalidArgument, match=match):
        StartOptions(**given)


def test_the_record_keeps_what_instance_options_shows():
    options = StartOptions(args=["x"], run=True, binds=["/a:/b"], hostname="h", fakeroot=True,
                           limits=Limits(pids_limit=3), env={"SECRET": "not recorded"})
    assert options.to_record() == {
        "run": True, "args": ["x"], "writable_tmpfs": False, "contain": False, "hostname": "h",
        "binds": ["/a:/b:rw"], "fakeroot": True, "cleanenv": False,
        "env_digest": options.env_digest(), "limits": {"pids_limit": 3},
        "network": None, "network_args": [], "dns": [], "service": True,
        "end_with_caller": False, "cgroup_parent": "instancelib", "restart": "no",
        "health": None}


def test_network_options_are_recorded():
    options = StartOptions(network="bridge,ptp", dns="192.0.2.1",
                           network_args=["ptp:IP=10.23.0.9", PortMap(host=80, container=8080)])
    assert options.network == ("bridge", "ptp")
    recorded = options.to_record()
    assert recorded["network"] == ["bridge", "ptp"] and recorded["dns"] == ["192.0.2.1"]
    assert recorded["network_args"] == ["ptp:IP=10.23.0.9", "portmap=80:8080/tcp"]


def test_the_arguments_rebuild_the_same_options():
    options = StartOptions(args=["x"], binds=["/a"], env={"A": "1"}, ready=("tcp", 8080))
    assert StartOptions(**options.arguments()) == options
