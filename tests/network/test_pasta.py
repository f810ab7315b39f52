"""User-mode networks through pasta: ``network="pasta"`` (anyone), an ordinary user's named
networks.

Root's tests run pasta for real, from a network namespace that stands for
the host (``hostns``): pasta copies that namespace's address and route into
the instance and carries its traffic out through that namespace's sockets.
An ordinary user's pasta needs ``/dev/net/tun`` to be usable in a user
namespace (mode 0666); where the machine's device is root's alone, the user
is told so before anything starts, and that is what the user's test checks.
"""

from __future__ import annotations

import os
import stat
import textwrap

import pytest

from instancelib import InvalidArgument, Unsupported
from instancelib.linux.userns import has_host_root
from instancelib.network import pasta
from tests.network.hostns import END_WORLD, HTTPD, JOIN_WORLD, in_own_network

ROOT_ONLY = pytest.mark.skipif(not has_host_root(), reason="needs root: the tests of root's "
                               "pasta run it in a network namespace they make")
TUN_USABLE = os.access(pasta.TUN, os.R_OK | os.W_OK)


def _pasta_processes(forwarder_pid: int) -> list[int]:
    with open(f"/proc/{forwarder_pid}/task/{forwarder_pid}/children") as children:
        return [int(pid) for pid in children.read().split()]


@ROOT_ONLY
def test_pasta_gives_the_host_address_a_way_out_and_port_maps(make_image, tmp_path):
    out = in_own_network(tmp_path, make_image(startscript=HTTPD).path, JOIN_WORLD + """
try:
    web = start("web", network="pasta", network_args="portmap=8090:80/tcp")
    out["inside"] = web.exec(["ip", "-4", "-o", "addr", "show", "eth0"]).stdout
    out["route"] = web.exec(["ip", "route"]).stdout
    out["way_out"] = web.exec(["timeout", "5", "wget", "-q", "-O-",
                               "http://198.51.100.7:7000/"]).stdout.strip()
    out["loopback"] = fetch_until("127.0.0.1", 8090)
    out["outer"] = fetch_until("198.51.100.2", 8090)
    out["record"] = web.record.interfaces
    forwarder = web.record.interfaces[0]["forwarder"]
    with open(f"/proc/{forwarder[0]}/task/{forwarder[0]}/children") as children:
        helpers = [int(p) for p in children.read().split()]
    out["helpers"] = [open(f"/proc/{p}/comm").read().strip() for p in helpers]
    try:
        start("clash", network="pasta", network_args="portmap=8090:80/tcp")
    except NameConflict as err:
        out["in_use"] = str(err)
    out["left"] = [r.name for r in registry.records()]
    web.stop()
    from instancelib.linux import procfs
    out["after"] = [procfs.is_alive(forwarder[0], forwarder[1]),   # (a zombie counts as gone)
                    *(os.path.exists(f"/proc/{p}") for p in helpers)]
    again = socket.create_server(("0.0.0.0", 8090))   # the host port is free again
    again.close()
finally:
""" + textwrap.indent(END_WORLD, "    "))
    assert "eth0" in out["inside"] and "198.51.100.2/24" in out["inside"]  # pasta's default
    assert "default via 198.51.100.1 dev eth0" in out["route"]
    assert out["way_out"] == "198.51.100.2"         # out through the host's own sockets
    assert out["loopback"] == "hi-web\n" and out["outer"] == "hi-web\n"
    assert [(i["network"], i["kind"], i["port_maps"]) for i in out["record"]] == [
        ("pasta", "pasta", ["8090:80/tcp"])]
    assert out["helpers"] and out["helpers"][0].startswith("pass")   # passt.avx2 / pasta
    assert "host port 8090/tcp is in use" in out["in_use"] and out["left"] == ["web"]
    assert out["after"] == [False] * len(out["after"])


@ROOT_ONLY
def test_a_pasta_instance_killed_from_outside_takes_pasta_with_it(make_image, tmp_path):
    out = in_own_network(tmp_path, make_image().path, JOIN_WORLD + """
try:
    victim = start("victim", network="pasta", network_args="portmap=8091:80/tcp")
    forwarder = victim.record.interfaces[0]["forwarder"]
    with open(f"/proc/{forwarder[0]}/task/{forwarder[0]}/children") as children:
        helpers = [int(p) for p in children.read().split()]
    os.kill(victim.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while (registry.list() or any(os.path.exists(f"/proc/{p}") for p in helpers)) \\
            and time.monotonic() < deadline:   # the forwarder ends pasta as PID 1 ends
        time.sleep(0.02)
    out["pruned"] = registry.list() == []
    from instancelib.linux import procfs
    out["helpers_left"] = [p for p in helpers if os.path.exists(f"/proc/{p}")]
    out["forwarder_left"] = procfs.is_alive(forwarder[0], forwarder[1])
finally:
""" + textwrap.indent(END_WORLD, "    "))
    assert out["pruned"] and out["helpers_left"] == [] and not out["forwarder_left"]


@ROOT_ONLY
def test_pasta_refuses_what_it_cannot_do_before_anything_starts(image, start, registry):
    with pytest.raises(Unsupported, match="gives the instance the host's address"):
        start(image, network="pasta", network_args="IP=10.0.0.5")
    with pytest.raises(Unsupported, match="the instance's only one"):
        start(image, network=["pasta", "bridge"])
    with pytest.raises(InvalidArgument, match="does not join"):
        start(image, network="pasta", network_args="bridge:portmap=8092:80/tcp")
    assert registry.list() == []


def test_pasta_missing_is_unsupported_naming_the_package(image, start, registry, monkeypatch):
    monkeypatch.setattr(pasta, "find_pasta", lambda: None)
    with pytest.raises(Unsupported, match="apt-get install passt"):
        start(image, network="pasta")
    assert registry.list() == []


@pytest.mark.skipif(has_host_root(), reason="an ordinary user's case: the suite's pass as "
                    "ilib-a runs it (root makes bridges)")
def test_an_ordinary_users_bridge_is_a_user_mode_network(make_image, start, registry):
    image = make_image(startscript=HTTPD)
    if os.environ.get("INSTANCELIB_TEST_TUN") == "usable":   # .ci/user-network-vm says so
        assert TUN_USABLE, f"{pasta.TUN} should be usable here"
    if not TUN_USABLE:
        mode = stat.S_IMODE(os.stat(pasta.TUN).st_mode)
        with pytest.raises(Unsupported, match=rf"{pasta.TUN}, which is mode {mode:04o}"):
            start(image, network="bridge", network_args="portmap=18093:80/tcp")
        assert registry.list() == []
        return
    import socket  # noqa: PLC0415
    import time  # noqa: PLC0415

    from instancelib.linux import procfs  # noqa: PLC0415

    web = start(image, network="bridge", network_args="portmap=18093:80/tcp", args=["u"],
                writable_tmpfs=True)
    assert web.record.interfaces[0]["kind"] == "pasta"
    body = ""
    deadline = time.monotonic() + 20
    while not body and time.monotonic() < deadline:   # pasta accepts before httpd listens
        try:
            with socket.create_connection(("127.0.0.1", 18093), timeout=5) as conn:
                conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
                body = conn.makefile("rb").read().decode().split("\r\n\r\n", 1)[-1]
        except OSError:
            pass
        time.sleep(0.05)
    assert body == "hi-u\n"
    forwarder = web.record.interfaces[0]["forwarder"]
    web.stop()
    assert not procfs.is_alive(forwarder[0], forwarder[1])   # and pasta with it
